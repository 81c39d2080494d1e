// lz4 block compression of checkpoint chunks and log units. The block API is used on purpose:
// measured here at GB/s, where the package's frame/stream API manages ~250 MB/s.
import lz4 from 'lz4';
import { CorruptDataError } from './errors.js';

/**
 * Compresses `raw`. Returns `null` when compression would not make it smaller, in which case
 * the caller sends the raw bytes (and says so in its frame), so incompressible data costs no
 * expansion on the wire.
 */
export function compressBlock(raw: Uint8Array): Buffer | null {
  if (raw.length === 0) return null;
  const bound = lz4.encodeBound(raw.length);
  // One scratch buffer, reused: a fresh bound-sized buffer per call costs more in page faults of
  // new memory than the compression itself (measured in bench/sim/). The result is copied out
  // at its exact size.
  if (scratch.length < bound) scratch = Buffer.allocUnsafeSlow(bound);
  const compressedBytes = lz4.encodeBlock(raw, scratch);
  if (compressedBytes <= 0 || compressedBytes >= raw.length) return null;
  return Buffer.from(scratch.subarray(0, compressedBytes));
}

let scratch = Buffer.allocUnsafeSlow(0);

/**
 * Compresses `raw` into `out` from `offset` on, if it fits in fewer than `raw.length` bytes there:
 * returns the compressed length, or 0 when compression would not make it smaller (lz4 gives up as
 * soon as its output would not fit), in which case `out` holds nothing of use.
 */
export function compressBlockInto(raw: Uint8Array, out: Buffer, offset: number): number {
  if (raw.length === 0) return 0;
  const limit = Math.min(raw.length - 1, out.length - offset);
  const compressedBytes = lz4.encodeBlock(raw, out, offset, offset + limit);
  return compressedBytes > 0 && compressedBytes < raw.length ? compressedBytes : 0;
}

/**
 * Decompresses `compressed` into exactly `rawBytes` bytes, into `out` if given (of exactly that
 * length) or a new buffer. A malformed block, or one that does not decompress to the announced
 * size, is corrupt data, never a crash.
 */
export function decompressBlock(compressed: Uint8Array, rawBytes: number, what: string, out: Buffer = Buffer.allocUnsafe(rawBytes)): Buffer {
  const n = lz4.decodeBlock(compressed, out);
  if (n !== rawBytes) {
    throw new CorruptDataError(
      `${what}: lz4 block of ${compressed.length} bytes decompressed to ${n < 0 ? `an error (${n})` : `${n} bytes`}, expected ${rawBytes}`,
    );
  }
  return out;
}
