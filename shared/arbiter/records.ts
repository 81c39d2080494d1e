// Where a guest's records live in the arbiter's key space, and how a record is written and read
// back. Two keys per guest, under `<keyPrefix>/guests/<guest id, URI-encoded>/`:
// - `epoch`: the last epoch granted and its holder; no lease, so it outlives every holder (a
//   primary that returns after its lease expired finds the epoch it must not run under);
// - `primary`: the same record, attached to the holder's lease; its presence means the holder's
//   lease is alive, its deletion (lease expired or revoked) opens the way for a standby.

import { CorruptDataError, invalidField } from '../errors.js';
import { GUEST_ID_CHARS_MAX } from '../ids.js';
import type { KvEntry } from './kv.js';
import { HOLDER_CHARS_MAX, type PrimaryRecord } from './types.js';

/** Largest record value read back; a record is about a hundred bytes. */
export const RECORD_BYTES_MAX = 2048;

export interface GuestKeys {
  /** The prefix of both keys (ends with '/'), for a range read or a watch. */
  prefix: string;
  epoch: string;
  primary: string;
}

export function guestKeys(keyPrefix: string, guestId: string): GuestKeys {
  const prefix = `${keyPrefix}/guests/${encodeURIComponent(guestId)}/`;
  return { prefix, epoch: `${prefix}epoch`, primary: `${prefix}primary` };
}

/** Refuses a guest id that names no guest (empty, or longer than any driver accepts). */
export function checkArbiterGuestId(guestId: string): void {
  if (typeof guestId !== 'string' || guestId === '') throw invalidField('guest_id', 'guest_id is required: the id of a guest');
  if (guestId.length > GUEST_ID_CHARS_MAX) {
    throw invalidField('guest_id', `guest_id of ${guestId.length} characters is no id of a guest: expected at most ${GUEST_ID_CHARS_MAX}`, { length: guestId.length });
  }
}

export function encodeRecord(record: PrimaryRecord): string {
  return JSON.stringify({ epoch: record.epoch, holder: record.holder, site: record.site, atUnixMs: record.atUnixMs });
}

/** A record read back from `key`; anything else there is DATA_LOSS (someone else wrote the key). */
export function decodeRecord(key: string, value: string): PrimaryRecord {
  const corrupt = (what: string) => new CorruptDataError(`the arbiter's key ${key} holds no primary record: ${what}`, { metadata: { key } });
  if (value.length > RECORD_BYTES_MAX) throw corrupt(`${value.length} bytes, more than ${RECORD_BYTES_MAX}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch (error) {
    throw corrupt((error as Error).message);
  }
  const r = parsed as Partial<PrimaryRecord> | null;
  if (r === null || typeof r !== 'object') throw corrupt('not a JSON object');
  if (!Number.isSafeInteger(r.epoch) || r.epoch! < 1) throw corrupt(`epoch ${String(r.epoch)} is not a positive integer`);
  if (typeof r.holder !== 'string' || r.holder === '' || r.holder.length > HOLDER_CHARS_MAX) throw corrupt('holder is not a non-empty string');
  if (typeof r.site !== 'string' || r.site.length > HOLDER_CHARS_MAX) throw corrupt('site is not a string');
  if (!Number.isSafeInteger(r.atUnixMs)) throw corrupt(`atUnixMs ${String(r.atUnixMs)} is not an integer`);
  return { epoch: r.epoch!, holder: r.holder, site: r.site, atUnixMs: r.atUnixMs! };
}

/** The guest's two keys as one range read found them. */
export interface GuestEntries {
  epoch: KvEntry | undefined;
  primary: KvEntry | undefined;
  revision: number;
}

export function pickEntries(keys: GuestKeys, entries: readonly KvEntry[], revision: number): GuestEntries {
  return {
    epoch: entries.find((e) => e.key === keys.epoch),
    primary: entries.find((e) => e.key === keys.primary),
    revision,
  };
}
