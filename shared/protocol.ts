// The agent-to-agent protocol's version and its end-to-end checked payloads: each checkpoint
// chunk and log unit travels lz4-compressed (or raw when that would not shrink it) with the xxh64
// of its raw bytes, checked on arrival before the driver sees it. The pair of checks (hash before
// compression, verify after decompression) catches corruption anywhere in between.

import { CorruptDataError, LimitExceededError } from './errors.js';
import { xxh64 } from './hash.js';
import { compressBlock, decompressBlock } from './lz4.js';

export const PROTOCOL_VERSION = 1;
export const AGENT_VERSION = '0.1.0';
/** Largest chunk or unit (raw) the agents carry. */
export const PAYLOAD_RAW_BYTES_MAX = 16 * 1024 * 1024;

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

export function packPayload(raw: Uint8Array, compress = true): WirePayload {
  if (raw.length > PAYLOAD_RAW_BYTES_MAX) throw new LimitExceededError(`payload of ${raw.length} bytes is over the limit of ${PAYLOAD_RAW_BYTES_MAX}`);
  const compressed = compress ? compressBlock(raw) : null;
  return { rawBytes: raw.length, compressed: compressed !== null, data: compressed ?? raw, xxh64: hashBytes(raw) };
}

/** Decompresses and verifies a payload; `what` names it in errors ("unit 17", "chunk 3"). */
export function unpackPayload(payload: { [K in keyof WirePayload]?: WirePayload[K] | null } | null | undefined, what: string): Uint8Array {
  if (!payload || !payload.data || !payload.xxh64) throw new CorruptDataError(`${what}: payload missing`);
  const rawBytes = payload.rawBytes ?? 0;
  if (rawBytes > PAYLOAD_RAW_BYTES_MAX) throw new LimitExceededError(`${what}: ${rawBytes} raw bytes announced, over the limit of ${PAYLOAD_RAW_BYTES_MAX}`);
  let raw: Uint8Array;
  if (payload.compressed) raw = decompressBlock(payload.data, rawBytes, what);
  else {
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
