// The `sim` driver's log unit: one time unit of nondeterministic events, each with the exact
// instruction position of its delivery, in a compact binary encoding (one unit, not one protobuf
// message per event). Little-endian throughout.
//
//   offset  size  field
//   0       4     magic 'CRTU'
//   4       1     version (1)
//   5       1     flags (bit 0: final unit, sealed at suspend)
//   6       2     reserved, 0
//   8       4     sequence: the guest's unit number
//   12      4     event count
//   16      8     start position: instructions retired before the unit (float64, an integer)
//   24      4     instruction count of the unit's busy part
//   28      4     page-write count of the unit's own code
//   32      8     guest time covered, ns (float64, an integer)
//   40      ...   events, ascending by position:
//                   type u8, position u32 (within the unit, 0..instruction count), then
//                   TIMER:     nothing
//                   NET_RX:    length u16, payload
//                   DISK_READ: block u32, 4096 bytes of data
//                   CLOCK:     value ns float64
//                   RANDOM:    value u32 low, u32 high
//   end-8   8     xxh64 of every byte before it
//
// `decodeUnit` checks everything (magic, version, sizes, the checksum, event order and bounds)
// before it returns, so a unit it returns can be applied without failing half-way.

import { CorruptDataError, LimitExceededError } from '../../errors.js';
import { xxh64 } from '../../hash.js';
import { PAGE_BYTES, UNIT_MS_MAX } from '../types.js';

export const UNIT_MAGIC = 0x55545243; // 'CRTU' little-endian
export const UNIT_VERSION = 1;
export const UNIT_HEADER_BYTES = 40;
export const UNIT_TRAILER_BYTES = 8;
/** Largest unit the codec accepts (the protocol carries at most 16 MiB): a 100 ms unit of a 1 Gbit/s receiver fits. */
export const UNIT_BYTES_MAX = 16 * 1024 * 1024;
export const UNIT_EVENTS_MAX = 1_000_000;
/**
 * Most instructions one unit may hold per ms of its length. A guest runs as many as its host
 * executes (guest.ts measures it): 480 000 a ms on the 2-core machine the tests run on, so this
 * leaves a host 20 times faster its full speed. Past it, one unit would hold the replica's event
 * loop for seconds (2^32 instructions held it 9 s there).
 */
export const UNIT_INSTRUCTIONS_PER_MS_MAX = 10_000_000;
/** Most page writes one unit may hold per ms of its length: the highest rate a profile accepts (profiles.ts, 10^6 a second). */
export const UNIT_PAGE_WRITES_PER_MS_MAX = 1_000;
/** Smallest encoded event (a timer: type and position). */
const EVENT_BYTES_MIN = 5;
export const PACKET_BYTES_MAX = 65535;

export const enum EventType {
  Timer = 1,
  NetRx = 2,
  DiskRead = 3,
  Clock = 4,
  Random = 5,
}

export type AsyncEvent =
  | { type: EventType.Timer; position: number }
  | { type: EventType.NetRx; position: number; payload: Uint8Array }
  | { type: EventType.DiskRead; position: number; block: number; data: Uint8Array };

export type SyncEvent =
  | { type: EventType.Clock; position: number; valueNs: number }
  | { type: EventType.Random; position: number; low: number; high: number };

export type GuestEvent = AsyncEvent | SyncEvent;

export interface UnitHeader {
  sequence: number;
  final: boolean;
  startPosition: number;
  instructionCount: number;
  pageWriteCount: number;
  guestNs: number;
}

export interface DecodedUnit extends UnitHeader {
  /** Asynchronous events (delivered by the host), ascending by position. */
  asyncEvents: AsyncEvent[];
  /** Synchronous events (values the guest asked for), ascending by position. */
  syncEvents: SyncEvent[];
}

export function isAsync(event: GuestEvent): event is AsyncEvent {
  return event.type === EventType.Timer || event.type === EventType.NetRx || event.type === EventType.DiskRead;
}

function eventBytes(e: GuestEvent): number {
  switch (e.type) {
    case EventType.Timer:
      return 5;
    case EventType.NetRx:
      return 7 + e.payload.length;
    case EventType.DiskRead:
      return 9 + PAGE_BYTES;
    case EventType.Clock:
    case EventType.Random:
      return 13;
  }
}

/** Encodes a unit; `events` must be ascending by position (both kinds merged). */
export function encodeUnit(header: UnitHeader, events: readonly GuestEvent[]): Uint8Array {
  let size = UNIT_HEADER_BYTES + UNIT_TRAILER_BYTES;
  for (const e of events) size += eventBytes(e);
  if (size > UNIT_BYTES_MAX) throw new LimitExceededError(`unit ${header.sequence} would be ${size} bytes, over the limit of ${UNIT_BYTES_MAX}`);
  if (events.length > UNIT_EVENTS_MAX) throw new LimitExceededError(`unit ${header.sequence} has ${events.length} events, over the limit of ${UNIT_EVENTS_MAX}`);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setUint32(0, UNIT_MAGIC, true);
  view.setUint8(4, UNIT_VERSION);
  view.setUint8(5, header.final ? 1 : 0);
  view.setUint32(8, header.sequence, true);
  view.setUint32(12, events.length, true);
  view.setFloat64(16, header.startPosition, true);
  view.setUint32(24, header.instructionCount, true);
  view.setUint32(28, header.pageWriteCount, true);
  view.setFloat64(32, header.guestNs, true);
  let at = UNIT_HEADER_BYTES;
  for (const e of events) {
    view.setUint8(at, e.type);
    view.setUint32(at + 1, e.position, true);
    at += 5;
    switch (e.type) {
      case EventType.Timer:
        break;
      case EventType.NetRx:
        view.setUint16(at, e.payload.length, true);
        out.set(e.payload, at + 2);
        at += 2 + e.payload.length;
        break;
      case EventType.DiskRead:
        view.setUint32(at, e.block, true);
        out.set(e.data, at + 4);
        at += 4 + PAGE_BYTES;
        break;
      case EventType.Clock:
        view.setFloat64(at, e.valueNs, true);
        at += 8;
        break;
      case EventType.Random:
        view.setUint32(at, e.low, true);
        view.setUint32(at + 4, e.high, true);
        at += 8;
        break;
    }
  }
  view.setBigUint64(at, xxh64(out.subarray(0, at)), true);
  return out;
}

/** Reads a unit's header without checking the rest (for statistics on the source). */
export function peekUnitHeader(bytes: Uint8Array): UnitHeader {
  if (bytes.length < UNIT_HEADER_BYTES + UNIT_TRAILER_BYTES) {
    throw new CorruptDataError(`unit truncated: ${bytes.length} bytes, shorter than the ${UNIT_HEADER_BYTES + UNIT_TRAILER_BYTES}-byte minimum`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    sequence: view.getUint32(8, true),
    final: (view.getUint8(5) & 1) === 1,
    startPosition: view.getFloat64(16, true),
    instructionCount: view.getUint32(24, true),
    pageWriteCount: view.getUint32(28, true),
    guestNs: view.getFloat64(32, true),
  };
}

/**
 * Refuses (CorruptDataError) a header whose counts no unit of at most UNIT_MS_MAX ms can have:
 * each is replayed one by one, so a checksum that passes must not let 2^32 of them through.
 */
export function checkUnitBounds(header: UnitHeader, unitMs = UNIT_MS_MAX): void {
  const guestNsMax = unitMs * 1e6;
  if (!Number.isSafeInteger(header.startPosition) || header.startPosition < 0 || !Number.isSafeInteger(header.guestNs) || header.guestNs < 0 || header.guestNs > guestNsMax) {
    throw new CorruptDataError(`unit ${header.sequence}: invalid start position ${header.startPosition} or guest time ${header.guestNs} ns (at most ${guestNsMax} ns)`);
  }
  const instructionsMax = unitMs * UNIT_INSTRUCTIONS_PER_MS_MAX;
  const pageWritesMax = unitMs * UNIT_PAGE_WRITES_PER_MS_MAX;
  if (header.instructionCount > instructionsMax || header.pageWriteCount > pageWritesMax) {
    throw new CorruptDataError(
      `unit ${header.sequence}: ${header.instructionCount} instructions and ${header.pageWriteCount} page writes, at most ${instructionsMax} and ${pageWritesMax} in a unit of ${unitMs} ms`,
      { metadata: { instructionCount: header.instructionCount, pageWriteCount: header.pageWriteCount, unitMs } },
    );
  }
}

/** Checks a unit's size, magic, version and checksum; returns its header, a view of it and where its trailer starts. */
function checkUnitFrame(bytes: Uint8Array): { header: UnitHeader; view: DataView; bodyEnd: number } {
  if (bytes.length > UNIT_BYTES_MAX) throw new LimitExceededError(`unit of ${bytes.length} bytes is over the limit of ${UNIT_BYTES_MAX}`);
  const header = peekUnitHeader(bytes);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0, true);
  if (magic !== UNIT_MAGIC) throw new CorruptDataError(`not a log unit: magic 0x${magic.toString(16)}, expected 0x${UNIT_MAGIC.toString(16)}`);
  const version = view.getUint8(4);
  if (version !== UNIT_VERSION) throw new CorruptDataError(`log unit version ${version} is not supported (this build reads version ${UNIT_VERSION})`);
  const bodyEnd = bytes.length - UNIT_TRAILER_BYTES;
  const stored = view.getBigUint64(bodyEnd, true);
  const actual = xxh64(bytes.subarray(0, bodyEnd));
  if (stored !== actual) {
    throw new CorruptDataError(`unit ${header.sequence}: checksum mismatch (stored ${stored.toString(16)}, computed ${actual.toString(16)} over ${bodyEnd} bytes): corrupt or truncated`);
  }
  return { header, view, bodyEnd };
}

/** Decodes and fully validates a unit. Throws CorruptDataError, naming what is wrong. */
export function decodeUnit(bytes: Uint8Array): DecodedUnit {
  const { header, view, bodyEnd } = checkUnitFrame(bytes);
  checkUnitBounds(header);
  const eventCount = view.getUint32(12, true);
  // Bounded by the bytes that hold them, before any is read.
  const eventsMax = Math.min(UNIT_EVENTS_MAX, Math.floor((bodyEnd - UNIT_HEADER_BYTES) / EVENT_BYTES_MIN));
  if (eventCount > eventsMax) throw new CorruptDataError(`unit ${header.sequence}: ${eventCount} events announced, at most ${eventsMax} fit its ${bytes.length} bytes`);
  const asyncEvents: AsyncEvent[] = [];
  const syncEvents: SyncEvent[] = [];
  let at = UNIT_HEADER_BYTES;
  let lastPosition = 0;
  const need = (n: number, what: string) => {
    if (at + n > bodyEnd) throw new CorruptDataError(`unit ${header.sequence}: ${what} at byte ${at} runs past the end of the unit (${bodyEnd} bytes)`);
  };
  for (let i = 0; i < eventCount; i++) {
    need(5, `event ${i}`);
    const type = view.getUint8(at);
    const position = view.getUint32(at + 1, true);
    if (position < lastPosition || position > header.instructionCount) {
      throw new CorruptDataError(
        `unit ${header.sequence}: event ${i} at position ${position} is out of order or outside the unit (previous ${lastPosition}, unit has ${header.instructionCount} instructions)`,
      );
    }
    lastPosition = position;
    at += 5;
    switch (type) {
      case EventType.Timer:
        asyncEvents.push({ type, position });
        break;
      case EventType.NetRx: {
        need(2, `packet length of event ${i}`);
        const length = view.getUint16(at, true);
        need(2 + length, `packet payload of event ${i}`);
        asyncEvents.push({ type, position, payload: bytes.subarray(at + 2, at + 2 + length) });
        at += 2 + length;
        break;
      }
      case EventType.DiskRead:
        need(4 + PAGE_BYTES, `disk block of event ${i}`);
        asyncEvents.push({ type, position, block: view.getUint32(at, true), data: bytes.subarray(at + 4, at + 4 + PAGE_BYTES) });
        at += 4 + PAGE_BYTES;
        break;
      case EventType.Clock: {
        need(8, `clock value of event ${i}`);
        const valueNs = view.getFloat64(at, true);
        if (!Number.isSafeInteger(valueNs) || valueNs < 0) throw new CorruptDataError(`unit ${header.sequence}: event ${i} reads the clock as ${valueNs} ns`);
        syncEvents.push({ type, position, valueNs });
        at += 8;
        break;
      }
      case EventType.Random:
        need(8, `random value of event ${i}`);
        syncEvents.push({ type, position, low: view.getUint32(at, true), high: view.getUint32(at + 4, true) });
        at += 8;
        break;
      default:
        throw new CorruptDataError(`unit ${header.sequence}: event ${i} has unknown type ${type}`);
    }
  }
  if (at !== bodyEnd) throw new CorruptDataError(`unit ${header.sequence}: ${bodyEnd - at} bytes left over after ${eventCount} events`);
  return { ...header, asyncEvents, syncEvents };
}
