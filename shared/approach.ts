// CR/TR's final approach. CR/TR's downtime is the replay of the units the replica has not replayed
// when the guest stops. A replica that replays barely faster than the guest runs (a CPU-bound
// guest replays at 1.0-1.3 times its own speed) keeps a backlog of several units that no waiting
// shrinks, and even a steady log has units in flight (the one replayed, the one being sealed, a
// one-way latency's worth, which a busy host makes several): stopping then costs their whole
// replay as downtime. The final approach slows the guest for a short, bounded time before the
// stop instead, as pre-copy's auto-converge does: a throttled unit is cheap to replay, so the
// replica drains its backlog down to the units in flight, those are throttled ones, and the stop
// costs a few milliseconds of replay. The work the guest gives up is counted in its disruption
// (throttledMs), next to the downtime it saves.
//
// The model: B units of unitMs each, recorded at full speed, wait for a replica that replays r
// times as fast as the guest runs, F of them the floor a steady log has; the guest runs at
// throttle f. The excess B - F drains in
//   T = (B - F) × unitMs / (r - f)
// (its own replay, and that of the throttled units recorded meanwhile, each f / r of a unit's),
// and at least F × unitMs pass, so that the units in flight at the stop are throttled ones; their
// replay, F × f × unitMs / r, is the downtime's. The guest gives up (1 - f) × T of work. A higher
// f costs the guest less but takes longer and leaves a dearer stop: the approach takes the highest
// f that drains within APPROACH_TARGET_MS and replays the floor within APPROACH_REPLAY_MS, between
// APPROACH_THROTTLE_MIN and APPROACH_THROTTLE_MAX. None when the stop would cost no more than
// APPROACH_REPLAY_MS of replay as it is. Each approach is bounded (boundMs): past it the stop is
// granted (or forced) whatever remains; one that would take longer than APPROACH_BOUND_MAX_MS is
// not started.

/** The drain the approach aims at (ms). */
export const APPROACH_TARGET_MS = 250;
/** The replay a stop may cost without an approach, and after one (ms). */
export const APPROACH_REPLAY_MS = 8;
/** The throttle range the approach may choose from. */
export const APPROACH_THROTTLE_MIN = 0.1;
export const APPROACH_THROTTLE_MAX = 0.9;
/** An approach lasts at most this multiple of its predicted drain, within the bounds below (ms). */
export const APPROACH_BOUND_FACTOR = 3;
export const APPROACH_BOUND_MIN_MS = 500;
export const APPROACH_BOUND_MAX_MS = 10_000;

export interface ApproachInputs {
  /** Units recorded and not yet replayed (in flight included). */
  backlogUnits: number;
  /** Units a steady log has not replayed at any moment (convergence.ts stopUnitsFloor). */
  floorUnits: number;
  unitMs: number;
  /** The replica's replay speed, as a multiple of the guest's (0: not measured). */
  replayRate: number;
  /** The guest's throttle now (1: none): the approach never speeds a guest up. */
  throttle: number;
}

export interface ApproachPlan {
  /** Whether an approach is worth it. */
  approach: boolean;
  /** The throttle to run the guest at meanwhile. */
  throttle: number;
  /** The drain predicted at that throttle (at least the floor's worth of units), and the approach's bound (ms). */
  predictedMs: number;
  boundMs: number;
  /** The guest's work given up, predicted (ms). */
  costMs: number;
  /** The approach lasts at least this (ms): the floor's worth of units, so that those in flight at the stop are throttled ones. */
  settleMs: number;
  reason: string;
}

/** Predicted drain of `backlogUnits` at throttle f (ms); Infinity when the replica cannot gain. */
export function drainMs(backlogUnits: number, unitMs: number, replayRate: number, throttle: number): number {
  const gain = replayRate - throttle;
  return gain > 0 ? (Math.max(0, backlogUnits) * unitMs) / gain : Infinity;
}

/** Whether to approach, at which throttle, for how long (see the header). */
export function planApproach(input: ApproachInputs): ApproachPlan {
  const { backlogUnits, unitMs } = input;
  const floorUnits = Math.max(1, input.floorUnits);
  const none = (reason: string): ApproachPlan => ({ approach: false, throttle: input.throttle, predictedMs: 0, boundMs: 0, costMs: 0, settleMs: 0, reason });
  const rate = Number.isFinite(input.replayRate) && input.replayRate > 0 ? input.replayRate : 1;
  const stopMs = unitMs > 0 ? (backlogUnits * unitMs) / rate : 0;
  if (!(unitMs > 0) || stopMs <= APPROACH_REPLAY_MS) return none(`${backlogUnits} units not replayed: a stop now replays them in about ${stopMs.toFixed(1)} ms`);
  if (rate <= APPROACH_THROTTLE_MIN) return none(`the replica replays at ${rate.toFixed(2)}x: no throttle lets it gain`);
  const excess = Math.max(0, backlogUnits - floorUnits);
  // The highest throttle that drains the excess within the target and replays the floor within
  // the stop's share, clamped to the range.
  const forDrain = rate - (excess * unitMs) / APPROACH_TARGET_MS;
  const forFloor = (APPROACH_REPLAY_MS * rate) / (floorUnits * unitMs);
  const throttle = Math.min(input.throttle, APPROACH_THROTTLE_MAX, Math.max(APPROACH_THROTTLE_MIN, Math.floor(Math.min(forDrain, forFloor) * 100) / 100));
  const drain = drainMs(excess, unitMs, rate, throttle);
  if (!Number.isFinite(drain)) return none(`the replica replays at ${rate.toFixed(2)}x, no faster than the guest at ${throttle}`);
  const predictedMs = Math.max(drain, floorUnits * unitMs);
  if (predictedMs > APPROACH_BOUND_MAX_MS) return none(`${backlogUnits} units not replayed at a replay of ${rate.toFixed(2)}x would take ${Math.round(predictedMs)} ms to drain even at ${throttle}, past the approach's ${APPROACH_BOUND_MAX_MS} ms`);
  const boundMs = Math.min(APPROACH_BOUND_MAX_MS, Math.max(APPROACH_BOUND_MIN_MS, APPROACH_BOUND_FACTOR * predictedMs));
  const costMs = (1 - throttle) * predictedMs;
  const afterMs = (floorUnits * throttle * unitMs) / rate;
  return {
    approach: true,
    throttle,
    predictedMs,
    boundMs,
    costMs,
    settleMs: floorUnits * unitMs,
    reason: `${backlogUnits} units not replayed (a steady log has ${floorUnits}) at a replay of ${rate.toFixed(2)}x: guest slowed to ${throttle} for about ${Math.round(predictedMs)} ms (at most ${Math.round(boundMs)}), giving up about ${Math.round(costMs)} ms of work to bring the stop's replay from about ${Math.round(stopMs)} to ${Math.round(afterMs)} ms`,
  };
}
