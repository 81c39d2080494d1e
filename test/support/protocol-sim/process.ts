// What dies with a simulated agent process: its clock's timers and its hold on the journal. A
// crash in the simulation is a kill: every timer the process set is cancelled and none fires
// again, its sleeps never end, and its journal refuses to write, as a dead process does nothing
// more. What outlives it (the host's running guests, a journal kept on disk) lives elsewhere.

import type { Clock, ManualClock, Timer } from '../../../shared/clock.js';
import type { DecisionJournal, JournalEntry, JournalRecord, JournalRole } from '../../../shared/journal.js';

/**
 * The simulated clock as one process sees it: its own monotonic origin, timers that die with it,
 * and the time its work takes. A process that works `ms` (a replica replaying a unit) sees its
 * clock move on by as much at once, and what it sets meanwhile fires once the work is done: a
 * busy process is late, as a real one is.
 */
export class ProcessClock implements Clock {
  private readonly timers = new Set<Timer>();
  private alive = true;
  /** Process time until which the process is busy working. */
  private busyUntilMs = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly base: ManualClock,
    /** This process's monotonic clock minus the simulation's (another host, another boot). */
    private readonly offsetMs: number,
    /** This host's wall clock minus the simulation's. */
    private readonly epochSkewMs = 0,
  ) {}

  now(): number {
    return Math.max(this.base.now() + this.offsetMs, this.busyUntilMs);
  }

  /** The process works `ms`: its clock moves on at once. */
  work(ms: number): void {
    this.busyUntilMs = this.now() + ms;
  }

  /** Runs `fn` once the work in progress is done (the replay pipeline's next slice). */
  defer(fn: () => void): void {
    this.timeout(0, fn);
  }

  epochMs(): number {
    return this.base.epochMs() + this.epochSkewMs;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        timer.cancel();
        reject(signal!.reason instanceof Error ? signal!.reason : new Error('aborted'));
      };
      const timer = this.timeout(ms, () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      });
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  timeout(ms: number, fn: () => void): Timer {
    // Due at process time now() + ms, which the simulation reaches once the work is done.
    const delayMs = this.now() + ms - (this.base.now() + this.offsetMs);
    return this.track((done) =>
      this.base.timeout(delayMs, () => {
        done();
        fn();
      }),
    );
  }

  interval(ms: number, fn: () => void): Timer {
    return this.track(() => this.base.interval(ms, fn));
  }

  /** The process died: nothing it set fires again. */
  kill(): void {
    this.alive = false;
    for (const t of this.timers) t.cancel();
    this.timers.clear();
  }

  private track(start: (done: () => void) => Timer): Timer {
    if (!this.alive) return { cancel() {} };
    let inner: Timer | null = null;
    const handle: Timer = {
      cancel: () => {
        inner?.cancel();
        this.timers.delete(handle);
      },
    };
    this.timers.add(handle);
    inner = start(() => this.timers.delete(handle));
    return handle;
  }
}

/**
 * A process's handle on a journal. `durable`: the records are what a state directory would keep
 * across a restart (the simulation hands the same records to the next run); otherwise each run
 * has records of its own, as an agent without stateDir. Record times come from the simulated
 * clock, so that a run replays exactly.
 */
export class ProcessJournal implements DecisionJournal {
  readonly path = null;
  readonly corruptLines = 0;
  private alive = true;
  private failNext = false;

  constructor(
    private readonly records: DecisionJournal,
    readonly durable: boolean,
    private readonly clock: Clock,
  ) {}

  append(entry: JournalEntry): JournalRecord {
    if (!this.alive) throw new Error('the agent process is gone');
    if (this.failNext) {
      this.failNext = false;
      throw new Error('ENOSPC: no space left on device, write (simulated)');
    }
    return this.records.append({ ...entry, atMs: entry.atMs ?? this.clock.epochMs() });
  }

  latest(role: JournalRole, migrationId: string): JournalRecord | undefined {
    return this.records.latest(role, migrationId);
  }

  entries(): JournalRecord[] {
    return this.records.entries();
  }

  close(): void {
    this.alive = false;
  }

  /** The next append fails, as on a full disk. */
  failNextAppend(): void {
    this.failNext = true;
  }
}
