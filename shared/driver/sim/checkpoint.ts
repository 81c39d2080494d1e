// The `sim` driver's live checkpoint: the memory image as of one instant, cut into chunks while
// the guest keeps running. Copy-on-write keeps the instant: the first write to a page the
// checkpoint has not reached yet preserves the old contents first (memory.ts, CopyOnWrite).
// Starting one costs a copy of the vCPU/device state and a bitmap: no pause of note.
//
// Chunk encoding, little-endian:
//   0   4  magic 'CRTC'
//   4   1  version (1)
//   5   1  kind: 0 memory pages, 1 machine state (the final chunk), 3 memory pages over a base
//   6   2  memory chunk: its bitmap's check (bitmapCheck; 0 from sources that predate it); else 0
//   8   4  chunk index
//   memory chunk:                          state chunk:
//   12  4  first page                      12  4  guest page count
//   16  4  page count                      16  4  state length
//   20  4  pages present (not zero)        20  4  0
//   24  .. presence bitmap, 1 bit a page   24  .. machine state
//      .. the present pages, in order
//   end-8  8  xxh64 of every byte before it
// Zero pages are elided: a checkpoint of mostly free memory is small before compression. Over a
// base image the target holds (kind 3, same layout), a page left out of the bitmap is instead the
// same as the base's (by xxh64), and a page sent may be zero: the target's memory is not fresh. The
// bitmap's check, apart from the trailer's, catches a bitmap changed and the chunk resealed (its
// pages would land on other pages, found only by the digests at the commit); both fit where
// targets that predate the check look at nothing, so either side may predate it.

import { AbortedError, CorruptDataError, InvalidStateError, UnitOrderError } from '../../errors.js';
import { xxh64 } from '../../hash.js';
import type { CheckpointChunk } from '../types.js';
import { PAGE_BYTES } from '../types.js';
import { CopyOnWrite, ZERO_PAGE, ZERO_PAGE_HASH } from './memory.js';
import { MachineState, type SimMachine } from './machine.js';

export const CHUNK_MAGIC = 0x43545243; // 'CRTC' little-endian
export const CHUNK_VERSION = 1;
export const CHUNK_HEADER_BYTES = 24;
export const CHUNK_TRAILER_BYTES = 8;
export const CHUNK_PAGES_DEFAULT = 256; // 1 MiB of guest memory per chunk
export const CHUNK_PAGES_MAX = 4096; // 16 MiB
/** Default bound of the copy-on-write pool (pages preserved, not yet sent). */
export const COW_BYTES_MAX_DEFAULT = 64 * 1024 * 1024;
const KIND_PAGES = 0;
const KIND_STATE = 1;
const KIND_BASED_PAGES = 3;

/** A memory chunk's check of its presence bitmap: 1 to 65535 (0 stands for none). */
export function bitmapCheck(bitmap: Uint8Array): number {
  return Number(xxh64(bitmap) % 65535n) + 1;
}

/** Writes the trailer of a chunk: xxh64 of every byte before it. Returns `out`. */
export function sealChunk(out: Uint8Array): Uint8Array {
  const end = out.length - CHUNK_TRAILER_BYTES;
  new DataView(out.buffer, out.byteOffset).setBigUint64(end, xxh64(out.subarray(0, end)), true);
  return out;
}

/** The final chunk of a checkpoint or a delta: the machine state of its instant (kind 1). */
export function stateChunk(index: number, pageCount: number, state: Uint8Array): Uint8Array {
  const out = new Uint8Array(CHUNK_HEADER_BYTES + state.length + CHUNK_TRAILER_BYTES);
  const view = new DataView(out.buffer);
  view.setUint32(0, CHUNK_MAGIC, true);
  view.setUint8(4, CHUNK_VERSION);
  view.setUint8(5, 1);
  view.setUint32(8, index, true);
  view.setUint32(12, pageCount, true);
  view.setUint32(16, state.length, true);
  out.set(state, CHUNK_HEADER_BYTES);
  return sealChunk(out);
}

/**
 * Checks what every chunk of a checkpoint or a delta must be before its kind is looked at: the
 * next index, not after the final chunk, long enough, its checksum, magic, version and the index
 * it carries. `what` names the chunk in errors. Returns a view of it and where its trailer starts.
 */
export function checkChunkFrame(chunk: CheckpointChunk, expectedIndex: number, done: boolean, what: string, finalName: string): { view: DataView; end: number } {
  const bytes = chunk.bytes;
  if (done) throw new UnitOrderError(`${what} arrived after ${finalName}`, 'duplicate', expectedIndex, chunk.index);
  if (chunk.index !== expectedIndex) {
    const kind = chunk.index < expectedIndex ? 'duplicate' : 'gap';
    throw new UnitOrderError(`${what} out of order: expected chunk ${expectedIndex} (${kind})`, kind, expectedIndex, chunk.index);
  }
  if (bytes.length < CHUNK_HEADER_BYTES + CHUNK_TRAILER_BYTES) throw new CorruptDataError(`${what} truncated: ${bytes.length} bytes`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = bytes.length - CHUNK_TRAILER_BYTES;
  const stored = view.getBigUint64(end, true);
  const actual = xxh64(bytes.subarray(0, end));
  if (stored !== actual) throw new CorruptDataError(`${what}: checksum mismatch (stored ${stored.toString(16)}, computed ${actual.toString(16)}): corrupt or truncated`);
  const magic = view.getUint32(0, true);
  const version = view.getUint8(4);
  if (magic !== CHUNK_MAGIC || version !== CHUNK_VERSION) {
    throw new CorruptDataError(`${what}: magic 0x${magic.toString(16)} version ${version}, expected 0x${CHUNK_MAGIC.toString(16)} version ${CHUNK_VERSION}`);
  }
  const index = view.getUint32(8, true);
  if (index !== chunk.index) throw new CorruptDataError(`${what} carries index ${index} inside`);
  return { view, end };
}

/** A live checkpoint begun but not yet streamed: the instant's machine state, and the copy-on-write pool keeping its memory. */
export interface CheckpointInstant {
  readonly state: Uint8Array;
  readonly cow: CopyOnWrite;
  /** Set when the checkpoint was ended: its stream must not go on with live memory. */
  ended: boolean;
}

/**
 * Begins a live checkpoint of `machine` as of now: copies the machine state and installs the
 * copy-on-write pool. Costs a few hundred bytes and a bitmap: the guest is not paused.
 */
export function beginCheckpoint(machine: SimMachine, cowBytesMax: number): CheckpointInstant {
  const memory = machine.memory;
  if (memory.cow !== null) throw new InvalidStateError('a live checkpoint of this guest is already in progress', { reason: 'GUEST_BUSY' });
  const cow = new CopyOnWrite(memory.pageCount, cowBytesMax);
  memory.cow = cow;
  return { state: machine.state.serialize(), cow, ended: false };
}

/** Ends a checkpoint or a delta early (or again): releases its pool, so the guest never stalls on it. */
export function endCheckpoint(machine: SimMachine, instant: Pick<CheckpointInstant, 'cow' | 'ended'>): void {
  instant.ended = true;
  instant.cow.release();
  if (machine.memory.cow === instant.cow) machine.memory.cow = null;
}

/**
 * The chunks of a begun checkpoint, made one at a time as the consumer pulls them. The
 * checkpoint ends (its pool released) when the stream ends or the consumer stops early. With
 * `reuseBuffer`, every chunk is written into one buffer of the largest chunk's size: a chunk's
 * bytes are valid until the next one is pulled. With `base` (xxh64 of each page of an image the
 * target holds), memory chunks are of kind 3: only the pages that differ from the base go.
 */
export async function* checkpointChunks(machine: SimMachine, instant: CheckpointInstant, chunkPages: number, reuseBuffer = false, base: BigUint64Array | null = null): AsyncGenerator<CheckpointChunk> {
  const memory = machine.memory;
  const { cow, state } = instant;
  const chunkBytesMax = CHUNK_HEADER_BYTES + Math.ceil(chunkPages / 8) + chunkPages * PAGE_BYTES + CHUNK_TRAILER_BYTES;
  // The pages are copied here as they are taken (a vCPU on its own thread may write them right after).
  const scratch = new Uint8Array(chunkBytesMax);
  try {
    let index = 0;
    for (let first = 0; first < memory.pageCount; first += chunkPages) {
      // Between two chunks the guest ran; if meanwhile the checkpoint was ended (its recording
      // stopped), the pages not yet sent are no longer as of the instant.
      if (instant.ended) throw new AbortedError(`checkpoint ended after ${index} chunks: its recording was stopped`);
      const count = Math.min(chunkPages, memory.pageCount - first);
      const bitmapBytes = Math.ceil(count / 8);
      scratch.fill(0, 0, CHUNK_HEADER_BYTES + bitmapBytes);
      let at = CHUNK_HEADER_BYTES + bitmapBytes;
      let skipped = 0;
      let saved = 0;
      for (let i = 0; i < count; i++) {
        const page = first + i;
        const nonZero = cow.copyOut(page, memory, scratch, at, true);
        if (base !== null) {
          // Over a base: a page goes only if it differs from the base's, a zero page too.
          const same = nonZero ? xxh64(scratch.subarray(at, at + PAGE_BYTES)) === base[page] : base[page] === ZERO_PAGE_HASH;
          if (same) {
            skipped++;
            if (nonZero) saved += PAGE_BYTES;
            continue;
          }
          if (!nonZero) scratch.fill(0, at, at + PAGE_BYTES);
        } else if (!nonZero) continue;
        scratch[CHUNK_HEADER_BYTES + (i >>> 3)] |= 1 << (i & 7);
        at += PAGE_BYTES;
      }
      const present = (at - CHUNK_HEADER_BYTES - bitmapBytes) / PAGE_BYTES;
      // Sized exactly: a chunk holds no slack (nor stale heap bytes) however many pages are zero.
      const chunkBytes = at + CHUNK_TRAILER_BYTES;
      const out = reuseBuffer ? scratch.subarray(0, chunkBytes) : scratch.slice(0, chunkBytes);
      const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
      view.setUint32(0, CHUNK_MAGIC, true);
      view.setUint8(4, CHUNK_VERSION);
      view.setUint8(5, base === null ? KIND_PAGES : KIND_BASED_PAGES);
      view.setUint16(6, bitmapCheck(out.subarray(CHUNK_HEADER_BYTES, CHUNK_HEADER_BYTES + bitmapBytes)), true);
      view.setUint32(8, index, true);
      view.setUint32(12, first, true);
      view.setUint32(16, count, true);
      view.setUint32(20, present, true);
      yield { index: index++, final: false, bytes: sealChunk(out), memoryBytesCovered: count * PAGE_BYTES, pagesSkipped: skipped, bytesSaved: saved };
    }
    yield { index, final: true, bytes: stateChunk(index, memory.pageCount, state), memoryBytesCovered: 0 };
  } finally {
    endCheckpoint(machine, instant);
  }
}

/**
 * Restores a checkpoint into a fresh machine, chunk by chunk, in order. Each chunk is validated
 * completely before any page of it is written, so a rejected chunk changes nothing and the same
 * (or a repaired) chunk can be offered again. Over a base image (`based`: the machine's memory
 * holds it), chunks of kind 3 leave the base's pages where they are not sent, and a full chunk
 * (kind 0) writes its elided zero pages, as the memory is not fresh.
 */
export class CheckpointRestorer {
  private nextIndex = 0;
  private nextPage = 0;

  get chunksApplied(): number {
    return this.nextIndex;
  }
  done = false;

  constructor(
    private readonly machine: SimMachine,
    private readonly based = false,
  ) {}

  apply(chunk: CheckpointChunk): void {
    const bytes = chunk.bytes;
    const { view, end } = checkChunkFrame(chunk, this.nextIndex, this.done, `checkpoint chunk ${chunk.index}`, 'the final chunk');
    const index = chunk.index;
    const kind = view.getUint8(5);
    const memory = this.machine.memory;
    if (kind === KIND_STATE) {
      if (!chunk.final) throw new CorruptDataError(`checkpoint chunk ${index} holds the machine state but is not marked final`);
      const pageCount = view.getUint32(12, true);
      const stateBytes = view.getUint32(16, true);
      if (pageCount !== memory.pageCount) throw new CorruptDataError(`checkpoint is of a guest of ${pageCount} pages, the replica has ${memory.pageCount}`);
      if (this.nextPage !== memory.pageCount) {
        throw new CorruptDataError(`checkpoint ended after ${this.nextPage} of ${memory.pageCount} pages`);
      }
      if (stateBytes !== MachineState.BYTES || CHUNK_HEADER_BYTES + stateBytes !== end) {
        throw new CorruptDataError(`checkpoint machine state of ${stateBytes} bytes in a chunk of ${bytes.length}, expected ${MachineState.BYTES}`);
      }
      this.machine.state = MachineState.deserialize(bytes.subarray(CHUNK_HEADER_BYTES, end));
      memory.clearDirty();
      this.done = true;
      this.nextIndex++;
      return;
    }
    const kindOk = kind === KIND_PAGES || (kind === KIND_BASED_PAGES && this.based);
    if (!kindOk || chunk.final) throw new CorruptDataError(`checkpoint chunk ${index} has kind ${kind}${chunk.final ? ' and is marked final' : ''}, expected memory pages${this.based ? '' : ' (this replica holds no base image)'}`);
    const first = view.getUint32(12, true);
    const count = view.getUint32(16, true);
    const present = view.getUint32(20, true);
    if (first !== this.nextPage) throw new CorruptDataError(`checkpoint chunk ${index} starts at page ${first}, expected ${this.nextPage}`);
    if (count === 0 || count > CHUNK_PAGES_MAX || first + count > memory.pageCount) {
      throw new CorruptDataError(`checkpoint chunk ${index} covers pages [${first}, ${first + count}) of a ${memory.pageCount}-page guest (at most ${CHUNK_PAGES_MAX} a chunk)`);
    }
    const bitmapEnd = CHUNK_HEADER_BYTES + Math.ceil(count / 8);
    const check = view.getUint16(6, true);
    if (bitmapEnd > end || (check !== 0 && check !== bitmapCheck(bytes.subarray(CHUNK_HEADER_BYTES, bitmapEnd)))) {
      throw new CorruptDataError(`checkpoint chunk ${index}: its presence bitmap of ${count} pages fails its check (${check}): pages would land on the wrong pages`);
    }
    // Bits past the last page are never set.
    if (count % 8 !== 0 && bytes[bitmapEnd - 1] >>> count % 8 !== 0) throw new CorruptDataError(`checkpoint chunk ${index}: bits set past its ${count} pages`);
    let counted = 0;
    for (let i = 0; i < count; i++) if (bytes[CHUNK_HEADER_BYTES + (i >>> 3)] & (1 << (i & 7))) counted++;
    if (counted !== present || bitmapEnd + present * PAGE_BYTES !== end) {
      throw new CorruptDataError(`checkpoint chunk ${index}: ${present} pages announced, ${counted} in its bitmap, ${end - bitmapEnd} bytes of page data`);
    }
    // Valid: now write, a run of present pages at a time. In fresh memory elided zero pages need
    // no write; over a base they do (kind 0), or are the base's own (kind 3).
    const isPresent = (i: number) => (bytes[CHUNK_HEADER_BYTES + (i >>> 3)] & (1 << (i & 7))) !== 0;
    const zeroElided = this.based && kind === KIND_PAGES;
    let at = bitmapEnd;
    for (let i = 0; i < count; ) {
      if (!isPresent(i)) {
        if (zeroElided && memory.pageBytesOrNull(first + i) !== null) memory.writePage(first + i, ZERO_PAGE);
        i++;
        continue;
      }
      let end = i + 1;
      while (end < count && isPresent(end)) end++;
      const runBytes = (end - i) * PAGE_BYTES;
      memory.writePages(first + i, end - i, bytes.subarray(at, at + runBytes));
      at += runBytes;
      i = end;
    }
    this.nextPage = first + count;
    this.nextIndex++;
  }
}
