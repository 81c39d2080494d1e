// The clock the migration and session cores read and wait on, injected so that their decisions
// (convergence, switchover, timeouts, rates) can be driven by tests without real time.
//
// - `systemClock`: performance.now() for durations, Date.now() for timestamps, real timers;
// - `ManualClock`: time moves only when a test calls `advance`, which fires the timers that fall
//   due in order, and lets promise callbacks run between them.

/** A pending timer: `cancel` is idempotent. */
export interface Timer {
  cancel(): void;
}

export interface Clock {
  /** Monotonic milliseconds, for durations (never goes back). */
  now(): number;
  /** Milliseconds since the Unix epoch, for timestamps shown to people. */
  epochMs(): number;
  /** Resolves after `ms`; rejects with the signal's reason if it aborts first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /** Calls `fn` once after `ms`. Real timers do not hold the process open. */
  timeout(ms: number, fn: () => void): Timer;
  /** Calls `fn` every `ms`. Real timers do not hold the process open. */
  interval(ms: number, fn: () => void): Timer;
}

function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason ?? 'aborted'));
}

/** Sleeps on `clock`, rejecting early when `signal` aborts; shared by every Clock. */
function sleepOn(clock: Pick<Clock, 'timeout'>, ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(abortReason(signal));
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      timer.cancel();
      reject(abortReason(signal!));
    };
    const timer = clock.timeout(Math.max(0, ms), () => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    });
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export const systemClock: Clock = {
  now: () => performance.now(),
  epochMs: () => Date.now(),
  sleep(ms, signal) {
    return sleepOn(systemClock, ms, signal);
  },
  timeout(ms, fn) {
    const handle = setTimeout(fn, ms);
    handle.unref();
    return { cancel: () => clearTimeout(handle) };
  },
  interval(ms, fn) {
    const handle = setInterval(fn, ms);
    handle.unref();
    return { cancel: () => clearInterval(handle) };
  },
};

interface ManualTimer {
  dueMs: number;
  /** Insertion order: timers due at the same instant fire in the order they were set. */
  order: number;
  /** 0 for a one-shot timer. */
  everyMs: number;
  fn: () => void;
  cancelled: boolean;
}

/** A clock for tests: starts at `startMs` and moves only through `advance`. */
export class ManualClock implements Clock {
  private nowMs: number;
  private readonly epochStartMs: number;
  private readonly startMs: number;
  private timers: ManualTimer[] = [];
  private order = 0;

  constructor(startMs = 0, epochStartMs = Date.UTC(2026, 0, 1)) {
    this.nowMs = startMs;
    this.startMs = startMs;
    this.epochStartMs = epochStartMs;
  }

  now(): number {
    return this.nowMs;
  }

  epochMs(): number {
    return this.epochStartMs + (this.nowMs - this.startMs);
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return sleepOn(this, ms, signal);
  }

  timeout(ms: number, fn: () => void): Timer {
    return this.add(ms, 0, fn);
  }

  interval(ms: number, fn: () => void): Timer {
    if (!(ms > 0)) throw new RangeError(`interval of ${ms} ms: expected more than 0`);
    return this.add(ms, ms, fn);
  }

  /** Timers not yet fired or cancelled. */
  get pendingTimers(): number {
    return this.timers.filter((t) => !t.cancelled).length;
  }

  /**
   * Moves time forward by `ms`, firing every timer that falls due on the way, in order; before
   * and after each one, pending promise callbacks run (so code awaiting a sleep proceeds).
   */
  async advance(ms: number): Promise<void> {
    if (!(ms >= 0)) throw new RangeError(`advance by ${ms} ms: expected 0 or more`);
    const endMs = this.nowMs + ms;
    await settle();
    for (;;) {
      const next = this.nextDue();
      if (next === undefined || next.dueMs > endMs) break;
      this.nowMs = Math.max(this.nowMs, next.dueMs);
      if (next.everyMs > 0) next.dueMs += next.everyMs;
      else next.cancelled = true;
      next.fn();
      await settle();
    }
    this.nowMs = endMs;
    this.timers = this.timers.filter((t) => !t.cancelled);
    await settle();
  }

  private add(ms: number, everyMs: number, fn: () => void): Timer {
    const timer: ManualTimer = { dueMs: this.nowMs + Math.max(0, ms), order: this.order++, everyMs, fn, cancelled: false };
    this.timers.push(timer);
    return { cancel: () => void (timer.cancelled = true) };
  }

  private nextDue(): ManualTimer | undefined {
    let best: ManualTimer | undefined;
    for (const t of this.timers) {
      if (t.cancelled) continue;
      if (best === undefined || t.dueMs < best.dueMs || (t.dueMs === best.dueMs && t.order < best.order)) best = t;
    }
    return best;
  }
}

/** Lets queued promise callbacks (and the ones they queue, a few levels deep) run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
  await new Promise<void>((resolve) => setImmediate(resolve));
}
