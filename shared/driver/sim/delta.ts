// The `sim` driver's delta checkpoints (capability `delta-checkpoint`, CR/TR's hybrid catch-up):
// the pages written since the previous checkpoint instant, as of a new instant, and the machine
// state then. Copy-on-write keeps the instant while the guest runs on, as for the live checkpoint,
// but only over the delta's pages: a write to any other page needs no copy.
//
// Chunk encoding, little-endian (the live checkpoint's frame, checkpoint.ts, with a third kind):
//   0   4  magic 'CRTC'         8   4  chunk index (0, 1, ... within the delta)
//   4   1  version (1)          12  4  pages in the chunk (n)
//   5   1  kind: 2 delta pages  16  4  generation
//   6   2  reserved, 0          20  4  0
//   24  4n page numbers, ascending within the delta
//   ..  4096n the pages' contents (zero pages too: a page dirtied to zero must be written)
//   end-8  8  xxh64 of every byte before it
// The final chunk is the live checkpoint's machine-state chunk (kind 1), the state as of the
// delta's instant; the replica checks that it is at the unit the delta announced.

import { CorruptDataError, InvalidStateError } from '../../errors.js';
import type { CheckpointChunk } from '../types.js';
import { PAGE_BYTES } from '../types.js';
import {
  CHUNK_HEADER_BYTES as HEADER_BYTES,
  CHUNK_MAGIC,
  CHUNK_PAGES_MAX,
  CHUNK_TRAILER_BYTES as TRAILER_BYTES,
  CHUNK_VERSION,
  checkChunkFrame,
  endCheckpoint,
  sealChunk,
  stateChunk,
} from './checkpoint.js';
import { MachineState, type SimMachine } from './machine.js';
import { CopyOnWrite } from './memory.js';

const KIND_STATE = 1;
const KIND_DELTA = 2;

/** A delta begun: its instant's machine state, its pages, and the copy-on-write pool keeping them. */
export interface DeltaInstant {
  readonly generation: number;
  readonly firstSequence: number;
  readonly pages: Uint32Array;
  readonly state: Uint8Array;
  readonly cow: CopyOnWrite;
  ended: boolean;
  taken: boolean;
}

/**
 * Begins a delta of `machine` as of now: the pages dirtied since the dirty bitmap was last cleared
 * (the previous instant), which it clears. No live checkpoint may be in progress.
 */
export function beginDelta(machine: SimMachine, cowBytesMax: number, generation: number): DeltaInstant {
  const memory = machine.memory;
  if (memory.cow !== null) throw new InvalidStateError('a checkpoint of this guest is still streaming: a delta waits for it', { reason: 'GUEST_BUSY' });
  const pages = memory.fetchAndClearDirty();
  const cow = new CopyOnWrite(memory.pageCount, cowBytesMax, pages);
  memory.cow = cow;
  return { generation, firstSequence: machine.state.unitSequence, pages, state: machine.state.serialize(), cow, ended: false, taken: false };
}


/** The delta's chunks, made as the consumer pulls them; the delta ends when the stream does. */
export async function* deltaChunks(machine: SimMachine, instant: DeltaInstant, chunkPages: number, reuseBuffer = false): AsyncGenerator<CheckpointChunk> {
  const memory = machine.memory;
  const { cow, pages } = instant;
  const reused = reuseBuffer ? new Uint8Array(HEADER_BYTES + chunkPages * (4 + PAGE_BYTES) + TRAILER_BYTES) : null;
  try {
    let index = 0;
    for (let first = 0; first < pages.length; first += chunkPages) {
      if (instant.ended) throw new InvalidStateError(`delta ${instant.generation} ended after ${index} chunks: its recording was stopped`);
      const n = Math.min(chunkPages, pages.length - first);
      const bytes = HEADER_BYTES + n * (4 + PAGE_BYTES) + TRAILER_BYTES;
      const out = reused === null ? new Uint8Array(bytes) : reused.subarray(0, bytes);
      const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
      header(view, KIND_DELTA, index, n, instant.generation);
      let at = HEADER_BYTES + 4 * n;
      for (let i = 0; i < n; i++) {
        const page = pages[first + i];
        view.setUint32(HEADER_BYTES + 4 * i, page, true);
        cow.copyOut(page, memory, out, at, false);
        at += PAGE_BYTES;
      }
      yield { index: index++, final: false, bytes: sealChunk(out), memoryBytesCovered: n * PAGE_BYTES };
    }
    yield { index, final: true, bytes: stateChunk(index, memory.pageCount, instant.state), memoryBytesCovered: 0 };
  } finally {
    endCheckpoint(machine, instant);
  }
}

function header(view: DataView, kind: number, index: number, word12: number, word16: number): void {
  view.setUint32(0, CHUNK_MAGIC, true);
  view.setUint8(4, CHUNK_VERSION);
  view.setUint8(5, kind);
  view.setUint16(6, 0, true);
  view.setUint32(8, index, true);
  view.setUint32(12, word12, true);
  view.setUint32(16, word16, true);
  view.setUint32(20, 0, true);
}

/**
 * Applies one delta to a replica, chunk by chunk, in order. Each chunk is validated completely
 * before any page of it is written; the final chunk's state must be at the unit the delta
 * announced. The replica must not replay while a delta is applied (its pages would mix instants).
 */
export class DeltaRestorer {
  private nextIndex = 0;
  done = false;

  constructor(
    private readonly machine: SimMachine,
    readonly generation: number,
    readonly firstSequence: number,
  ) {}

  apply(chunk: CheckpointChunk): void {
    const what = `delta ${this.generation} chunk ${chunk.index}`;
    const bytes = chunk.bytes;
    const { view, end } = checkChunkFrame(chunk, this.nextIndex, this.done, what, "the delta's final chunk");
    const kind = view.getUint8(5);
    if (kind === KIND_STATE) return this.applyState(chunk, view, end, what);
    if (kind !== KIND_DELTA || chunk.final) throw new CorruptDataError(`${what} has kind ${kind}${chunk.final ? ' and is marked final' : ''}, expected delta pages`);
    const n = view.getUint32(12, true);
    const generation = view.getUint32(16, true);
    if (generation !== this.generation) throw new CorruptDataError(`${what} belongs to delta ${generation}`);
    const pageCount = this.machine.memory.pageCount;
    if (n === 0 || n > CHUNK_PAGES_MAX || HEADER_BYTES + n * (4 + PAGE_BYTES) !== end) throw new CorruptDataError(`${what}: ${n} pages announced in ${bytes.length} bytes`);
    for (let i = 0; i < n; i++) {
      const page = view.getUint32(HEADER_BYTES + 4 * i, true);
      if (page >= pageCount) throw new CorruptDataError(`${what}: page ${page} outside a ${pageCount}-page guest`);
    }
    // Valid: now write.
    const memory = this.machine.memory;
    let at = HEADER_BYTES + 4 * n;
    for (let i = 0; i < n; i++) {
      memory.writePage(view.getUint32(HEADER_BYTES + 4 * i, true), bytes.subarray(at, at + PAGE_BYTES));
      at += PAGE_BYTES;
    }
    this.nextIndex++;
  }

  private applyState(chunk: CheckpointChunk, view: DataView, end: number, what: string): void {
    if (!chunk.final) throw new CorruptDataError(`${what} holds the machine state but is not marked final`);
    const pages = view.getUint32(12, true);
    const stateBytes = view.getUint32(16, true);
    if (pages !== this.machine.memory.pageCount) throw new CorruptDataError(`${what} is of a guest of ${pages} pages, the replica has ${this.machine.memory.pageCount}`);
    if (stateBytes !== MachineState.BYTES || HEADER_BYTES + stateBytes !== end) throw new CorruptDataError(`${what}: machine state of ${stateBytes} bytes, expected ${MachineState.BYTES}`);
    const state = MachineState.deserialize(new Uint8Array(view.buffer, view.byteOffset + HEADER_BYTES, stateBytes));
    if (state.unitSequence !== this.firstSequence) {
      throw new CorruptDataError(`${what}: its machine state is at unit ${state.unitSequence}, the delta was announced at unit ${this.firstSequence}`);
    }
    this.machine.state = state;
    this.done = true;
    this.nextIndex++;
  }
}
