// The calls before the transfer opens (capacity, reservation) after a lost link: asked again, with
// backoff, within the resume window, as the transfer itself is resumed (channel.ts). Safe because
// both are idempotent: capacity changes nothing, and a Reserve for a migration that already holds
// an unopened reservation is answered with that one.

import type { Clock } from '../shared/clock.js';
import { VmMigrateError } from '../shared/errors.js';

/** Calls `call` until it succeeds, fails otherwise than by a lost link, or `windowMs` passed; `redial` after a call that timed out. */
export async function retryLostLink<T>(call: () => Promise<T>, windowMs: number, clock: Clock, signal: AbortSignal, redial: () => void): Promise<T> {
  const deadlineMs = clock.now() + windowMs;
  let backoffMs = 100;
  for (;;) {
    try {
      return await call();
    } catch (error) {
      const code = error instanceof VmMigrateError ? error.code : '';
      const lost = code === 'UNAVAILABLE' || code === 'DEADLINE_EXCEEDED';
      if (!lost || signal.aborted || clock.now() + backoffMs >= deadlineMs) throw error;
      // A call that timed out may sit on a stalled connection: the next goes on a new one.
      if (code === 'DEADLINE_EXCEEDED') redial();
      await clock.sleep(backoffMs);
      backoffMs = Math.min(2_000, backoffMs * 2);
    }
  }
}
