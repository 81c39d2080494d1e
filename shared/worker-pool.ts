// A small, bounded pool of worker threads that run one kind of CPU-bound task (lz4 compression of
// payloads, see pack-pool.ts) off the agent's event loop. Requests and results travel by
// postMessage; their large buffers are transferred, never copied.
//
// Bounded: each worker holds at most `tasksPerWorkerMax` tasks (the one it runs and those queued
// behind it). When every worker is full, `tryRun` returns null and the caller does the work itself:
// a busy pool slows nobody down and nothing queues without a limit.
//
// Errors: an error thrown by a task rejects that task's promise with an error of the same class
// (for the classes in TASK_ERROR_CLASSES) and the same message; a worker that dies rejects every
// task it held with UnavailableError and leaves the pool; `close` rejects what is left with
// AbortedError and ends the workers.

import { isMainThread, parentPort, type TransferListItem, Worker } from 'node:worker_threads';
import { assert } from './assert.js';
import { AbortedError, CorruptDataError, InvalidArgumentError, InvalidStateError, LimitExceededError, UnavailableError } from './errors.js';

/** Workers a pool may have. */
export const POOL_WORKERS_MAX = 8;

export interface WorkerPoolOptions {
  /** The worker's ES module; it calls `serveTasks` with its handler. */
  script: URL;
  workers: number;
  /** Tasks a worker may hold at once, running and queued. */
  tasksPerWorkerMax: number;
  /** What the pool does, in errors ("lz4 compression"). */
  name: string;
}

/** What a worker sends back for task `id`. */
type Reply<Res> = { id: number; result: Res } | { id: number; error: { name: string; message: string } };

interface Pending<Res> {
  resolve(result: Res): void;
  reject(error: Error): void;
}

interface Slot<Res> {
  worker: Worker;
  pending: Map<number, Pending<Res>>;
}

/** Error classes a task's error keeps across the thread boundary; any other becomes an Error naming it. */
const TASK_ERROR_CLASSES: Record<string, new (message: string) => Error> = { CorruptDataError, InvalidArgumentError, InvalidStateError, LimitExceededError };

function taskError(error: { name: string; message: string }): Error {
  const errorClass = TASK_ERROR_CLASSES[error.name];
  return errorClass === undefined ? new Error(`${error.name}: ${error.message}`) : new errorClass(error.message);
}

export class WorkerPool<Req, Res> {
  private readonly slots: Array<Slot<Res>> = [];
  private nextId = 1;
  private closed = false;

  constructor(private readonly options: WorkerPoolOptions) {
    assert(Number.isInteger(options.workers) && options.workers >= 1 && options.workers <= POOL_WORKERS_MAX, () => `${options.workers} workers: expected 1 to ${POOL_WORKERS_MAX}`);
    assert(Number.isInteger(options.tasksPerWorkerMax) && options.tasksPerWorkerMax >= 1, () => `tasksPerWorkerMax ${options.tasksPerWorkerMax}: expected at least 1`);
    for (let i = 0; i < options.workers; i++) this.slots.push(this.start());
  }

  /** Workers alive. */
  get workers(): number {
    return this.slots.length;
  }

  /** Tasks held by the workers (running and queued). */
  get pending(): number {
    let n = 0;
    for (const slot of this.slots) n += slot.pending.size;
    return n;
  }

  /** Tasks the pool can hold at once. */
  get capacity(): number {
    return this.slots.length * this.options.tasksPerWorkerMax;
  }

  /**
   * Hands `request` to the least busy worker, transferring `transfer` (which the caller must not
   * touch afterwards); null when every worker is full or the pool is closed.
   */
  tryRun(request: Req, transfer: TransferListItem[] = []): Promise<Res> | null {
    if (this.closed) return null;
    let best: Slot<Res> | null = null;
    for (const slot of this.slots) if (slot.pending.size < this.options.tasksPerWorkerMax && (best === null || slot.pending.size < best.pending.size)) best = slot;
    if (best === null) return null;
    const id = this.nextId++;
    const slot = best;
    return new Promise<Res>((resolve, reject) => {
      slot.pending.set(id, { resolve, reject });
      // A worker with tasks keeps the process alive until they are answered (see start).
      if (slot.pending.size === 1) slot.worker.ref();
      slot.worker.postMessage({ id, request }, transfer);
    });
  }

  /** Ends every worker; tasks not finished are rejected with AbortedError. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const slots = this.slots.splice(0);
    for (const slot of slots) this.failAll(slot, new AbortedError(`the ${this.options.name} pool was closed`));
    await Promise.all(slots.map((slot) => slot.worker.terminate()));
  }

  private start(): Slot<Res> {
    const worker = new Worker(this.options.script);
    const slot: Slot<Res> = { worker, pending: new Map() };
    worker.on('message', (reply: Reply<Res>) => {
      const task = slot.pending.get(reply.id);
      if (task === undefined) return;
      slot.pending.delete(reply.id);
      if (slot.pending.size === 0) worker.unref();
      if ('error' in reply) task.reject(taskError(reply.error));
      else task.resolve(reply.result);
    });
    const died = (why: string) => {
      const at = this.slots.indexOf(slot);
      if (at >= 0) this.slots.splice(at, 1);
      this.failAll(slot, new UnavailableError(`a ${this.options.name} worker ${why}; ${this.slots.length} left`));
    };
    worker.on('error', (error) => died(`failed: ${error.message}`));
    worker.on('exit', (code) => {
      if (!this.closed) died(`exited with code ${code}`);
    });
    // An idle pool must not keep a process alive that has nothing else to do.
    worker.unref();
    return slot;
  }

  private failAll(slot: Slot<Res>, error: Error): void {
    const tasks = [...slot.pending.values()];
    slot.pending.clear();
    for (const task of tasks) task.reject(error);
  }
}

/**
 * The worker's side: answers each task with `handle`'s result, transferring what it names, or
 * with the error it threw.
 */
export function serveTasks<Req, Res>(handle: (request: Req) => { result: Res; transfer: TransferListItem[] }): void {
  assert(!isMainThread && parentPort !== null, () => 'serveTasks runs in a worker thread');
  const port = parentPort;
  port.on('message', ({ id, request }: { id: number; request: Req }) => {
    let reply: { result: Res; transfer: TransferListItem[] };
    try {
      reply = handle(request);
    } catch (error) {
      const e = error instanceof Error ? error : new Error(String(error));
      port.postMessage({ id, error: { name: e.name, message: e.message } });
      return;
    }
    port.postMessage({ id, result: reply.result }, reply.transfer);
  });
}
