// The arbiter's logic over the narrow store interface (kv.ts): claims, the go-live
// compare-and-swap, checks and waits. EtcdArbiter and MemoryArbiter are this class over their
// store. The semantics and the timing argument are in index.ts.

import { type Clock, systemClock } from '../clock.js';
import { AbortedError, DeadlineExceededError, InvalidStateError, LimitExceededError, UnavailableError, invalidField } from '../errors.js';
import type { ArbiterKv, KvCompare, KvOp, LeaseGrant, RangeResult } from './kv.js';
import { checkArbiterGuestId, decodeRecord, encodeRecord, type GuestEntries, type GuestKeys, guestKeys, pickEntries } from './records.js';
import { HeldTerm, type TermTiming } from './term.js';
import {
  type Arbiter,
  type GoLiveOptions,
  type GuestView,
  HOLDER_CHARS_MAX,
  KEY_PREFIX_CHARS_MAX,
  LEASE_TTL_MS_MAX,
  LEASE_TTL_MS_MIN,
  type PrimaryRecord,
  type PrimaryTerm,
  TERMS_MAX,
  WAIT_MS_DEFAULT,
  WAIT_MS_MAX,
  WAITS_MAX,
  type WaitForVacancyOptions,
} from './types.js';
import { nextChange } from './wait.js';

export interface ArbiterOptions {
  /** This agent's identity in the records; unique among the agents sharing the key prefix. */
  holderId: string;
  /** A label for people: where this agent runs. Default: the holder id. */
  site?: string;
  /** The lease TTL to ask for, milliseconds (etcd grants whole seconds, at least its minimum). */
  leaseTtlMs: number;
  /** Default '/vmmigrate'. */
  keyPrefix?: string;
  /** How long before the lease could expire the holder fences itself. Default a quarter of the TTL. */
  fenceMarginMs?: number;
  /** Bound on one renewal of a lease. Default 1000 ms. */
  callTimeoutMs?: number;
  /** Attempts of a read, grant or revoke that could not reach the store. Default 3. */
  attemptsMax?: number;
  clock?: Clock;
}

export const KEY_PREFIX_DEFAULT = '/vmmigrate';
export const CALL_TIMEOUT_MS_DEFAULT = 1000;
export const ATTEMPTS_DEFAULT = 3;
const ATTEMPTS_MAX = 10;
/** First pause between attempts; doubled at each. */
const RETRY_BACKOFF_MS = 50;

function checkOptions(options: ArbiterOptions): void {
  const { holderId, leaseTtlMs } = options;
  if (typeof holderId !== 'string' || holderId === '' || holderId.length > HOLDER_CHARS_MAX) throw invalidField('holder_id', `the arbiter's holder id must have 1 to ${HOLDER_CHARS_MAX} characters`);
  if ((options.site ?? '').length > HOLDER_CHARS_MAX) throw invalidField('site', `the arbiter's site label must have at most ${HOLDER_CHARS_MAX} characters`);
  if (!Number.isInteger(leaseTtlMs) || leaseTtlMs < LEASE_TTL_MS_MIN || leaseTtlMs > LEASE_TTL_MS_MAX) throw invalidField('lease_ttl_ms', `leaseTtlMs ${leaseTtlMs}: expected an integer from ${LEASE_TTL_MS_MIN} to ${LEASE_TTL_MS_MAX}`);
  const prefix = options.keyPrefix ?? KEY_PREFIX_DEFAULT;
  if (!prefix.startsWith('/') || prefix.endsWith('/') || prefix.length > KEY_PREFIX_CHARS_MAX) throw invalidField('key_prefix', `keyPrefix '${prefix}': expected '/' then up to ${KEY_PREFIX_CHARS_MAX} characters, not ending in '/'`);
  const margin = options.fenceMarginMs;
  if (margin !== undefined && (!Number.isInteger(margin) || margin < 1 || margin * 2 > leaseTtlMs)) throw invalidField('fence_margin_ms', `fenceMarginMs ${margin}: expected an integer from 1 to half the lease TTL (${leaseTtlMs / 2})`);
  const attempts = options.attemptsMax ?? ATTEMPTS_DEFAULT;
  if (!Number.isInteger(attempts) || attempts < 1 || attempts > ATTEMPTS_MAX) throw invalidField('attempts_max', `attemptsMax ${attempts}: expected 1 to ${ATTEMPTS_MAX}`);
}

export class LeaseArbiter implements Arbiter {
  readonly holderId: string;
  readonly leaseTtlMs: number;
  private readonly site: string;
  private readonly keyPrefix: string;
  private readonly clock: Clock;
  private readonly timing: Omit<TermTiming, 'keepaliveIntervalMs' | 'fenceMarginMs'>;
  private readonly fenceMarginMs: number | undefined;
  private readonly attemptsMax: number;
  private readonly terms = new Map<string, HeldTerm>();
  /** Guests with a claim or go-live in flight in this arbiter. */
  private readonly taking = new Set<string>();
  private readonly waits = new Set<AbortController>();
  private closed = false;

  constructor(
    private readonly kv: ArbiterKv,
    options: ArbiterOptions,
  ) {
    checkOptions(options);
    this.holderId = options.holderId;
    this.site = options.site ?? options.holderId;
    this.leaseTtlMs = options.leaseTtlMs;
    this.keyPrefix = options.keyPrefix ?? KEY_PREFIX_DEFAULT;
    this.clock = options.clock ?? systemClock;
    this.fenceMarginMs = options.fenceMarginMs;
    this.attemptsMax = options.attemptsMax ?? ATTEMPTS_DEFAULT;
    const callTimeoutMs = options.callTimeoutMs ?? CALL_TIMEOUT_MS_DEFAULT;
    this.timing = { callTimeoutMs, retryMs: Math.max(10, Math.min(100, Math.floor(options.leaseTtlMs / 20))) };
  }

  async claim(guestId: string): Promise<PrimaryTerm> {
    checkArbiterGuestId(guestId);
    const held = this.terms.get(guestId);
    if (held?.state === 'held') return held;
    return this.exclusively(guestId, async () => {
      const keys = guestKeys(this.keyPrefix, guestId);
      const found = await this.readEntries(keys);
      const current = found.epoch ? decodeRecord(found.epoch.key, found.epoch.value) : null;
      if (current !== null && current.holder !== this.holderId) throw this.primaryHeld(guestId, current, found.primary !== undefined, 'a claim needs no record or one naming this agent; a standby goes live instead');
      const term = await this.takeTerm(guestId, keys, found, (current?.epoch ?? 0) + 1);
      // A lease this holder had before (a restart) no longer carries the key: let it go at once.
      if (found.primary && found.primary.leaseId !== '0') void this.revoke(found.primary.leaseId).catch(() => undefined);
      return term;
    });
  }

  async goLive(guestId: string, expectedEpoch: number, options: GoLiveOptions = {}): Promise<PrimaryTerm> {
    checkArbiterGuestId(guestId);
    if (!Number.isSafeInteger(expectedEpoch) || expectedEpoch < 0) throw invalidField('expected_epoch', `expected epoch ${expectedEpoch}: expected an integer, 0 or more`);
    const held = this.terms.get(guestId);
    if (held?.state === 'held' && held.epoch === expectedEpoch) return held;
    return this.exclusively(guestId, async () => {
      const keys = guestKeys(this.keyPrefix, guestId);
      const found = await this.readEntries(keys);
      const current = found.epoch ? decodeRecord(found.epoch.key, found.epoch.value) : null;
      if ((current?.epoch ?? 0) !== expectedEpoch) throw this.epochConflict(guestId, expectedEpoch, current, 'another agent went live first, or this view is stale');
      const primary = found.primary ? decodeRecord(found.primary.key, found.primary.value) : null;
      const aliveElsewhere = primary !== null && primary.holder !== this.holderId;
      if (aliveElsewhere && !options.force) throw this.primaryHeld(guestId, primary, true, 'wait for its lease to end (waitForVacancy), or force');
      const oldLeaseId = aliveElsewhere ? found.primary!.leaseId : null;
      const oldTtlMs = oldLeaseId !== null ? await this.retrying('read the old lease', () => this.kv.leaseGrantedTtl(oldLeaseId)).catch(() => 0) : 0;
      const term = await this.takeTerm(guestId, keys, found, expectedEpoch + 1);
      if (oldLeaseId !== null) await this.outwaitOldPrimary(term, oldLeaseId, Math.max(oldTtlMs, this.leaseTtlMs), options.signal);
      return term;
    });
  }

  async stillPrimary(guestId: string, epoch: number): Promise<boolean> {
    checkArbiterGuestId(guestId);
    const term = this.terms.get(guestId);
    if (term === undefined || term.epoch !== epoch || !term.isHeld()) return false;
    const found = await this.readEntries(guestKeys(this.keyPrefix, guestId));
    if (!found.epoch || !found.primary || found.primary.leaseId !== term.leaseId) return false;
    const record = decodeRecord(found.epoch.key, found.epoch.value);
    return record.epoch === epoch && record.holder === this.holderId && term.isHeld();
  }

  async read(guestId: string): Promise<GuestView> {
    checkArbiterGuestId(guestId);
    return this.view(await this.readEntries(guestKeys(this.keyPrefix, guestId)));
  }

  async waitForVacancy(guestId: string, options: WaitForVacancyOptions = {}): Promise<GuestView> {
    checkArbiterGuestId(guestId);
    const timeoutMs = options.timeoutMs ?? WAIT_MS_DEFAULT;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > WAIT_MS_MAX) throw invalidField('timeout_ms', `timeoutMs ${timeoutMs}: expected 1 to ${WAIT_MS_MAX}`);
    this.checkOpen();
    if (this.waits.size >= WAITS_MAX) throw new LimitExceededError(`${this.waits.size} waits for vacancy already run in this arbiter, the limit`, { metadata: { limit: WAITS_MAX } });
    const keys = guestKeys(this.keyPrefix, guestId);
    const control = new AbortController();
    const timer = this.clock.timeout(timeoutMs, () => control.abort(new DeadlineExceededError(`guest ${guestId}'s primary lease still alive after ${timeoutMs} ms of waiting`, { metadata: { guestId, timeoutMs } })));
    const onAbort = () => control.abort(new AbortedError(`the wait for guest ${guestId}'s primary lease to end was cancelled`, { metadata: { guestId } }));
    options.signal?.addEventListener('abort', onAbort, { once: true });
    if (options.signal?.aborted) onAbort();
    this.waits.add(control);
    try {
      for (;;) {
        if (control.signal.aborted) throw control.signal.reason;
        let found: GuestEntries;
        try {
          found = await this.readEntries(keys);
        } catch (error) {
          // Out of touch with the store: no vacancy can be known; keep trying until the bound.
          if (!(error instanceof UnavailableError) || this.closed) throw error;
          await this.clock.sleep(this.timing.retryMs, control.signal);
          continue;
        }
        if (!found.primary) return this.view(found);
        await nextChange(this.kv, this.clock, keys.prefix, found.revision + 1, { retryMs: this.timing.retryMs, recheckMs: this.leaseTtlMs }, control.signal);
      }
    } finally {
      timer.cancel();
      options.signal?.removeEventListener('abort', onAbort);
      this.waits.delete(control);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const control of this.waits) control.abort(new AbortedError('the arbiter closed'));
    await Promise.allSettled([...this.terms.values()].map((term) => term.release()));
    await this.kv.close();
  }

  /** Grants a lease and writes `epoch` for this holder if neither key moved since `found`. */
  private async takeTerm(guestId: string, keys: GuestKeys, found: GuestEntries, epoch: number): Promise<HeldTerm> {
    if (this.terms.size >= TERMS_MAX) throw new LimitExceededError(`this arbiter holds ${this.terms.size} terms, the limit`, { metadata: { limit: TERMS_MAX } });
    const record: PrimaryRecord = { epoch, holder: this.holderId, site: this.site, atUnixMs: Math.round(this.clock.epochMs()) };
    const grantSentAtMs = this.clock.now();
    const lease = await this.retrying('grant a lease', () => this.kv.leaseGrant(this.leaseTtlMs));
    const value = encodeRecord(record);
    const compares: KvCompare[] = [
      { key: keys.epoch, modRevision: found.epoch?.modRevision ?? 0 },
      { key: keys.primary, modRevision: found.primary?.modRevision ?? 0 },
    ];
    const ops: KvOp[] = [
      { kind: 'put', key: keys.epoch, value },
      { kind: 'put', key: keys.primary, value, leaseId: lease.id },
    ];
    const outcome = await this.kv.txn(compares, ops).catch((error: unknown) => this.learnOutcome(keys, lease, epoch, error));
    if (!outcome.succeeded) {
      void this.revoke(lease.id).catch(() => undefined);
      const now = await this.readEntries(keys).catch(() => null);
      const current = now?.epoch ? decodeRecord(now.epoch.key, now.epoch.value) : null;
      throw this.epochConflict(guestId, epoch - 1, current, 'the record changed between the read and the compare-and-swap');
    }
    return this.startTerm(guestId, keys, record, outcome.revision, lease, grantSentAtMs);
  }

  private startTerm(guestId: string, keys: GuestKeys, record: PrimaryRecord, revision: number, lease: LeaseGrant, grantSentAtMs: number): HeldTerm {
    const fenceMarginMs = this.fenceMarginMs ?? Math.floor(lease.ttlMs / 4);
    const term: HeldTerm = new HeldTerm({
      kv: this.kv,
      clock: this.clock,
      keys,
      guestId,
      record,
      revision,
      lease,
      grantSentAtMs,
      timing: { ...this.timing, fenceMarginMs, keepaliveIntervalMs: Math.max(1, Math.floor(lease.ttlMs / 4)) },
      revoke: (id) => this.revoke(id),
      removeRecords: (at) => this.removeRecords(keys, at),
      onEnd: (ended) => {
        if (this.terms.get(guestId) === ended) this.terms.delete(guestId);
      },
    });
    if (this.closed) {
      // The arbiter closed while the term was being won: let it go at once.
      void this.revoke(lease.id).catch(() => undefined);
      throw new AbortedError('the arbiter closed');
    }
    this.terms.set(guestId, term);
    term.start();
    return term;
  }

  /**
   * A transaction whose answer was lost may have been applied: read back. It was if the epoch key
   * holds this epoch for this holder and the primary key carries the new lease.
   */
  private async learnOutcome(keys: GuestKeys, lease: LeaseGrant, epoch: number, error: unknown): Promise<{ succeeded: boolean; revision: number }> {
    let found: GuestEntries;
    try {
      found = await this.readEntries(keys);
    } catch {
      void this.revoke(lease.id).catch(() => undefined);
      throw new UnavailableError(`the arbiter's compare-and-swap for epoch ${epoch} failed (${(error as Error).message}) and its outcome could not be read back: not primary`, { reason: 'ARBITER_UNAVAILABLE', cause: error });
    }
    const record = found.epoch ? decodeRecord(found.epoch.key, found.epoch.value) : null;
    if (record?.epoch === epoch && record.holder === this.holderId && found.primary?.leaseId === lease.id) return { succeeded: true, revision: found.epoch!.modRevision };
    void this.revoke(lease.id).catch(() => undefined);
    throw new UnavailableError(`the arbiter's compare-and-swap for epoch ${epoch} failed (${(error as Error).message}); read back, it was not applied: not primary`, { reason: 'ARBITER_UNAVAILABLE', cause: error });
  }

  /** The forced go-live's second half: revoke the old lease, then outwait the old primary's deadline. */
  private async outwaitOldPrimary(term: HeldTerm, oldLeaseId: string, waitMs: number, signal: AbortSignal | undefined): Promise<void> {
    try {
      await this.revoke(oldLeaseId);
    } catch (error) {
      await term.release().catch(() => undefined);
      throw new UnavailableError(`guest ${term.guestId}: epoch ${term.epoch} was won but the old primary's lease ${oldLeaseId} could not be revoked; not going live (${(error as Error).message})`, { reason: 'ARBITER_UNAVAILABLE', cause: error });
    }
    try {
      await this.clock.sleep(waitMs, signal);
    } catch (error) {
      await term.release().catch(() => undefined);
      throw new AbortedError(`guest ${term.guestId}: the forced go-live was cancelled while the old primary's lease ran out`, { cause: error, metadata: { guestId: term.guestId } });
    }
    if (term.state !== 'held') throw this.epochConflict(term.guestId, term.epoch - 1, null, `the term was ${term.state} while the old primary's lease ran out`);
  }

  private async removeRecords(keys: GuestKeys, revision: number): Promise<boolean> {
    const compares: KvCompare[] = [{ key: keys.epoch, modRevision: revision }];
    const ops: KvOp[] = [
      { kind: 'delete', key: keys.epoch },
      { kind: 'delete', key: keys.primary },
    ];
    try {
      return (await this.kv.txn(compares, ops)).succeeded;
    } catch (error) {
      const found = await this.readEntries(keys).catch(() => {
        throw error;
      });
      return found.epoch === undefined;
    }
  }

  private revoke(leaseId: string): Promise<void> {
    return this.retrying('revoke a lease', () => this.kv.leaseRevoke(leaseId));
  }

  private async readEntries(keys: GuestKeys): Promise<GuestEntries> {
    this.checkOpen();
    const result: RangeResult = await this.retrying('read', () => this.kv.range(keys.prefix));
    return pickEntries(keys, result.entries, result.revision);
  }

  private view(found: GuestEntries): GuestView {
    const record = found.epoch ? decodeRecord(found.epoch.key, found.epoch.value) : null;
    return { record, primaryAlive: found.primary !== undefined, revision: found.revision };
  }

  /** Runs `fn` up to attemptsMax times while it fails UNAVAILABLE, pausing 50 ms, 100 ms, ... between. */
  private async retrying<T>(what: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (error) {
        if (!(error instanceof UnavailableError) || attempt >= this.attemptsMax || this.closed) {
          if (error instanceof UnavailableError && attempt > 1) error.message = `${error.message} (${what}: ${attempt} attempts)`;
          throw error;
        }
        await this.clock.sleep(RETRY_BACKOFF_MS * 2 ** (attempt - 1));
      }
    }
  }

  private async exclusively<T>(guestId: string, fn: () => Promise<T>): Promise<T> {
    this.checkOpen();
    if (this.taking.has(guestId)) throw new AbortedError(`a claim or go-live for guest ${guestId} is already in flight in this agent`, { reason: 'ARBITER_EPOCH_CONFLICT', metadata: { guestId } });
    this.taking.add(guestId);
    try {
      return await fn();
    } finally {
      this.taking.delete(guestId);
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new AbortedError('the arbiter is closed');
  }

  private primaryHeld(guestId: string, record: PrimaryRecord, alive: boolean, advice: string): InvalidStateError {
    return new InvalidStateError(`guest ${guestId}'s primary is agent ${record.holder} at epoch ${record.epoch} (site ${record.site}, lease ${alive ? 'alive' : 'ended'}): ${advice}`, {
      reason: 'ARBITER_PRIMARY_HELD',
      metadata: { guestId, epoch: record.epoch, holder: record.holder },
    });
  }

  private epochConflict(guestId: string, expectedEpoch: number, current: PrimaryRecord | null, why: string): AbortedError {
    const now = current === null ? 'has no record' : `is at epoch ${current.epoch} (holder ${current.holder})`;
    return new AbortedError(`guest ${guestId} ${now}, not epoch ${expectedEpoch}: ${why}`, {
      reason: 'ARBITER_EPOCH_CONFLICT',
      metadata: { guestId, expectedEpoch, epoch: current?.epoch ?? 0, holder: current?.holder ?? '' },
    });
  }
}
