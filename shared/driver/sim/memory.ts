// Guest memory of the `sim` guest: 4 KiB pages in 64 MiB segments, so that no single ArrayBuffer
// limits the size (8 GiB and more work), and a segment is allocated on its first write, so that
// memory never written costs nothing (untouched pages read as zero). A replica's memory is instead
// made ready when it is reserved (prepareSlice), as a Xen domain's memory is allocated when the
// domain is built: a restore then writes into pages already mapped. Segments of discarded guests
// can be kept in a SegmentPool for the next one.
//
// Besides the pages, three per-page structures, each a bit or a hash per page:
// - the dirty bitmap, for pre-copy's fetch-and-clear;
// - the stale bitmap and page-hash table, which make the state digest incremental: only pages
//   written since the last digest are hashed again;
// - the copy-on-write state of a live checkpoint in progress (cow.ts).
//
// Everything the guest's vCPU writes lives in shared memory (SharedArrayBuffer), so that the vCPU
// can run on a thread of its own while the agent's thread reads pages for checkpoints, digests and
// pre-copy rounds (GuestMemory.shared, fromShared). The bitmaps change only by atomic operations,
// and a vCPU on its own thread marks the pages of each unit dirty and stale again once the unit is
// done (markWrittenAgain): a reader that cleared a bit and read the page while the unit wrote it
// finds the bit set again, and reads the page again.

import { assert } from '../../assert.js';
import { xxh64 } from '../../hash.js';
import { PAGE_BYTES } from '../types.js';
import { CopyOnWrite } from './cow.js';
import { PAGE_WORDS, SEGMENT_MASK, SEGMENT_PAGES, SEGMENT_SHIFT, type SegmentPool } from './segment-pool.js';

export { CopyOnWrite, isZeroPage } from './cow.js';

export { PAGE_WORDS, SEGMENT_BYTES, SEGMENT_MASK, SEGMENT_PAGES, SEGMENT_SHIFT, SegmentPool } from './segment-pool.js';

export const ZERO_PAGE = new Uint8Array(PAGE_BYTES);

export const ZERO_PAGE_HASH = xxh64(ZERO_PAGE);

export class GuestMemory {
  readonly pageCount: number;
  /** 32-bit word views of each segment; `undefined` until the segment is first written. */
  readonly segments: Array<Int32Array | undefined>;
  private dirty: Uint32Array;
  private stale: Uint32Array;
  /** Bit set: the page was written at least once. A page never written is zero without reading it. */
  private written: Uint32Array;
  private pageHashes: BigUint64Array;
  /** The live checkpoint in progress, if any. */
  cow: CopyOnWrite | null = null;
  /**
   * Post-copy: pages not received yet (bit set), or null when every page is present. The guest
   * must not touch a missing page: its runner fetches them first (see SimSourceGuest).
   */
  missing: Uint32Array | null = null;
  /** Post-copy: missing pages (word 0), shared with a vCPU thread. */
  private missingCounter = new Int32Array(new SharedArrayBuffer(4));
  /** Set by a vCPU on its own thread: the pages written in the unit in progress (markWrittenAgain). */
  unitWrites: number[] | null = null;
  /** Post-copy: xxh64 of each page as it was received, for the digest of the state as sent. */
  private receivedHashes: BigUint64Array | null = null;
  /** Where segments come from before they are allocated, and go when the memory is freed. */
  pool: SegmentPool | null = null;
  /** prepareSlice's progress: pages below it are allocated and mapped. */
  private preparedPages = 0;

  constructor(
    readonly memoryBytes: number,
    /** Whether this thread digests the memory (false on a vCPU thread: the agent's thread does). */
    digests = true,
  ) {
    assert(memoryBytes > 0 && memoryBytes % PAGE_BYTES === 0, () => `memory size ${memoryBytes} is not a positive multiple of ${PAGE_BYTES}`);
    this.pageCount = memoryBytes / PAGE_BYTES;
    this.segments = new Array(Math.ceil(this.pageCount / SEGMENT_PAGES)).fill(undefined);
    const bitmap = () => new Uint32Array(new SharedArrayBuffer(4 * Math.ceil(this.pageCount / 32)));
    this.dirty = bitmap();
    this.stale = bitmap();
    this.written = bitmap();
    this.pageHashes = digests ? new BigUint64Array(this.pageCount).fill(ZERO_PAGE_HASH) : new BigUint64Array(0);
  }

  /**
   * What a vCPU thread needs to work on this memory: every segment (allocated now if not yet: an
   * untouched segment costs address space, not memory), the bitmaps and the post-copy state.
   */
  shared(): GuestMemoryShared {
    for (let i = 0; i < this.segments.length; i++) {
      if (this.segments[i] === undefined) this.segments[i] = newSegment(Math.min(SEGMENT_PAGES, this.pageCount - i * SEGMENT_PAGES));
    }
    const sab = (a: { buffer: ArrayBufferLike }) => a.buffer as SharedArrayBuffer;
    return {
      memoryBytes: this.memoryBytes,
      segments: this.segments.map((seg) => sab(seg!)),
      dirty: sab(this.dirty),
      stale: sab(this.stale),
      written: sab(this.written),
      missing: this.missing === null ? null : sab(this.missing),
      missingCounter: sab(this.missingCounter),
    };
  }

  /** The memory a vCPU thread works on: the same pages and bitmaps as the agent's `shared()`. */
  static fromShared(s: GuestMemoryShared): GuestMemory {
    const memory = new GuestMemory(s.memoryBytes, false);
    s.segments.forEach((buffer, i) => (memory.segments[i] = new Int32Array(buffer)));
    memory.dirty = new Uint32Array(s.dirty);
    memory.stale = new Uint32Array(s.stale);
    memory.written = new Uint32Array(s.written);
    memory.missing = s.missing === null ? null : new Uint32Array(s.missing);
    memory.missingCounter = new Int32Array(s.missingCounter);
    return memory;
  }

  /**
   * Marks the pages written by the unit just done dirty and stale again (a vCPU on its own thread):
   * a reader that cleared their bits while the unit wrote them reads them again.
   */
  markWrittenAgain(pages: readonly number[]): void {
    for (const page of pages) {
      const bit = 1 << (page & 31);
      Atomics.or(this.dirty, page >>> 5, bit);
      Atomics.or(this.stale, page >>> 5, bit);
    }
  }

  /** Bytes of segments actually allocated (at most the guest's memory size). */
  get allocatedBytes(): number {
    let n = 0;
    for (const s of this.segments) if (s !== undefined) n += s.byteLength;
    return n;
  }

  private segment(index: number): Int32Array {
    let seg = this.segments[index];
    if (seg === undefined) {
      const pages = Math.min(SEGMENT_PAGES, this.pageCount - index * SEGMENT_PAGES);
      seg = (pages === SEGMENT_PAGES ? this.pool?.take() : undefined) ?? newSegment(pages);
      this.segments[index] = seg;
    }
    return seg;
  }

  /** Pages prepareSlice has still to make ready (0: every page is allocated and mapped). */
  get unpreparedPages(): number {
    return this.pageCount - this.preparedPages;
  }

  /**
   * Makes up to `pagesMax` more pages ready, in page order: allocates their segment (a pooled one
   * comes zeroed and mapped) and writes a zero word into each page never written, so that the
   * kernel maps it now, not at the restore's first write. No page or bitmap changes: it reads as
   * zero and counts as never written. Returns the pages still to prepare.
   */
  prepareSlice(pagesMax: number): number {
    const end = Math.min(this.pageCount, this.preparedPages + pagesMax);
    for (let p = this.preparedPages; p < end; p++) {
      if ((Atomics.load(this.written, p >>> 5) & (1 << (p & 31))) === 0) this.segment(p >>> SEGMENT_SHIFT)[(p & SEGMENT_MASK) * PAGE_WORDS] = 0;
    }
    this.preparedPages = end;
    return this.pageCount - end;
  }

  /**
   * Prepares `page` for a write and returns its segment's word view (the page starts at word
   * `(page & SEGMENT_MASK) * PAGE_WORDS`): preserves the old contents for a checkpoint in
   * progress, marks the page dirty and its hash stale. Every write to guest memory goes through
   * here; nothing else may write a segment.
   */
  prepareWrite(page: number): Int32Array {
    assert(this.missing === null || !this.isMissing(page), () => `write to page ${page}, which post-copy has not fetched yet`);
    return this.markWrite(page);
  }

  /** prepareWrite without its check that the page is here (post-copy's receipt of a missing page). */
  private markWrite(page: number): Int32Array {
    const segIndex = page >>> SEGMENT_SHIFT;
    const cow = this.cow;
    if (cow !== null && cow.needsCopy(page)) cow.beforeWrite(page, this.pageBytesOrNull(page));
    const bit = 1 << (page & 31);
    const word = page >>> 5;
    Atomics.or(this.written, word, bit);
    Atomics.or(this.dirty, word, bit);
    Atomics.or(this.stale, word, bit);
    this.unitWrites?.push(page);
    return this.segment(segIndex);
  }

  /**
   * A view of one page's bytes, or `null` for a page never written (all zero: not even read, as
   * reading untouched memory makes the kernel map it). Do not write through it.
   */
  pageBytesOrNull(page: number): Uint8Array | null {
    const seg = this.segments[page >>> SEGMENT_SHIFT];
    if (seg === undefined || (Atomics.load(this.written, page >>> 5) & (1 << (page & 31))) === 0) return null;
    return new Uint8Array(seg.buffer, seg.byteOffset + (page & SEGMENT_MASK) * PAGE_BYTES, PAGE_BYTES);
  }

  readWord(page: number, wordInPage: number): number {
    const seg = this.segments[page >>> SEGMENT_SHIFT];
    return seg === undefined ? 0 : seg[(page & SEGMENT_MASK) * PAGE_WORDS + wordInPage];
  }

  /** Copies `count` pages from `firstPage` into `out`. */
  readPages(firstPage: number, count: number, out: Uint8Array): void {
    this.checkRange(firstPage, count, out.length);
    for (let i = 0; i < count; i++) {
      const bytes = this.pageBytesOrNull(firstPage + i);
      if (bytes === null) out.fill(0, i * PAGE_BYTES, (i + 1) * PAGE_BYTES);
      else out.set(bytes, i * PAGE_BYTES);
    }
  }

  /**
   * Writes `count` pages from `data` starting at `firstPage`, as guest writes (dirty, stale,
   * copy-on-write): each page is prepared first, then the pages of one segment are copied at once.
   */
  writePages(firstPage: number, count: number, data: Uint8Array): void {
    this.checkRange(firstPage, count, data.length);
    let i = 0;
    while (i < count) {
      const page = firstPage + i;
      const end = Math.min(count, i + SEGMENT_PAGES - (page & SEGMENT_MASK));
      const seg = this.prepareWrite(page);
      for (let j = i + 1; j < end; j++) this.prepareWrite(firstPage + j);
      new Uint8Array(seg.buffer, seg.byteOffset + (page & SEGMENT_MASK) * PAGE_BYTES, (end - i) * PAGE_BYTES).set(data.subarray(i * PAGE_BYTES, end * PAGE_BYTES));
      i = end;
    }
  }

  writePage(page: number, data: Uint8Array): void {
    assert(data.length === PAGE_BYTES, () => `page write of ${data.length} bytes, expected ${PAGE_BYTES}`);
    const seg = this.prepareWrite(page);
    new Uint8Array(seg.buffer, seg.byteOffset + (page & SEGMENT_MASK) * PAGE_BYTES, PAGE_BYTES).set(data);
  }

  private checkRange(firstPage: number, count: number, bufferBytes: number): void {
    assert(
      Number.isInteger(firstPage) && Number.isInteger(count) && firstPage >= 0 && count >= 0 && firstPage + count <= this.pageCount,
      () => `pages [${firstPage}, ${firstPage + count}) outside guest memory of ${this.pageCount} pages`,
    );
    assert(bufferBytes >= count * PAGE_BYTES, () => `buffer of ${bufferBytes} bytes for ${count} pages`);
  }

  /** Returns the pages written since the last call, ascending, and clears their dirty bits. */
  fetchAndClearDirty(): Uint32Array {
    const pages = new Uint32Array(this.dirtyCount());
    let n = 0;
    for (let i = 0; i < this.dirty.length; i++) {
      if (this.dirty[i] === 0) continue;
      // A vCPU on its own thread may have set more bits since the count: they wait for the next call.
      let w = Atomics.exchange(this.dirty, i, 0);
      while (w !== 0 && n < pages.length) {
        const low = w & -w;
        pages[n++] = i * 32 + (31 - Math.clz32(low));
        w ^= low;
      }
      if (w !== 0) Atomics.or(this.dirty, i, w);
    }
    return n === pages.length ? pages : pages.slice(0, n);
  }

  clearDirty(): void {
    this.dirty.fill(0);
  }

  /** Pages written since the dirty bitmap was last cleared (a popcount: no allocation). */
  dirtyCount(): number {
    let count = 0;
    for (const w of this.dirty) if (w !== 0) count += popcount(w);
    return count;
  }

  /**
   * xxh64 over the table of per-page hashes; only pages written since the last call are hashed
   * again, so a digest per unit costs in proportion to the unit's dirtying, not to memory size.
   */
  pagesDigest(): bigint {
    for (let i = 0; i < this.stale.length; i++) {
      if (this.stale[i] === 0) continue;
      let w = Atomics.exchange(this.stale, i, 0);
      while (w !== 0) {
        const low = w & -w;
        const page = i * 32 + (31 - Math.clz32(low));
        const bytes = this.pageBytesOrNull(page);
        this.pageHashes[page] = bytes === null ? ZERO_PAGE_HASH : xxh64(bytes);
        w ^= low;
      }
    }
    return xxh64(new Uint8Array(this.pageHashes.buffer, this.pageHashes.byteOffset, this.pageHashes.byteLength));
  }

  /**
   * xxh64 of every page, in page order (a copy of the table the digest keeps, pages written since
   * the last digest hashed again first): what a source compares its pages with to send only those
   * that differ from this memory's (a base image).
   */
  pageHashTable(): BigUint64Array {
    this.pagesDigest();
    return this.pageHashes.slice();
  }

  /** Post-copy: marks every page missing (the memory is fresh: nothing was written yet). */
  markAllMissing(): void {
    this.missing = new Uint32Array(new SharedArrayBuffer(4 * this.dirty.length)).fill(0xffffffff);
    const tail = this.pageCount % 32;
    if (tail !== 0) this.missing[this.missing.length - 1] = (1 << tail) - 1;
    Atomics.store(this.missingCounter, 0, this.pageCount);
    this.receivedHashes = new BigUint64Array(this.pageCount);
  }

  get missingCount(): number {
    return Atomics.load(this.missingCounter, 0);
  }

  isMissing(page: number): boolean {
    return this.missing !== null && (Atomics.load(this.missing, page >>> 5) & (1 << (page & 31))) !== 0;
  }

  /**
   * Post-copy: stores a received page if it is still missing (a page already present was received
   * before, or fetched on demand and maybe written since: the copy in hand is older) and returns
   * whether it was stored.
   */
  receivePage(page: number, data: Uint8Array | null): boolean {
    if (!this.isMissing(page)) return false;
    // Written before the bit is cleared: a vCPU thread that finds the page present finds its contents.
    if (data !== null) {
      const seg = this.markWrite(page);
      new Uint8Array(seg.buffer, seg.byteOffset + (page & SEGMENT_MASK) * PAGE_BYTES, PAGE_BYTES).set(data);
    }
    Atomics.and(this.missing!, page >>> 5, ~(1 << (page & 31)));
    this.receivedHashes![page] = data === null ? ZERO_PAGE_HASH : xxh64(data);
    if (Atomics.sub(this.missingCounter, 0, 1) === 1) this.missing = null;
    return true;
  }

  /** Post-copy: xxh64 over the hashes of the pages as received (same construction as pagesDigest). */
  receivedPagesDigest(): bigint {
    const hashes = this.receivedHashes ?? this.pageHashes;
    return xxh64(new Uint8Array(hashes.buffer, hashes.byteOffset, hashes.byteLength));
  }

  /**
   * Frees every segment (to the pool, if it has one and room) and the per-page tables: a discarded
   * guest that something still refers to (a finished job) holds a few bytes, not megabytes. The
   * memory must not be used afterwards.
   */
  free(): void {
    if (this.pool !== null) for (const segment of this.segments) if (segment !== undefined) this.pool.give(segment);
    this.segments.fill(undefined);
    this.preparedPages = this.pageCount;
    this.written = new Uint32Array(0);
    this.dirty = new Uint32Array(0);
    this.stale = new Uint32Array(0);
    this.pageHashes = new BigUint64Array(0);
    this.missing = null;
    this.receivedHashes = null;
    this.cow?.release();
    this.cow = null;
  }
}

/** What a vCPU thread is handed of a guest's memory (GuestMemory.shared). */
export interface GuestMemoryShared {
  memoryBytes: number;
  segments: SharedArrayBuffer[];
  dirty: SharedArrayBuffer;
  stale: SharedArrayBuffer;
  written: SharedArrayBuffer;
  missing: SharedArrayBuffer | null;
  missingCounter: SharedArrayBuffer;
}

/** A segment of `pages` pages in shared memory, zero (its memory is committed as it is first written). */
function newSegment(pages: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer(pages * PAGE_BYTES));
}

function popcount(w: number): number {
  w = w - ((w >>> 1) & 0x55555555);
  w = (w & 0x33333333) + ((w >>> 2) & 0x33333333);
  return (Math.imul((w + (w >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24) & 0xff;
}
