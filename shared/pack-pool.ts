// Payload messages packed in worker threads (lz4 block compression and the xxh64 of the raw bytes,
// pack-worker.ts), so that the source's event loop makes the next checkpoint chunk and writes to
// the stream meanwhile. The bytes are the ones packMessage makes on this thread: the wire format is
// the same.
//
// The raw bytes are copied once, on this thread, into a slot shared with the workers (a memcpy runs
// at 12-22 GB/s here, lz4 at under 1 GB/s); the worker packs into the slot's other buffer, which
// the stream writes from and releases once it took its own copy. Slots are reused: no buffer is
// allocated, transferred or collected per message. That matters beyond the allocation itself:
// every 64 MB of new ArrayBuffers makes V8 run a full garbage collection, and with a buffer in and
// a buffer out per message those collections took more of the source's event loop than anything
// else (25 to 40% of it in the checkpoint phase, in CPU profiles of the dataplane benchmark).
// When every worker is busy, the message is packed on this thread instead.

import { availableParallelism } from 'node:os';
import { type PackedMessage, packedBytesMax, packMessage, type PackReply, type PackRequest, type PayloadBody } from './protocol.js';
import { WorkerPool } from './worker-pool.js';

/** Packs payload messages; `raw` may be reused as soon as `pack` returns (before its promise settles). */
export interface PayloadPacker {
  pack(body: PayloadBody, raw: Uint8Array, compress: boolean): Promise<PackedMessage>;
  close(): Promise<void>;
}

/** Packs on the calling thread: what an agent without compression workers does. */
export const inlinePacker: PayloadPacker = {
  pack: (body, raw, compress) => Promise.resolve(packMessage(body, raw, compress)),
  close: () => Promise.resolve(),
};

/** Tasks a worker holds at once: the one it compresses and the next ones, ready when it is done. */
export const PACK_TASKS_PER_WORKER_MAX = 4;

/** Released slots kept for reuse; more are left to the collector. */
const SPARE_SLOTS_MAX = 16;

/** Slot buffers are allocated in steps of this size, so that one serves payloads of nearby sizes. */
const SLOT_STEP_BYTES = 256 * 1024;

/**
 * Compression workers an agent starts by default: one less than the cores (the event loop keeps
 * one), at least one, at most two (the target and other work share the machine).
 */
export function defaultCompressionWorkers(): number {
  return Math.max(1, Math.min(2, availableParallelism() - 1));
}

/** The raw bytes of one message and the buffer it is packed into, shared with the workers. */
interface Slot {
  raw: SharedArrayBuffer;
  out: SharedArrayBuffer;
}

/**
 * The workers start at the first message, so that an agent that never sends a checkpoint (a target)
 * never has them.
 */
export class PackPool implements PayloadPacker {
  private pool: WorkerPool<PackRequest, PackReply> | null = null;
  private closed = false;
  private readonly spare: Slot[] = [];

  constructor(readonly workers: number) {}

  /** Slots kept for reuse (for tests: a message's slot comes back once it was released). */
  get spareSlots(): number {
    return this.spare.length;
  }

  async pack(body: PayloadBody, raw: Uint8Array, compress: boolean): Promise<PackedMessage> {
    if (this.closed) return packMessage(body, raw, compress);
    this.pool ??= new WorkerPool({ script: new URL('./pack-worker.js', import.meta.url), workers: this.workers, tasksPerWorkerMax: PACK_TASKS_PER_WORKER_MAX, name: 'lz4 compression' });
    // Every worker full: pack here, without copying the chunk into a slot first.
    if (this.pool.pending >= this.pool.capacity) return packMessage(body, raw, compress);
    const slot = this.slot(raw.length);
    new Uint8Array(slot.raw, 0, raw.length).set(raw);
    const task = this.pool.tryRun({ body, raw: slot.raw, rawLength: raw.length, out: slot.out, compress });
    if (task === null) {
      this.keep(slot);
      return packMessage(body, raw, compress);
    }
    let reply: PackReply;
    try {
      reply = await task;
    } catch (error) {
      this.keep(slot);
      throw error;
    }
    const { byteOffset, byteLength, ...fields } = reply;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.keep(slot);
    };
    return { ...fields, bytes: Buffer.from(slot.out, byteOffset, byteLength), release };
  }

  close(): Promise<void> {
    this.closed = true;
    this.spare.length = 0;
    return this.pool?.close() ?? Promise.resolve();
  }

  private slot(rawBytes: number): Slot {
    const at = this.spare.findIndex((s) => s.raw.byteLength >= rawBytes);
    if (at >= 0) return this.spare.splice(at, 1)[0];
    const rawCapacity = Math.ceil(Math.max(1, rawBytes) / SLOT_STEP_BYTES) * SLOT_STEP_BYTES;
    return { raw: new SharedArrayBuffer(rawCapacity), out: new SharedArrayBuffer(packedBytesMax(rawCapacity)) };
  }

  private keep(slot: Slot): void {
    if (!this.closed && this.spare.length < SPARE_SLOTS_MAX) this.spare.push(slot);
  }
}
