// The replay rate the target reports (guest seconds replayed per wall second), from which the
// stop threshold is derived: remainingUnitsAllowed = what the downtime's replay share covers at
// this rate (shared/convergence.ts). Overstating it would make the switchover's downtime exceed
// its limit, so it counts what replay really costs.

export const REPLAY_RATE = {
  /** Units the rate is measured over: the most recent ones. */
  rateWindowUnits: 100,
  /**
   * A unit that starts less than this after the previous one ended belongs to the same batch: the
   * time between (decoding, I/O) counts as replay time. A longer gap is the target waiting for
   * units, which is not replay.
   */
  batchGapMsMax: 5,
} as const;

const NS_PER_MS = 1e6;

/**
 * Replay rate as a ratio of sums over the last units (an average of per-unit ratios would be
 * biased upward by short units), with the time between units of one batch counted: what the
 * target really achieves.
 */
export class ReplayRateMeter {
  private readonly window: Array<{ guestNs: number; ms: number }> = [];
  private guestNsSum = 0;
  private msSum = 0;
  private lastEndMs = Number.NEGATIVE_INFINITY;
  private rate = 0;

  /** Guest seconds per wall second; 0 until measured. */
  get replayRate(): number {
    return this.rate;
  }

  /** One unit of `guestNs` guest time replayed from `startMs` to `endMs` (clock milliseconds). */
  record(guestNs: number, startMs: number, endMs: number): void {
    const gapMs = startMs - this.lastEndMs;
    const ms = endMs - startMs + (gapMs < REPLAY_RATE.batchGapMsMax ? gapMs : 0);
    this.lastEndMs = endMs;
    this.window.push({ guestNs, ms });
    this.guestNsSum += guestNs;
    this.msSum += ms;
    if (this.window.length > REPLAY_RATE.rateWindowUnits) {
      const oldest = this.window.shift()!;
      this.guestNsSum -= oldest.guestNs;
      this.msSum -= oldest.ms;
    }
    if (this.msSum > 0 && this.guestNsSum > 0) this.rate = this.guestNsSum / NS_PER_MS / this.msSum;
  }
}
