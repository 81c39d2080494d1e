// Baselines of part 2, over the guest's memory once a checkpoint made it resident: memcpy in 1 MiB
// pieces into a 256 MiB ring (larger than any cache, so that writes go to memory too), xxh64 in
// pages and in 1 MiB pieces, lz4 with and without a fresh output buffer, and the cost of a first
// touch of fresh memory.

import lz4 from 'lz4';
import type { SimSourceGuest } from '../../shared/driver/sim/index.js';
import { PAGE_BYTES } from '../../shared/driver/types.js';
import { xxh64 } from '../../shared/hash.js';
import { compressBlock } from '../../shared/lz4.js';
import { MIB_BYTES } from '../format.js';
import { median } from '../stats.js';
import { megabytesPerSec, Stopwatch } from './measure.js';

const RING_BYTES = 256 * MIB_BYTES;
/** The piece size of memcpy, lz4 and the coarse xxh64. */
const PIECE_BYTES = MIB_BYTES;

export interface Baseline {
  firstTouchMBps: number;
  firstTouchUsPerPage: number;
  memcpyMBps: number;
  xxh64PageMBps: number;
  xxh64MiBMBps: number;
  lz4MiBMBps: number;
  /** The lz4 package's encodeBlock into one output buffer kept across calls: compressBlock without its allocation. */
  lz4ReusedOutputMBps: number;
}

/** The guest's memory as Buffers over its segments (no copy). */
function memoryBuffers(guest: SimSourceGuest): Buffer[] {
  return guest.machine.memory.segments.filter((seg): seg is Int32Array => seg !== undefined).map((seg) => Buffer.from(seg.buffer, seg.byteOffset, seg.byteLength));
}

/** Calls `each` on every `pieceBytes` piece of `segments`. */
function forEachPiece(segments: Buffer[], pieceBytes: number, each: (piece: Buffer) => void): void {
  for (const seg of segments) for (let off = 0; off < seg.length; off += pieceBytes) each(seg.subarray(off, off + pieceBytes));
}

/** MB/s of `bytes` handled by `work`, on the wall clock. */
function timedMBps(bytes: number, work: () => void): number {
  const startMs = performance.now();
  work();
  return megabytesPerSec(bytes, performance.now() - startMs);
}

function copyIntoRing(segments: Buffer[], ring: Buffer): void {
  let ringAt = 0;
  for (const seg of segments) {
    for (let off = 0; off < seg.length; off += PIECE_BYTES) {
      seg.copy(ring, ringAt, off, off + PIECE_BYTES);
      ringAt = (ringAt + PIECE_BYTES) % ring.length;
    }
  }
}

/**
 * Measures every baseline `reps` times (medians) over the guest's memory. `sink` folds the hashes
 * together, so that computing them cannot be skipped.
 */
export function measureBaselines(guest: SimSourceGuest, reps: number): { baseline: Baseline; sink: bigint } {
  const segments = memoryBuffers(guest);
  const sourceBytes = segments.reduce((n, seg) => n + seg.length, 0);
  const ring = Buffer.allocUnsafeSlow(RING_BYTES);
  const touch = new Stopwatch();
  touch.start();
  ring.fill(1);
  touch.stop();
  const runs = { memcpy: [] as number[], xxh64Page: [] as number[], xxh64MiB: [] as number[], lz4MiB: [] as number[], lz4Reused: [] as number[] };
  const lz4Out = Buffer.alloc(lz4.encodeBound(PIECE_BYTES));
  let sink = 0n;
  for (let rep = 0; rep < reps; rep++) {
    runs.memcpy.push(timedMBps(sourceBytes, () => copyIntoRing(segments, ring)));
    runs.xxh64Page.push(timedMBps(sourceBytes, () => forEachPiece(segments, PAGE_BYTES, (page) => (sink ^= xxh64(page)))));
    runs.xxh64MiB.push(timedMBps(sourceBytes, () => forEachPiece(segments, PIECE_BYTES, (piece) => (sink ^= xxh64(piece)))));
    runs.lz4MiB.push(timedMBps(sourceBytes, () => forEachPiece(segments, PIECE_BYTES, (piece) => compressBlock(piece))));
    runs.lz4Reused.push(timedMBps(sourceBytes, () => forEachPiece(segments, PIECE_BYTES, (piece) => lz4.encodeBlock(piece, lz4Out))));
  }
  const baseline = {
    firstTouchMBps: megabytesPerSec(ring.length, touch.wallMs),
    firstTouchUsPerPage: (touch.wallMs * 1000) / Math.max(1, touch.minorFaults),
    memcpyMBps: median(runs.memcpy),
    xxh64PageMBps: median(runs.xxh64Page),
    xxh64MiBMBps: median(runs.xxh64MiB),
    lz4MiBMBps: median(runs.lz4MiB),
    lz4ReusedOutputMBps: median(runs.lz4Reused),
  };
  return { baseline, sink };
}
