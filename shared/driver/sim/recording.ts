// A `sim` guest's recording: the log of sealed units, queued for the agent within its bounds, and
// the live checkpoint taken at its first unit boundary. The guest's runner stalls while the queue
// is full (waitForRoom), and the agent waits for the next unit (next).

import { AbortedError } from '../../errors.js';
import type { GuestEvent } from './unit-codec.js';
import type { RecordingStats, SealedUnit } from '../types.js';
import type { CheckpointInstant } from './checkpoint.js';
import type { DeltaInstant } from './delta.js';

export interface RecordingLimits {
  /** Sealed units waiting for the agent, at most this many bytes / units before the guest stalls. */
  logQueueBytesMax: number;
  logQueueUnitsMax: number;
}

/** Recordings of this process, numbered (a unit sealed on a vCPU thread names its recording). */
let recordingsBegun = 0;

export class Recording {
  readonly id = ++recordingsBegun;
  private readonly queue: SealedUnit[] = [];
  private queueBytes = 0;
  private unitsRecorded = 0;
  private logBytes = 0;
  /** The final unit was sealed (at suspend); nothing more will be recorded. */
  sealedFinal = false;
  /** The final unit was taken by the consumer. */
  private finished = false;
  private stopped = false;
  checkpointTaken = false;
  /** The last delta begun (rebase), if any; generations count from 1. */
  delta: DeltaInstant | null = null;
  /** Units dropped unsent because a delta superseded them. */
  unitsDropped = 0;
  private unitWaiters: Array<() => void> = [];
  private roomWaiters: Array<() => void> = [];

  constructor(
    readonly firstSequence: number,
    /** The live checkpoint's instant: the recording's first unit boundary. */
    readonly checkpoint: CheckpointInstant | null,
    private readonly limits: RecordingLimits,
    /** Units other than the final one left the queue (taken, dropped): how many, and their bytes. */
    private readonly left: (units: number, bytes: number) => void = () => {},
  ) {}

  /** Queues a sealed unit for the agent. */
  seal(unit: SealedUnit): void {
    this.queue.push(unit);
    this.queueBytes += unit.bytes.length;
    this.unitsRecorded++;
    this.logBytes += unit.bytes.length;
    if (unit.final) this.sealedFinal = true;
    wake(this.unitWaiters.splice(0));
  }

  /** The queue is at one of its bounds: the guest must not run its next unit. */
  get full(): boolean {
    return this.queueBytes >= this.limits.logQueueBytesMax || this.queue.length >= this.limits.logQueueUnitsMax;
  }

  /** Resolves once the agent took a unit (or the recording stopped). */
  waitForRoom(): Promise<void> {
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  /** The next sealed unit, waiting for one; null once the final one was taken or the recording stopped. */
  async next(guestId: string, signal?: AbortSignal): Promise<SealedUnit | null> {
    for (;;) {
      if (this.stopped || this.finished) return null;
      const unit = this.queue.shift();
      if (unit !== undefined) {
        this.queueBytes -= unit.bytes.length;
        if (unit.final) this.finished = true;
        else this.left(1, unit.bytes.length);
        wake(this.roomWaiters.splice(0));
        return unit;
      }
      if (signal?.aborted) throw new AbortedError(`waiting for a unit of guest ${guestId} was cancelled`, { cause: signal.reason });
      await new Promise<void>((resolve) => {
        const onAbort = () => resolve();
        signal?.addEventListener('abort', onAbort, { once: true });
        this.unitWaiters.push(() => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        });
      });
    }
  }

  /** Drops the queued units before `sequence` (a delta of that instant supersedes them). */
  dropBefore(sequence: number): void {
    let n = 0;
    let bytes = 0;
    while (n < this.queue.length && this.queue[n].sequence < sequence) {
      bytes += this.queue[n].bytes.length;
      n++;
    }
    if (n === 0) return;
    this.queueBytes -= bytes;
    this.left(n, bytes);
    this.queue.splice(0, n);
    this.unitsDropped += n;
    wake(this.roomWaiters.splice(0));
  }

  stats(stallMs: number): RecordingStats {
    return { unitsRecorded: this.unitsRecorded, logBytes: this.logBytes, unitsQueued: this.queue.length, bytesQueued: this.queueBytes, stallMs, unitsDropped: this.unitsDropped, queueFull: this.full };
  }

  /** Ends the recording: queued units are dropped, every waiter wakes. */
  stop(): void {
    this.stopped = true;
    const kept = this.queue.filter((u) => !u.final);
    this.left(kept.length, kept.reduce((sum, u) => sum + u.bytes.length, 0));
    this.queue.length = 0;
    this.queueBytes = 0;
    wake(this.unitWaiters.splice(0));
    wake(this.roomWaiters.splice(0));
  }
}

function wake(waiters: Array<() => void>): void {
  for (const w of waiters) w();
}

/** Two event lists, each in position order, merged in position order (a unit's events as recorded). */
export function mergeByPosition(a: readonly GuestEvent[], b: readonly GuestEvent[]): GuestEvent[] {
  const out: GuestEvent[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i].position <= b[j].position)) out.push(a[i++]);
    else out.push(b[j++]);
  }
  return out;
}
