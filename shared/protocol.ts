// The agent-to-agent protocol's version and its end-to-end checked payloads: each checkpoint
// chunk and log unit travels lz4-compressed (or raw when that would not shrink it) with the xxh64
// of its raw bytes, checked on arrival before the driver sees it. The pair of checks (hash before
// compression, verify after decompression) catches corruption anywhere in between.
//
// The source serializes the SourceMessages that carry a payload itself (packMessage): lz4 writes
// the payload's data straight into the message's buffer, behind a header of a few dozen bytes,
// where protobufjs would copy it four times (into its writer, twice more to make room for each
// enclosing length prefix, then out of the writer). The bytes are ordinary protobuf: the target
// decodes them with the generated code like any other message.

import { assert } from './assert.js';
import { CorruptDataError, LimitExceededError } from './errors.js';
import { xxh64 } from './hash.js';
import { compressBlock, compressBlockInto, decompressBlock } from './lz4.js';

export const PROTOCOL_VERSION = 1;
export const AGENT_VERSION = '0.1.0';
/**
 * The target's windows, until its ReserveResponse says otherwise (it sends its configured ones):
 * what the source may have outstanding, sent and not yet applied or replayed.
 */
export const WINDOW_DEFAULTS = {
  /** Checkpoint chunks (or page batches) sent and not yet applied. */
  chunks: 16,
  /** Log units sent and not yet replayed, by count and by raw bytes. */
  units: 4096,
  unitBytes: 64 * 1024 * 1024,
} as const;

/** Largest chunk or unit (raw) the agents carry. */
export const PAYLOAD_RAW_BYTES_MAX = 16 * 1024 * 1024;

/** Bytes one bandwidth probe (Migration.Probe) may send: a target refuses more. */
export const PROBE_BYTES_MAX = 64 * 1024 * 1024;

export interface WirePayload {
  rawBytes: number;
  compressed: boolean;
  data: Uint8Array;
  xxh64: Uint8Array;
}

function hashBytes(raw: Uint8Array): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, xxh64(raw), false);
  return out;
}

/** A payload of `raw` for a message built as an object (not a packed one): lz4-compressed when that makes it smaller. */
export function payloadOf(raw: Uint8Array): WirePayload {
  if (raw.length > PAYLOAD_RAW_BYTES_MAX) throw new LimitExceededError(`payload of ${raw.length} bytes is over the limit of ${PAYLOAD_RAW_BYTES_MAX}`);
  const compressed = compressBlock(raw);
  return { rawBytes: raw.length, compressed: compressed !== null, data: compressed ?? raw, xxh64: hashBytes(raw) };
}

/**
 * Decompresses and verifies a payload; `what` names it in errors ("unit 17", "chunk 3").
 *
 * With `transient`, a compressed payload is decompressed into a buffer that the next transient
 * call reuses: for a caller that is done with the bytes before it returns (the checkpoint restore
 * copies them into guest memory), a fresh buffer per chunk would cost an allocation, page faults
 * on new memory and garbage collection.
 */
export function unpackPayload(payload: { [K in keyof WirePayload]?: WirePayload[K] | null } | null | undefined, what: string, transient = false): Uint8Array {
  if (!payload || !payload.data || !payload.xxh64) throw new CorruptDataError(`${what}: payload missing`);
  const rawBytes = payload.rawBytes ?? 0;
  if (rawBytes > PAYLOAD_RAW_BYTES_MAX) throw new LimitExceededError(`${what}: ${rawBytes} raw bytes announced, over the limit of ${PAYLOAD_RAW_BYTES_MAX}`);
  let raw: Uint8Array;
  if (payload.compressed) {
    let out: Buffer | undefined;
    if (transient) {
      if (transientScratch.length < rawBytes) transientScratch = Buffer.allocUnsafeSlow(rawBytes);
      out = transientScratch.subarray(0, rawBytes);
    }
    raw = decompressBlock(payload.data, rawBytes, what, out);
  } else {
    if (payload.data.length !== rawBytes) throw new CorruptDataError(`${what}: ${payload.data.length} bytes received, ${rawBytes} announced`);
    raw = payload.data;
  }
  const expected = payload.xxh64;
  const actual = hashBytes(raw);
  if (expected.length !== 8 || !Buffer.from(expected).equals(Buffer.from(actual))) {
    throw new CorruptDataError(`${what}: xxh64 mismatch (sent ${Buffer.from(expected).toString('hex')}, received data hashes to ${Buffer.from(actual).toString('hex')})`);
  }
  return raw;
}

/** Grows to the largest transient payload seen (at most PAYLOAD_RAW_BYTES_MAX). */
let transientScratch = Buffer.allocUnsafeSlow(0);

// --- serialized SourceMessages with a payload -------------------------------------------------

/** The SourceMessage bodies that carry a payload, with their other fields (migration.proto). */
export type PayloadBody =
  | { kind: 'chunk'; index: number; final: boolean; memoryBytesCovered: number; generation?: number }
  | { kind: 'unit'; sequence: number; final: boolean; guestNs: number; eventCount: number }
  | { kind: 'pages'; round: number; pageCount: number }
  | { kind: 'machineState' };

/**
 * What a PackPool worker is given: packMessage's arguments, the raw bytes at the start of `raw`,
 * and `out` to pack into (packedBytesMax(rawLength) bytes at least); both shared with the caller.
 */
export interface PackRequest {
  body: PayloadBody;
  raw: SharedArrayBuffer;
  rawLength: number;
  out: SharedArrayBuffer;
  compress: boolean;
}

/** What it gives back: the PackedMessage's fields, and where its bytes lie in `out`. */
export interface PackReply extends Omit<PackedMessage, 'bytes' | 'release'> {
  byteOffset: number;
  byteLength: number;
}

/** A serialized SourceMessage (packMessage), and where its payload's data lies in it. */
export interface PackedMessage {
  /** Which payload it carries. */
  kind: PayloadBody['kind'];
  bytes: Buffer;
  rawBytes: number;
  compressed: boolean;
  /** Offset and length (as sent: compressed or raw) of the payload's data in `bytes`. */
  dataOffset: number;
  dataBytes: number;
  /** Set when `bytes` lies in a buffer to be reused: called once the stream took its own copy. */
  release?: () => void;
}

// Field numbers of migration.proto, and protobuf's wire types.
const VARINT = 0;
const LENGTH_DELIMITED = 2;
const SOURCE_MESSAGE_FIELD = { chunk: 2, unit: 3, pages: 9, machineState: 10 } as const;
const PAYLOAD_FIELD = { chunk: 4, unit: 5, pages: 3, machineState: 1 } as const;
const PAYLOAD = { rawBytes: 1, compressed: 2, data: 3, xxh64: 4 } as const;

/**
 * Room for everything before the payload's data: three tags with length prefixes, up to four
 * varint fields of the body, the payload's raw_bytes, compressed and xxh64 fields. The largest
 * values take 54 bytes (a unit with a 5-byte sequence and event count and an 8-byte guest time).
 */
const HEADER_BYTES_MAX = 128;

/** The room packMessage needs to pack `rawBytes` of payload into a buffer of the caller's. */
export function packedBytesMax(rawBytes: number): number {
  return HEADER_BYTES_MAX + rawBytes;
}

/** Varint fields of `body`, in field order. */
function bodyFields(body: PayloadBody): Array<[field: number, value: number]> {
  switch (body.kind) {
    case 'chunk': {
      const fields: Array<[number, number]> = [
        [1, body.index],
        [2, body.final ? 1 : 0],
        [3, body.memoryBytesCovered],
      ];
      // Field 5 before the payload's field 4: a protobuf parser takes fields in any order.
      if (body.generation !== undefined && body.generation > 0) fields.push([5, body.generation]);
      return fields;
    }
    case 'unit':
      return [
        [1, body.sequence],
        [2, body.final ? 1 : 0],
        [3, body.guestNs],
        [4, body.eventCount],
      ];
    case 'pages':
      return [
        [1, body.round],
        [2, body.pageCount],
      ];
    case 'machineState':
      return [];
  }
}

/** Builds a header of protobuf fields (tags, varints, bytes) in a small buffer of its own. */
class FieldWriter {
  private readonly buf = new Uint8Array(HEADER_BYTES_MAX);
  private at = 0;

  get bytes(): Uint8Array {
    return this.buf.subarray(0, this.at);
  }

  reset(): this {
    this.at = 0;
    return this;
  }

  /** A varint field (uint32, uint64 up to 2^53, bool); proto3 leaves zero values out, as protobufjs does. */
  varint(field: number, value: number): void {
    if (value === 0) return;
    this.putVarint((field << 3) | VARINT);
    this.putVarint(value);
  }

  /** The tag and length prefix of a length-delimited field whose `length` bytes follow elsewhere. */
  lengthPrefix(field: number, length: number): void {
    this.putVarint((field << 3) | LENGTH_DELIMITED);
    this.putVarint(length);
  }

  bytesField(field: number, value: Uint8Array): void {
    this.lengthPrefix(field, value.length);
    this.buf.set(value, this.at);
    this.at += value.length;
  }

  private putVarint(value: number): void {
    assert(Number.isSafeInteger(value) && value >= 0, () => `varint of ${value}: expected a non-negative safe integer`);
    while (value >= 0x80) {
      this.buf[this.at++] = (value % 0x80) | 0x80;
      value = Math.floor(value / 0x80);
    }
    this.buf[this.at++] = value;
  }
}

/** The three parts of packMessage's header, reused by every call (each is copied out before it returns). */
const payloadHeader = new FieldWriter();
const bodyHeader = new FieldWriter();
const messageHeader = new FieldWriter();

/**
 * Serializes the SourceMessage `{ [body.kind]: { ...body, payload } }` whose payload is `raw`,
 * lz4-compressed when `compress` and that makes it smaller. One buffer of `raw`'s size plus
 * HEADER_BYTES_MAX is allocated (or `into` is used: see packedBytesMax); lz4 writes into it
 * directly, or `raw` is copied into it once. Fields go in field order except the payload's `data`, which is last so that the
 * header can be written once its length is known (protobuf decoders take fields in any order).
 */
export function packMessage(body: PayloadBody, raw: Uint8Array, compress = true, into?: Uint8Array): PackedMessage {
  if (raw.length > PAYLOAD_RAW_BYTES_MAX) throw new LimitExceededError(`payload of ${raw.length} bytes is over the limit of ${PAYLOAD_RAW_BYTES_MAX}`);
  assert(into === undefined || into.length >= packedBytesMax(raw.length), () => `a buffer of ${into!.length} bytes to pack ${raw.length} bytes into, ${packedBytesMax(raw.length)} needed`);
  const out = into === undefined ? Buffer.allocUnsafe(HEADER_BYTES_MAX + raw.length) : Buffer.from(into.buffer, into.byteOffset, into.length);
  const compressedBytes = compress ? compressBlockInto(raw, out, HEADER_BYTES_MAX) : 0;
  const compressed = compressedBytes > 0;
  const dataBytes = compressed ? compressedBytes : raw.length;
  if (!compressed) out.set(raw, HEADER_BYTES_MAX);

  // The header, innermost first, as each enclosing length prefix counts everything after it.
  const payload = payloadHeader.reset();
  payload.varint(PAYLOAD.rawBytes, raw.length);
  payload.varint(PAYLOAD.compressed, compressed ? 1 : 0);
  payload.bytesField(PAYLOAD.xxh64, hashBytes(raw));
  payload.lengthPrefix(PAYLOAD.data, dataBytes);
  const payloadBytes = payload.bytes.length + dataBytes;
  const fields = bodyHeader.reset();
  for (const [field, value] of bodyFields(body)) fields.varint(field, value);
  fields.lengthPrefix(PAYLOAD_FIELD[body.kind], payloadBytes);
  const message = messageHeader.reset();
  message.lengthPrefix(SOURCE_MESSAGE_FIELD[body.kind], fields.bytes.length + payloadBytes);

  const headerBytes = message.bytes.length + fields.bytes.length + payload.bytes.length;
  assert(headerBytes <= HEADER_BYTES_MAX, () => `message header of ${headerBytes} bytes, over HEADER_BYTES_MAX ${HEADER_BYTES_MAX}`);
  let at = HEADER_BYTES_MAX - headerBytes;
  const start = at;
  for (const part of [message.bytes, fields.bytes, payload.bytes]) {
    out.set(part, at);
    at += part.length;
  }
  return { kind: body.kind, bytes: out.subarray(start, HEADER_BYTES_MAX + dataBytes), rawBytes: raw.length, compressed, dataOffset: headerBytes, dataBytes };
}
