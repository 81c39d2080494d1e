// The bandwidth limit of a migration (maxBandwidthBytesPerSec): a token bucket that holds at most
// a short burst of credit, so that a pause is not followed by a burst over the limit.

import type { Clock } from '../shared/clock.js';

/** Credit the bucket holds at most, as time at the rate. */
const BURST_MS = 50;

export class TokenBucket {
  private tokens = 0;
  private atMs = 0;

  constructor(private readonly clock: Clock) {}

  /**
   * Takes `bytes` of credit at `rateBytesPerSec` and returns how long to wait before sending them
   * (0: at once). A rate of 0, Infinity or less means no limit.
   */
  take(bytes: number, rateBytesPerSec: number): number {
    if (!(rateBytesPerSec > 0) || rateBytesPerSec === Infinity) return 0;
    const now = this.clock.now();
    this.tokens = Math.min((rateBytesPerSec * BURST_MS) / 1000, this.tokens + ((now - this.atMs) / 1000) * rateBytesPerSec);
    this.atMs = now;
    this.tokens -= bytes;
    return this.tokens < 0 ? (-this.tokens / rateBytesPerSec) * 1000 : 0;
  }
}
