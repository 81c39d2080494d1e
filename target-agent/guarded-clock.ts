// The clock a target session schedules its work with (progress reports, the idle watchdog,
// activation hooks' timeouts): every callback runs under a guard that hands what it throws to the
// session, which fails that transfer (INTERNAL for a bug) instead of the process, with every
// other guest on the host, ending on an uncaught exception.

import type { Clock } from '../shared/clock.js';

/** A wrapper of callbacks: each reports what it throws to `onError`, which must not throw. */
export function guarded(onError: (error: unknown) => void): <A extends unknown[]>(fn: (...args: A) => void) => (...args: A) => void {
  return (fn) =>
    (...args) => {
      try {
        fn(...args);
      } catch (error) {
        onError(error);
      }
    };
}

/** `clock`, whose timeout and interval callbacks report what they throw to `onError`. */
export function guardedClock(clock: Clock, onError: (error: unknown) => void): Clock {
  const guard = guarded(onError);
  return {
    now: () => clock.now(),
    epochMs: () => clock.epochMs(),
    sleep: (ms, signal) => clock.sleep(ms, signal),
    timeout: (ms, fn) => clock.timeout(ms, guard(fn)),
    interval: (ms, fn) => clock.interval(ms, guard(fn)),
  };
}
