// A protection's recovery point objective: how far (in guest time) the standby may lag behind the
// primary. Past it the guest is slowed, as Xen's and QEMU's auto-converge slow a guest whose
// pre-copy does not converge, and VMware FT slows a primary whose backup falls behind; once the
// lag is back under half the objective, the guest speeds up again a step at a time. A pure
// function: the source's protection monitor applies it at every tick.

import { nextThrottle } from './convergence.js';
import { LOG_BATCH_MS_MAX } from './driver/types.js';

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

/**
 * How long a protection's sealed units may wait at the primary to go to the standby together
 * (LogRecorder.setLogBatch) when its request leaves it 0: two units of the default length, at most
 * a quarter of the objective. Asked for: 1 to LOG_BATCH_MS_MAX, at most half the objective.
 */
export const PROTECTION_LOG_BATCH_MS_DEFAULT = 20;

/** A protection's log batch (ms): `requested` (0: the default) checked against its objective; an error message, or the batch. */
export function protectionLogBatchMs(requested: number, rpoMsMax: number): number | string {
  if (requested === 0) return Math.min(PROTECTION_LOG_BATCH_MS_DEFAULT, Math.floor(rpoMsMax / 4));
  const most = Math.min(LOG_BATCH_MS_MAX, Math.floor(rpoMsMax / 2));
  if (!Number.isInteger(requested) || requested < 1 || requested > most) return `a log batch of ${requested} ms: expected 0 (the default, ${PROTECTION_LOG_BATCH_MS_DEFAULT}) or 1 to ${most} (at most ${LOG_BATCH_MS_MAX}, and half the objective of ${rpoMsMax} ms)`;
  return requested;
}

/** Lowest throttle the objective may impose (as the non-convergence policy's). */
export const RPO_THROTTLE_MIN = 0.05;
/** Each step back up multiplies the throttle by this (the inverse of nextThrottle's 0.7). */
const RPO_SPEEDUP = 1 / 0.7;

export interface RpoDecision {
  throttle: number;
  /** What changed and why, or '' when nothing did. */
  reason: string;
}

/** How far a standby's replay may trail the guest (guest ms) when the request leaves it 0, and its bounds. */
export const REPLAY_LAG_MS_MAX_DEFAULT = 1_000;
export const REPLAY_LAG_MS_MAX_MIN = 100;
export const REPLAY_LAG_MS_MAX_MAX = 3_600_000;

/** A standby's lag behind the guest (guest ms): what it has not received, and not replayed. */
export interface StandbyLag {
  receivedMs: number;
  replayedMs: number;
}

/** The bounds on it: the recovery point objective (received), and the replay lag a failover would replay first. */
export interface LagBounds {
  rpoMsMax: number;
  replayLagMsMax: number;
}

/**
 * The guest's next throttle for a standby `lag` behind: slowed a step while either lag is over its
 * bound; sped up a step once both are under half theirs. The replay lag is VMware FT's execution
 * lag: a failover replays it before the guest runs, so it bounds the time to recover; a standby
 * whose replay cannot keep up (a busy DR host) would otherwise trail further without end.
 */
export function rpoThrottle(lag: StandbyLag, bounds: LagBounds, throttle: number): RpoDecision {
  const received = `the standby lags ${Math.round(lag.receivedMs)} ms behind (received)`;
  const replayed = `its replay lags ${Math.round(lag.replayedMs)} ms behind`;
  if (throttle > RPO_THROTTLE_MIN) {
    const next = nextThrottle(throttle);
    if (lag.receivedMs > bounds.rpoMsMax) return { throttle: next, reason: `${received}, over the objective of ${bounds.rpoMsMax} ms: guest slowed to ${next}` };
    if (lag.replayedMs > bounds.replayLagMsMax) return { throttle: next, reason: `${replayed}, over the bound of ${bounds.replayLagMsMax} ms: guest slowed to ${next}` };
  }
  if (lag.receivedMs < bounds.rpoMsMax / 2 && lag.replayedMs < bounds.replayLagMsMax / 2 && throttle < 1) {
    const next = Math.min(1, Math.round(throttle * RPO_SPEEDUP * 1000) / 1000);
    return { throttle: next, reason: `${received} and ${replayed}, under half the objective of ${bounds.rpoMsMax} ms and of the bound of ${bounds.replayLagMsMax} ms: guest sped up to ${next}` };
  }
  return { throttle, reason: '' };
}
