// The `sim` driver's page batches, for the pre-copy and post-copy baselines: any set of pages,
// each with its number, zero pages flagged rather than sent. Little-endian.
//
//   0   4  magic 'CRTP'
//   4   1  version (1)
//   5   1  reserved, 0
//   6   2  the bitmap's check (checkpoint.ts bitmapCheck; 0 from sources that predate it)
//   8   4  pages in the batch (n)
//   12  4  pages present (not zero)
//   16  4n page numbers
//   ..  ceil(n/8) presence bitmap
//   ..  the present pages, in batch order
//   end-8  8  xxh64 of every byte before it

import { CorruptDataError, LimitExceededError } from '../../errors.js';
import { xxh64 } from '../../hash.js';
import { PAGE_BYTES, type PageAccess } from '../types.js';
import { bitmapCheck } from './checkpoint.js';
import { type GuestMemory, isZeroPage } from './memory.js';

const MAGIC = 0x50545243; // 'CRTP' little-endian
const VERSION = 1;
const HEADER_BYTES = 16;
const TRAILER_BYTES = 8;
/** Largest batch: 16 MiB of pages, the protocol's payload limit. */
export const PAGE_BATCH_PAGES_MAX = 4000;

/** Encodes the current contents of `pages` of `memory`. */
export function encodePages(memory: GuestMemory, pages: Uint32Array): Uint8Array {
  const n = pages.length;
  if (n > PAGE_BATCH_PAGES_MAX) throw new LimitExceededError(`page batch of ${n} pages, over the limit of ${PAGE_BATCH_PAGES_MAX}`);
  const bitmapBytes = Math.ceil(n / 8);
  const views: Uint8Array[] = [];
  const bitmap = new Uint8Array(bitmapBytes);
  for (let i = 0; i < n; i++) {
    const page = pages[i];
    if (page >= memory.pageCount) throw new CorruptDataError(`page ${page} is outside a guest of ${memory.pageCount} pages`);
    const bytes = memory.pageBytesOrNull(page);
    if (bytes === null || isZeroPage(bytes)) continue;
    bitmap[i >>> 3] |= 1 << (i & 7);
    views.push(bytes);
  }
  const out = new Uint8Array(HEADER_BYTES + 4 * n + bitmapBytes + views.length * PAGE_BYTES + TRAILER_BYTES);
  const view = new DataView(out.buffer);
  view.setUint32(0, MAGIC, true);
  view.setUint8(4, VERSION);
  view.setUint32(8, n, true);
  view.setUint16(6, bitmapCheck(bitmap), true);
  view.setUint32(12, views.length, true);
  for (let i = 0; i < n; i++) view.setUint32(HEADER_BYTES + 4 * i, pages[i], true);
  let at = HEADER_BYTES + 4 * n;
  out.set(bitmap, at);
  at += bitmapBytes;
  for (const bytes of views) {
    out.set(bytes, at);
    at += PAGE_BYTES;
  }
  view.setBigUint64(at, xxh64(out.subarray(0, at)), true);
  return out;
}

export interface DecodedPages {
  pages: Uint32Array;
  /** Page data, or null for a zero page, in batch order. */
  data: Array<Uint8Array | null>;
}

/** Decodes and validates a batch completely (nothing is written here). */
export function decodePages(bytes: Uint8Array, pageCount: number): DecodedPages {
  if (bytes.length < HEADER_BYTES + TRAILER_BYTES) throw new CorruptDataError(`page batch truncated: ${bytes.length} bytes`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = bytes.length - TRAILER_BYTES;
  const stored = view.getBigUint64(end, true);
  const actual = xxh64(bytes.subarray(0, end));
  if (stored !== actual) throw new CorruptDataError(`page batch: checksum mismatch (stored ${stored.toString(16)}, computed ${actual.toString(16)})`);
  if (view.getUint32(0, true) !== MAGIC || view.getUint8(4) !== VERSION) throw new CorruptDataError('not a page batch of version 1');
  const n = view.getUint32(8, true);
  const present = view.getUint32(12, true);
  if (n > PAGE_BATCH_PAGES_MAX) throw new CorruptDataError(`page batch of ${n} pages, over the limit of ${PAGE_BATCH_PAGES_MAX}`);
  const bitmapAt = HEADER_BYTES + 4 * n;
  const dataAt = bitmapAt + Math.ceil(n / 8);
  if (dataAt + present * PAGE_BYTES !== end) throw new CorruptDataError(`page batch: ${n} pages, ${present} present, does not fit ${bytes.length} bytes`);
  const check = view.getUint16(6, true);
  if (check !== 0 && check !== bitmapCheck(bytes.subarray(bitmapAt, dataAt))) throw new CorruptDataError(`page batch of ${n} pages: its presence bitmap fails its check (${check})`);
  const pages = new Uint32Array(n);
  const data: Array<Uint8Array | null> = [];
  let at = dataAt;
  let counted = 0;
  for (let i = 0; i < n; i++) {
    pages[i] = view.getUint32(HEADER_BYTES + 4 * i, true);
    if (pages[i] >= pageCount) throw new CorruptDataError(`page batch names page ${pages[i]} of a ${pageCount}-page guest`);
    if (bytes[bitmapAt + (i >>> 3)] & (1 << (i & 7))) {
      counted++;
      if (counted > present) throw new CorruptDataError(`page batch: more pages flagged present than the ${present} announced`);
      data.push(bytes.subarray(at, at + PAGE_BYTES));
      at += PAGE_BYTES;
    } else data.push(null);
  }
  if (counted !== present) throw new CorruptDataError(`page batch: ${counted} pages flagged present, ${present} announced`);
  return { pages, data };
}

/**
 * Page-level access to `memory` (the page-access capability of a guest or a replica). `check`
 * runs before each read: a guest refuses once discarded.
 */
export function pageAccessOf(memory: GuestMemory, check: () => void = () => {}): PageAccess {
  return {
    pageCount: memory.pageCount,
    startDirtyTracking: () => memory.clearDirty(),
    stopDirtyTracking: () => {},
    fetchAndClearDirty: () => {
      check();
      return memory.fetchAndClearDirty();
    },
    readPages: (first, count, out) => {
      check();
      memory.readPages(first, count, out);
    },
    encodePages: (pages) => {
      check();
      return encodePages(memory, pages);
    },
  };
}
