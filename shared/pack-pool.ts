// Payload messages packed in worker threads (lz4 block compression and the xxh64 of the raw bytes,
// pack-worker.ts), so that the source's event loop makes the next checkpoint chunk and writes to
// the stream meanwhile. The bytes are the ones packMessage makes on this thread: the wire format is
// the same.
//
// The raw bytes are copied once, on this thread, into a buffer that is transferred to the worker
// and back (a memcpy runs at 12-22 GB/s here, lz4 at under 1 GB/s); the packed message's buffer is
// transferred to this thread. When every worker is busy, the message is packed here instead.

import { availableParallelism } from 'node:os';
import { type PackedMessage, packMessage, type PackReply, type PackRequest, type PayloadBody } from './protocol.js';
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

/**
 * Compression workers an agent starts by default: one less than the cores (the event loop keeps
 * one), at least one, at most two (the target and other work share the machine).
 */
export function defaultCompressionWorkers(): number {
  return Math.max(1, Math.min(2, availableParallelism() - 1));
}

/** Transfer buffers are allocated in steps of this size, so that one serves chunks of nearby sizes. */
const RAW_BUFFER_STEP_BYTES = 64 * 1024;

/**
 * The workers start at the first message, so that an agent that never sends a checkpoint (a target)
 * never has them.
 */
export class PackPool implements PayloadPacker {
  private pool: WorkerPool<PackRequest, PackReply> | null = null;
  private closed = false;
  /** Raw buffers back from the workers, for the next messages; at most the pool's capacity. */
  private readonly spare: ArrayBuffer[] = [];

  constructor(readonly workers: number) {}

  async pack(body: PayloadBody, raw: Uint8Array, compress: boolean): Promise<PackedMessage> {
    if (this.closed) return packMessage(body, raw, compress);
    this.pool ??= new WorkerPool({ script: new URL('./pack-worker.js', import.meta.url), workers: this.workers, tasksPerWorkerMax: PACK_TASKS_PER_WORKER_MAX, name: 'lz4 compression' });
    const pool = this.pool;
    const buffer = this.rawBuffer(raw.length);
    new Uint8Array(buffer, 0, raw.length).set(raw);
    const task = pool.tryRun({ body, raw: buffer, rawLength: raw.length, compress }, [buffer]);
    if (task === null) {
      this.keep(buffer);
      return packMessage(body, raw, compress);
    }
    const reply = await task;
    this.keep(reply.raw);
    const { buffer: bytes, byteOffset, byteLength, raw: _, ...fields } = reply;
    return { ...fields, bytes: Buffer.from(bytes, byteOffset, byteLength) };
  }

  close(): Promise<void> {
    this.closed = true;
    this.spare.length = 0;
    return this.pool?.close() ?? Promise.resolve();
  }

  private rawBuffer(bytes: number): ArrayBuffer {
    const at = this.spare.findIndex((b) => b.byteLength >= bytes);
    if (at >= 0) return this.spare.splice(at, 1)[0];
    return new ArrayBuffer(Math.ceil(Math.max(1, bytes) / RAW_BUFFER_STEP_BYTES) * RAW_BUFFER_STEP_BYTES);
  }

  private keep(buffer: ArrayBuffer): void {
    if (this.spare.length < (this.pool?.capacity ?? 0)) this.spare.push(buffer);
  }
}
