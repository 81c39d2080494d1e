// CR/TR's final approach. CR/TR's downtime is the replay of the units the replica has not replayed
// when the guest stops. A replica that replays barely faster than the guest runs (a CPU-bound
// guest replays at 1.0-1.3 times its own speed) keeps a backlog of several units that no waiting
// shrinks, and stopping then costs their whole replay as downtime. The final approach slows the
// guest for a short, bounded time before the stop instead, as pre-copy's auto-converge does: a
// throttled unit is cheap to replay, so the replica drains its backlog down to the units in
// flight, and the stop costs about one unit's replay. The work the guest gives up is counted in
// its disruption (throttledMs), next to the downtime it saves.
//
// The model: B units of unitMs each, recorded at full speed, wait for a replica that replays r
// times as fast as the guest runs; the guest runs at throttle f. The backlog drains in
//   T = B × unitMs / (r − f)
// (its own replay, B × unitMs / r, and that of the throttled units recorded meanwhile, each f / r
// of a unit's), and the guest gives up (1 − f) × T of work. A higher f costs the guest less but
// takes longer; the approach takes the highest f that drains within APPROACH_TARGET_MS, between
// APPROACH_THROTTLE_MIN and APPROACH_THROTTLE_MAX. Each approach is bounded (boundMs): past it
// the stop is granted (or forced) whatever remains; one that would take longer than
// APPROACH_BOUND_MAX_MS is not started.

/** The drain the approach aims at (ms). */
export const APPROACH_TARGET_MS = 250;
/** The throttle range the approach may choose from. */
export const APPROACH_THROTTLE_MIN = 0.1;
export const APPROACH_THROTTLE_MAX = 0.9;
/** An approach lasts at most this multiple of its predicted drain, within the bounds below (ms). */
export const APPROACH_BOUND_FACTOR = 3;
export const APPROACH_BOUND_MIN_MS = 500;
export const APPROACH_BOUND_MAX_MS = 10_000;
/** A backlog at most this many units over the steady floor is stopped at once (no approach). */
export const APPROACH_SLACK_UNITS = 1;

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
  /** The drain predicted at that throttle, and the approach's bound (ms). */
  predictedMs: number;
  boundMs: number;
  /** The guest's work given up, predicted (ms). */
  costMs: number;
  reason: string;
}

/** Predicted drain of `backlogUnits` at throttle f (ms); Infinity when the replica cannot gain. */
export function drainMs(backlogUnits: number, unitMs: number, replayRate: number, throttle: number): number {
  const gain = replayRate - throttle;
  return gain > 0 ? (Math.max(0, backlogUnits) * unitMs) / gain : Infinity;
}

/** Whether to approach, at which throttle, for how long (see the header). */
export function planApproach(input: ApproachInputs): ApproachPlan {
  const { backlogUnits, floorUnits, unitMs } = input;
  const none = (reason: string): ApproachPlan => ({ approach: false, throttle: input.throttle, predictedMs: 0, boundMs: 0, costMs: 0, reason });
  const excess = backlogUnits - floorUnits;
  if (!(unitMs > 0) || excess <= APPROACH_SLACK_UNITS) return none(`${backlogUnits} units not replayed, within ${APPROACH_SLACK_UNITS} of the ${floorUnits} a steady log has`);
  const rate = Number.isFinite(input.replayRate) && input.replayRate > 0 ? input.replayRate : 1;
  if (rate <= APPROACH_THROTTLE_MIN) return none(`the replica replays at ${rate.toFixed(2)}x: no throttle lets it gain`);
  // The highest throttle that drains the excess within the target, clamped to the range.
  const wanted = rate - (excess * unitMs) / APPROACH_TARGET_MS;
  const throttle = Math.min(input.throttle, APPROACH_THROTTLE_MAX, Math.max(APPROACH_THROTTLE_MIN, Math.round(wanted * 100) / 100));
  const predictedMs = drainMs(excess, unitMs, rate, throttle);
  if (!Number.isFinite(predictedMs)) return none(`the replica replays at ${rate.toFixed(2)}x, no faster than the guest at ${throttle}`);
  if (predictedMs > APPROACH_BOUND_MAX_MS) return none(`${backlogUnits} units not replayed at a replay of ${rate.toFixed(2)}x would take ${Math.round(predictedMs)} ms to drain even at ${throttle}, past the approach's ${APPROACH_BOUND_MAX_MS} ms`);
  const boundMs = Math.min(APPROACH_BOUND_MAX_MS, Math.max(APPROACH_BOUND_MIN_MS, APPROACH_BOUND_FACTOR * predictedMs));
  const costMs = (1 - throttle) * predictedMs;
  return {
    approach: true,
    throttle,
    predictedMs,
    boundMs,
    costMs,
    reason: `${backlogUnits} units not replayed (a steady log has ${floorUnits}) at a replay of ${rate.toFixed(2)}x: guest slowed to ${throttle} for about ${Math.round(predictedMs)} ms (at most ${Math.round(boundMs)}), giving up about ${Math.round(costMs)} ms of work to save about ${Math.round((excess * unitMs) / rate)} ms of downtime`,
  };
}
