// The `sim` log unit codec on its own: every event type survives a round trip, and decodeUnit
// rejects malformed units with CorruptDataError, naming what is wrong.
import t, { type Test } from 'tap';
import { PAGE_BYTES, UNIT_MS_MAX } from '../shared/driver/types.js';
import { xxh64 } from '../shared/hash.js';
import { Random } from '../shared/random.js';
import {
  checkUnitBounds,
  decodeUnit,
  encodeUnit,
  EventType,
  type GuestEvent,
  isAsync,
  PACKET_BYTES_MAX,
  peekUnitHeader,
  UNIT_HEADER_BYTES,
  UNIT_INSTRUCTIONS_PER_MS_MAX,
  UNIT_MAGIC,
  UNIT_PAGE_WRITES_PER_MS_MAX,
  UNIT_TRAILER_BYTES,
  UNIT_VERSION,
  type UnitHeader,
} from '../shared/driver/sim/unit-codec.js';
import { CorruptDataError } from '../shared/errors.js';

const SEED = 31337;

function bytesOf(n: number, random: Random): Uint8Array {
  const out = new Uint8Array(n);
  random.fill(out);
  return out;
}

function header(over: Partial<UnitHeader> = {}): UnitHeader {
  return { sequence: 41, final: false, startPosition: 2 ** 40 + 12345, instructionCount: 100_000, pageWriteCount: 17, guestNs: 10_000_000, ...over };
}

/** One event of every type, ascending by position, some sharing a position. */
function everyEvent(random: Random): GuestEvent[] {
  return [
    { type: EventType.Timer, position: 0 },
    { type: EventType.NetRx, position: 10, payload: bytesOf(1448, random) },
    { type: EventType.NetRx, position: 10, payload: new Uint8Array(0) },
    { type: EventType.Clock, position: 10, valueNs: 1_234_567_890_123 },
    { type: EventType.DiskRead, position: 500, block: 0xfffffffe, data: bytesOf(PAGE_BYTES, random) },
    { type: EventType.Random, position: 777, low: 0xdeadbeef, high: 0x01234567 },
    { type: EventType.NetRx, position: 99_999, payload: bytesOf(PACKET_BYTES_MAX, random) },
    { type: EventType.Timer, position: 100_000 },
  ];
}

/** Recomputes the trailing checksum, so that a test reaches the check after it. */
function resealed(bytes: Uint8Array): Uint8Array {
  const end = bytes.length - UNIT_TRAILER_BYTES;
  new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).setBigUint64(end, xxh64(bytes.subarray(0, end)), true);
  return bytes;
}

function decodeError(bytes: Uint8Array): Error | undefined {
  try {
    decodeUnit(bytes);
  } catch (error) {
    return error as Error;
  }
  return undefined;
}

function rejects(t: Test, bytes: Uint8Array, message: RegExp, what: string): void {
  const error = decodeError(bytes);
  t.ok(error instanceof CorruptDataError, `${what}: CorruptDataError (got ${error?.name}: ${error?.message})`);
  t.equal((error as CorruptDataError | undefined)?.code, 'DATA_LOSS', `${what}: DATA_LOSS`);
  t.match(error?.message ?? '', message, `${what}: message says why`);
}

/** Byte offset of event `i` in a unit encoded from `events`. */
function eventOffset(events: readonly GuestEvent[], i: number): number {
  let at = UNIT_HEADER_BYTES;
  for (const e of events.slice(0, i)) {
    at += 5;
    if (e.type === EventType.NetRx) at += 2 + e.payload.length;
    else if (e.type === EventType.DiskRead) at += 4 + PAGE_BYTES;
    else if (e.type === EventType.Clock || e.type === EventType.Random) at += 8;
  }
  return at;
}

t.test('round trip of every event type', async (t) => {
  t.comment(`seed ${SEED}`);
  const random = new Random(SEED);
  const h = header();
  const events = everyEvent(random);
  const bytes = encodeUnit(h, events);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  t.equal(view.getUint32(0, true), UNIT_MAGIC, 'magic');
  t.equal(view.getUint8(4), UNIT_VERSION, 'version');
  t.equal(view.getUint32(12, true), events.length, 'event count');
  t.equal(bytes.length, eventOffset(events, events.length) + UNIT_TRAILER_BYTES, 'size is header + events + trailer');
  t.same(peekUnitHeader(bytes), h, 'peekUnitHeader reads the header');

  const d = decodeUnit(bytes);
  t.same(
    { sequence: d.sequence, final: d.final, startPosition: d.startPosition, instructionCount: d.instructionCount, pageWriteCount: d.pageWriteCount, guestNs: d.guestNs },
    h,
    'header fields',
  );
  const asyncIn = events.filter(isAsync);
  const syncIn = events.filter((e) => !isAsync(e));
  t.equal(d.asyncEvents.length, asyncIn.length, 'async event count');
  t.equal(d.syncEvents.length, syncIn.length, 'sync event count');
  // Compare with payloads as plain arrays (decoded payloads are views into the unit).
  const plain = (e: GuestEvent) => {
    switch (e.type) {
      case EventType.NetRx:
        return { ...e, payload: Buffer.from(e.payload).toString('hex') };
      case EventType.DiskRead:
        return { ...e, data: Buffer.from(e.data).toString('hex') };
      default:
        return { ...e };
    }
  };
  t.same(d.asyncEvents.map(plain), asyncIn.map(plain), 'timer, packet and disk events equal, in order');
  t.same(d.syncEvents.map(plain), syncIn.map(plain), 'clock and random events equal, in order');
  for (const type of [EventType.Timer, EventType.NetRx, EventType.DiskRead, EventType.Clock, EventType.Random]) {
    t.ok([...d.asyncEvents, ...d.syncEvents].some((e) => e.type === type), `event type ${type} present`);
  }

  // A final unit with no events, and one at the end of a recording of extreme values.
  const fin = header({ final: true, instructionCount: 0, pageWriteCount: 0, guestNs: 0 });
  const finBytes = encodeUnit(fin, []);
  t.equal(finBytes.length, UNIT_HEADER_BYTES + UNIT_TRAILER_BYTES);
  const df = decodeUnit(finBytes);
  t.equal(df.final, true);
  t.same([df.asyncEvents, df.syncEvents], [[], []]);
  // The largest counts a unit of the longest length (UNIT_MS_MAX) may declare.
  const instructionCount = UNIT_MS_MAX * UNIT_INSTRUCTIONS_PER_MS_MAX;
  const extreme = header({ sequence: 0xffffffff, startPosition: Number.MAX_SAFE_INTEGER, instructionCount, pageWriteCount: UNIT_MS_MAX * UNIT_PAGE_WRITES_PER_MS_MAX, guestNs: UNIT_MS_MAX * 1e6 });
  const de = decodeUnit(encodeUnit(extreme, [{ type: EventType.Timer, position: instructionCount }]));
  t.equal(de.sequence, 0xffffffff);
  t.equal(de.startPosition, Number.MAX_SAFE_INTEGER);
  t.equal(de.asyncEvents[0].position, instructionCount);
  // One more of either, and the unit is refused before any of it is replayed.
  t.throws(() => decodeUnit(encodeUnit({ ...extreme, instructionCount: instructionCount + 1 }, [])), /unit 4294967295: 1000000001 instructions and 100000 page writes, at most 1000000000 and 100000 in a unit of 100 ms/);
  t.throws(() => decodeUnit(encodeUnit({ ...extreme, pageWriteCount: 0xffffffff }, [])), CorruptDataError, 'a page-write count of 2^32-1');
  t.throws(() => checkUnitBounds({ ...extreme, guestNs: 10e6, instructionCount: 10 * UNIT_INSTRUCTIONS_PER_MS_MAX + 1 }, 10), /at most 100000000 and 10000 in a unit of 10 ms/, "bounded by the replica's own unit length");

  // A unit inside a larger buffer (byteOffset != 0) decodes the same.
  const framed = new Uint8Array(bytes.length + 13);
  framed.set(bytes, 5);
  const dv = decodeUnit(framed.subarray(5, 5 + bytes.length));
  t.same(dv.syncEvents, d.syncEvents, 'decodes from a view at an odd offset');
  t.equal(dv.asyncEvents.length, d.asyncEvents.length);
});

t.test('decodeUnit rejects malformed units with CorruptDataError', async (t) => {
  const random = new Random(SEED + 1);
  const events = everyEvent(random);
  const good = () => encodeUnit(header(), events);
  t.ok(decodeError(good()) === undefined, 'the good unit decodes');

  let b = good();
  new DataView(b.buffer).setUint32(0, 0x12345678, true);
  rejects(t, resealed(b), /not a log unit: magic 0x12345678, expected 0x55545243/, 'bad magic');
  rejects(t, (() => ((b = good()), (b[0] ^= 1), b))(), /magic/, 'bad magic, checksum not fixed');

  b = good();
  b[4] = 2;
  rejects(t, resealed(b), /log unit version 2 is not supported \(this build reads version 1\)/, 'bad version');

  b = good();
  b[b.length - 1] ^= 0xff;
  rejects(t, b, /unit 41: checksum mismatch/, 'bad checksum');
  b = good();
  b[eventOffset(events, 4) + 100] ^= 1; // inside the disk block
  rejects(t, b, /unit 41: checksum mismatch/, 'a flipped payload byte');

  // Events out of order: encodeUnit does not sort, decodeUnit must notice.
  const swapped = [...events];
  [swapped[4], swapped[5]] = [swapped[5], swapped[4]];
  rejects(t, encodeUnit(header(), swapped), /unit 41: event 5 at position 500 is out of order or outside the unit \(previous 777/, 'event position out of order');
  rejects(
    t,
    encodeUnit(header({ instructionCount: 99_999 }), events),
    /event 7 at position 100000 is out of order or outside the unit .*unit has 99999 instructions/,
    'event position past the unit end',
  );

  // Unknown event types: 0, 6 and 255.
  for (const type of [0, 6, 255]) {
    b = good();
    b[eventOffset(events, 5)] = type;
    rejects(t, resealed(b), new RegExp(`unit 41: event 5 has unknown type ${type}`), `unknown event type ${type}`);
  }

  // A length running past the end: a packet length field too large, an event count too large.
  const small: GuestEvent[] = [
    { type: EventType.Timer, position: 1 },
    { type: EventType.NetRx, position: 2, payload: bytesOf(1448, random) },
    { type: EventType.Timer, position: 3 },
  ];
  b = encodeUnit(header(), small);
  new DataView(b.buffer).setUint16(eventOffset(small, 1) + 5, 60_000, true);
  rejects(t, resealed(b), /unit 41: packet payload of event 1 at byte 50 runs past the end of the unit \(1505 bytes\)/, 'packet length past the end');
  const lastPacket = encodeUnit(header(), [{ type: EventType.NetRx, position: 1, payload: bytesOf(100, random) }]);
  new DataView(lastPacket.buffer).setUint16(UNIT_HEADER_BYTES + 5, 101, true);
  rejects(t, resealed(lastPacket), /packet payload of event 0 at byte 45 runs past the end of the unit \(147 bytes\)/, 'packet one byte too long');
  b = good();
  new DataView(b.buffer).setUint32(12, events.length + 1, true);
  rejects(t, resealed(b), new RegExp(`unit 41: event ${events.length} at byte \\d+ runs past the end`), 'event count past the end');
  b = encodeUnit(header(), [{ type: EventType.DiskRead, position: 3, block: 1, data: bytesOf(PAGE_BYTES, random) }]);
  rejects(t, resealed(b.slice(0, b.length - 100)), /disk block of event 0 at byte 45 runs past the end/, 'disk block cut short');
  b = encodeUnit(header(), [{ type: EventType.Clock, position: 3, valueNs: 5 }]);
  rejects(t, resealed(b.slice(0, b.length - 1)), /clock value of event 0 at byte 45 runs past the end/, 'clock value cut short');
  b = encodeUnit(header(), [{ type: EventType.Random, position: 3, low: 1, high: 2 }]);
  rejects(t, resealed(b.slice(0, b.length - 4)), /random value of event 0 at byte 45 runs past the end/, 'random value cut short');

  // Bytes left over after the last event.
  b = good();
  new DataView(b.buffer).setUint32(12, events.length - 1, true);
  rejects(t, resealed(b), /unit 41: 5 bytes left over after 7 events/, 'event count too small');

  // Too short to hold a header, and nonsense header values.
  rejects(t, new Uint8Array(0), /unit truncated: 0 bytes, shorter than the 48-byte minimum/, 'empty');
  rejects(t, good().subarray(0, 47), /unit truncated: 47 bytes/, '47 bytes');
  rejects(t, good().subarray(0, 48), /checksum mismatch/, 'a 48-byte prefix');
  b = good();
  new DataView(b.buffer).setFloat64(16, 1.5, true);
  rejects(t, resealed(b), /unit 41: invalid start position 1.5/, 'fractional start position');
  b = good();
  new DataView(b.buffer).setFloat64(32, -1, true);
  rejects(t, resealed(b), /invalid start position .* or guest time -1 ns/, 'negative guest time');
  b = good();
  new DataView(b.buffer).setFloat64(16, Number.NaN, true);
  rejects(t, resealed(b), /invalid start position NaN/, 'NaN start position');
  b = good();
  new DataView(b.buffer).setUint32(12, 2_000_000, true);
  rejects(t, resealed(b), /2000000 events announced, at most \d+ fit its \d+ bytes/, 'event count over what the bytes hold');
});
