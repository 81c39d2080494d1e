// The segments guest memory is made of (memory.ts), and a pool of them kept across guests.

import { PAGE_BYTES } from '../types.js';

export const PAGE_WORDS = PAGE_BYTES / 4;
/** Pages per segment (64 MiB). */
export const SEGMENT_SHIFT = 14;
export const SEGMENT_PAGES = 1 << SEGMENT_SHIFT;
export const SEGMENT_MASK = SEGMENT_PAGES - 1;
export const SEGMENT_BYTES = SEGMENT_PAGES * PAGE_BYTES;

/**
 * Full-size segments of discarded guests, kept for the next guest or replica of this host: taking
 * one costs a memset of memory already mapped (about 20 ms a GiB here) where a fresh segment costs a
 * page fault per page on its first write (about 350 ms a GiB when touched in a row, several times
 * that when the faults interleave with other work). Holds at most `bytesMax`.
 */
export class SegmentPool {
  private readonly segments: Int32Array[] = [];

  constructor(readonly bytesMax: number) {}

  get bytes(): number {
    return this.segments.length * SEGMENT_BYTES;
  }

  /** A full-size segment, zeroed, or `undefined` when the pool is empty. */
  take(): Int32Array | undefined {
    const segment = this.segments.pop();
    segment?.fill(0);
    return segment;
  }

  /** Lets every kept segment go (to the collector). */
  clear(): void {
    this.segments.length = 0;
  }

  /** Keeps `segment` if it is full-size and the pool has room; otherwise it is left to the collector. */
  give(segment: Int32Array): void {
    if (segment.byteLength === SEGMENT_BYTES && this.bytes + SEGMENT_BYTES <= this.bytesMax) this.segments.push(segment);
  }
}
