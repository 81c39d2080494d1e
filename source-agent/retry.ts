// The calls before the transfer opens (capacity, reservation) after a lost link: asked again, with
// backoff, within the resume window, as the transfer itself is resumed (channel.ts). Safe because
// both are idempotent: capacity changes nothing, and a Reserve for a migration that already holds
// an unopened reservation is answered with that one.

import type { Clock } from '../shared/clock.js';
import { VmMigrateError } from '../shared/errors.js';

/** Retries back off from 100 ms to this: the target releases an unopened reservation after its own timeout, often a few seconds. */
const BACKOFF_MS_MAX = 500;

/**
 * Calls `call` until it succeeds, fails otherwise than by a lost link, or `windowMs` passed. Each
 * retry goes on a new connection (`redial`): one that timed out may sit on a stalled link, and one
 * refused would otherwise wait out gRPC's own reconnection backoff (1 s, growing).
 */
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
      redial();
      await clock.sleep(backoffMs);
      backoffMs = Math.min(BACKOFF_MS_MAX, backoffMs * 2);
    }
  }
}
