// The one wait primitive of a migration: wait until a condition holds, re-checked whenever
// something that could change it happened (a message from the target, a drain, a decision of the
// monitor, a cancellation), with a backstop timer in case nobody said so.

import type { Clock, Timer } from '../shared/clock.js';
import { AbortedError, DeadlineExceededError, type VmMigrateError } from '../shared/errors.js';

/** Longest a wait sleeps without a wake-up before it re-checks its condition on its own. */
const BACKSTOP_MS = 250;

export class Wakeups {
  private waiters = new Set<() => void>();

  constructor(private readonly clock: Clock) {}

  /** Wakes every wait, so that each re-checks its condition. */
  notify(): void {
    const waiters = this.waiters;
    this.waiters = new Set();
    for (const wake of waiters) wake();
  }

  /**
   * Resolves once `predicate` holds. Before each check `check` runs and may throw (a failed
   * stream, a cancellation), which ends the wait with that error. With `timeoutMs`, rejects with
   * DeadlineExceededError (message from `describeTimeout`) after that long: reason
   * PEER_UNAVAILABLE, since what a migration waits for with a timeout is the target's answer.
   */
  async until(predicate: () => boolean, check: () => void, timeoutMs?: number, describeTimeout: () => string = () => `no change within ${timeoutMs} ms`): Promise<void> {
    const deadlineMs = timeoutMs === undefined ? Infinity : this.clock.now() + timeoutMs;
    for (;;) {
      check();
      if (predicate()) return;
      if (this.clock.now() >= deadlineMs) throw new DeadlineExceededError(describeTimeout(), { reason: 'PEER_UNAVAILABLE', metadata: { timeoutMs: timeoutMs ?? 0 } });
      // The timer is only a backstop, cancelled once woken, so that a wait per chunk leaves no
      // timer behind.
      let backstop: Timer | undefined;
      await new Promise<void>((resolve) => {
        this.waiters.add(resolve);
        backstop = this.clock.timeout(Math.min(BACKSTOP_MS, Math.max(1, deadlineMs - this.clock.now())), resolve);
      });
      backstop?.cancel();
    }
  }

  /** Resolves once `promise` settled, running `check` meanwhile at every wake-up (as `until`). */
  async settled(promise: Promise<unknown>, check: () => void): Promise<void> {
    let done = false;
    void promise.then(
      () => {
        done = true;
        this.notify();
      },
      () => {
        done = true;
        this.notify();
      },
    );
    await this.until(() => done, check);
  }
}

export interface WaitOptions {
  /** Past the commit point: a cancellation no longer ends the wait. */
  pastCommit?: boolean;
  /** Rejects with DEADLINE_EXCEEDED after this long. */
  timeoutMs?: number;
  /** What was awaited, for the timeout's message. */
  what?: string;
}

/**
 * Waits that end with the first error (a failed stream, a decision of the monitor) or, unless
 * past the commit point, with the migration's cancellation: the part of a transfer channel that
 * every implementation shares, the fake ones of the tests included.
 */
export class FailableWaits {
  error: VmMigrateError | null = null;
  protected readonly wakeups: Wakeups;

  constructor(
    protected readonly clock: Clock,
    private readonly signal: AbortSignal,
  ) {
    this.wakeups = new Wakeups(clock);
    signal.addEventListener('abort', () => this.notify(), { once: true });
  }

  until(predicate: () => boolean, options: WaitOptions = {}): Promise<void> {
    return this.wakeups.until(predicate, () => this.check(options.pastCommit ?? false), options.timeoutMs, () => `no answer from the target within ${options.timeoutMs} ms${options.what ? ` (${options.what})` : ''}`);
  }

  /** Resolves once `promise` settled, failing early as `until` does. */
  settled(promise: Promise<unknown>): Promise<void> {
    return this.wakeups.settled(promise, () => this.check(false));
  }

  sleep(ms: number): Promise<void> {
    return this.settled(this.clock.sleep(ms));
  }

  /** Fails every wait with `error` (the first error wins). */
  fail(error: VmMigrateError): void {
    this.error ??= error;
    this.notify();
  }

  notify(): void {
    this.wakeups.notify();
  }

  /** Throws what ends a wait: the error; unless past the commit, a cancellation. */
  private check(pastCommit: boolean): void {
    if (!pastCommit && this.signal.aborted) throw this.signal.reason instanceof Error ? this.signal.reason : new AbortedError('cancelled');
    if (this.error !== null) throw this.error;
  }
}

/**
 * Awaits `work`, unless `ms` pass first and `expire` then returns an error (null: let it run on),
 * which rejects the wait. Whatever `work` does later is ignored.
 */
export async function raceDeadline(clock: Clock, ms: number, work: Promise<void>, expire: () => VmMigrateError | null): Promise<void> {
  let timer: Timer | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = clock.timeout(ms, () => {
      const error = expire();
      if (error !== null) reject(error);
    });
  });
  work.catch(() => {});
  deadline.catch(() => {});
  try {
    await Promise.race([work, deadline]);
  } finally {
    timer?.cancel();
  }
}
