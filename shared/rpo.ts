// A protection's recovery point objective: how far (in guest time) the standby may lag behind the
// primary. Past it the guest is slowed, as Xen's and QEMU's auto-converge slow a guest whose
// pre-copy does not converge, and VMware FT slows a primary whose backup falls behind; once the
// lag is back under half the objective, the guest speeds up again a step at a time. A pure
// function: the source's protection monitor applies it at every tick.

import { nextThrottle } from './convergence.js';

/** A protection's terms, as the source asks them and the standby keeps them. */
export interface ProtectionTerms {
  /** sync: an output is released once the standby received its unit; async: at once. */
  mode: 'sync' | 'async';
  /** The most guest time the standby may lag behind (received), in ms. */
  rpoMsMax: number;
}

/** A protection's recovery point objective when its request leaves it 0, and its bounds (ms). */
export const RPO_MS_MAX_DEFAULT = 1_000;
export const RPO_MS_MAX_MIN = 10;
export const RPO_MS_MAX_MAX = 3_600_000;

/** Lowest throttle the objective may impose (as the non-convergence policy's). */
export const RPO_THROTTLE_MIN = 0.05;
/** Each step back up multiplies the throttle by this (the inverse of nextThrottle's 0.7). */
const RPO_SPEEDUP = 1 / 0.7;

export interface RpoDecision {
  throttle: number;
  /** What changed and why, or '' when nothing did. */
  reason: string;
}

/** The guest's next throttle for a standby `lagMs` behind (received), against `rpoMsMax`. */
export function rpoThrottle(lagMs: number, rpoMsMax: number, throttle: number): RpoDecision {
  if (lagMs > rpoMsMax && throttle > RPO_THROTTLE_MIN) {
    const next = nextThrottle(throttle);
    return { throttle: next, reason: `the standby lags ${Math.round(lagMs)} ms behind, over the objective of ${rpoMsMax} ms: guest slowed to ${next}` };
  }
  if (lagMs < rpoMsMax / 2 && throttle < 1) {
    const next = Math.min(1, Math.round(throttle * RPO_SPEEDUP * 1000) / 1000);
    return { throttle: next, reason: `the standby lags ${Math.round(lagMs)} ms behind, under half the objective of ${rpoMsMax} ms: guest sped up to ${next}` };
  }
  return { throttle, reason: '' };
}
