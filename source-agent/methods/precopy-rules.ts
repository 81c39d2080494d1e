// Xen's pre-copy stop rules and adaptive rate limit (Clark et al., NSDI 2005), the pre-copy
// baseline's decisions as pure functions. The bench compares CR/TR against exactly these.

export const PRECOPY_ROUNDS_MAX = 30;
/** Stop iterating when fewer pages than this are dirty. */
export const PRECOPY_DIRTY_PAGES_MIN = 50;
/** Stop iterating when this many times guest memory has been sent. */
export const PRECOPY_SENT_MEMORY_FACTOR_MAX = 3;
/** Each round's rate limit is the previous round's dirtying rate plus this (50 Mbit/s). */
export const PRECOPY_RATE_INCREMENT_BYTES_PER_SEC = 6_250_000;

export interface PrecopyProgress {
  /** Rounds completed (round 0, the full copy, included). */
  roundsDone: number;
  /** Pages dirtied since the last round began. */
  dirtyPages: number;
  /** Page bytes sent so far. */
  sentBytes: number;
  memoryBytes: number;
}

/** Whether to stop iterating and stop-and-copy the last dirty set, and why. */
export function precopyShouldStop(p: PrecopyProgress): { stop: boolean; reason: string } {
  if (p.dirtyPages < PRECOPY_DIRTY_PAGES_MIN) return { stop: true, reason: `${p.dirtyPages} dirty pages, fewer than ${PRECOPY_DIRTY_PAGES_MIN}` };
  if (p.roundsDone >= PRECOPY_ROUNDS_MAX) return { stop: true, reason: `${p.roundsDone} rounds, the maximum` };
  if (p.sentBytes >= PRECOPY_SENT_MEMORY_FACTOR_MAX * p.memoryBytes) {
    return { stop: true, reason: `${p.sentBytes} bytes sent, ${PRECOPY_SENT_MEMORY_FACTOR_MAX}x guest memory or more` };
  }
  return { stop: false, reason: `${p.dirtyPages} dirty pages after ${p.roundsDone} rounds` };
}

/**
 * Rate limit of the next round: unlimited (up to `maxBytesPerSec`, 0 = none) for the first
 * full copy, then the previous round's dirtying rate plus 50 Mbit/s, so that each round is sent
 * a little faster than the guest dirties, bounded by the maximum.
 */
export function precopyRoundRate(roundIndex: number, previousDirtyBytesPerSec: number, maxBytesPerSec: number): number {
  const max = maxBytesPerSec > 0 ? maxBytesPerSec : Infinity;
  if (roundIndex === 0) return max;
  return Math.min(max, previousDirtyBytesPerSec + PRECOPY_RATE_INCREMENT_BYTES_PER_SEC);
}
