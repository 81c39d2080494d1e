// The cost of each method, modelled from the measured inputs (model.ts); the formulas are listed in
// predict.ts's head comment. Each model replays the method's own decisions with the same pure
// functions the method uses: CR/TR's hybrid catch-up (shared/catch-up.ts) and expected downtime
// (shared/convergence.ts), pre-copy's stop rules and round rates (methods/precopy-rules.ts).

import { chooseCatchUp } from '../../shared/catch-up.js';
import { planApproach } from '../../shared/approach.js';
import { expectedDowntimeMs, stopUnitsFloor, SWITCHOVER_UNITS_FLOOR, SWITCHOVER_WINDOW_MS } from '../../shared/convergence.js';
import { PAGE_BYTES } from '../../shared/driver/types.js';
import { precopyRoundRate, precopyShouldStop } from '../methods/precopy-rules.js';
import { type Derived, fmtMiB, fmtMs, linkSeconds, MACHINE_STATE_BYTES, MAX_DURATION_MS_DEFAULT, type MethodPrediction, PAGE_BATCH_BYTES_PER_PAGE, pageSeconds, type PredictionInputs, SETUP_ROUND_TRIPS } from './model.js';

/** Points at which the models integrate over a phase (copy-on-write peak, post-copy faults). */
const GRID_POINTS = 64;

const never = (base: Pick<MethodPrediction, 'method' | 'available' | 'logOnlyCatchUp'>, reason: string): MethodPrediction => ({
  ...base,
  converges: false,
  downtimeMs: Infinity,
  totalTimeMs: Infinity,
  bytes: Infinity,
  disruptionMs: Infinity,
  rounds: 0,
  reason,
});

/** Wire bytes per second of pages left beside the log, as compression allows. */
function pageThroughput(inputs: PredictionInputs, pageLinkBytesPerSec: number): number {
  const compressWire = inputs.compressBytesPerSec > 0 ? inputs.compressBytesPerSec * inputs.pageWireRatio : Infinity;
  return Math.min(pageLinkBytesPerSec, compressWire);
}

/**
 * Seconds the guest stalls on a full copy-on-write pool during a checkpoint of `checkpointS`: the
 * pool holds the pages written since the instant that the stream has not reached yet, W(t) (1 -
 * t / T) at time t; past the pool, the guest runs only as fast as the stream frees room.
 */
export function cowStallSeconds(inputs: PredictionInputs, d: Derived, checkpointS: number): number {
  if (!(inputs.cowPoolBytes > 0) || !(checkpointS > 0)) return 0;
  let peakPages = 0;
  for (let i = 1; i < GRID_POINTS; i++) {
    const t = (checkpointS * i) / GRID_POINTS;
    peakPages = Math.max(peakPages, d.workingSet.dirtied(t * 1000) * (1 - t / checkpointS));
  }
  const peakBytes = peakPages * PAGE_BYTES;
  return peakBytes <= inputs.cowPoolBytes ? 0 : checkpointS * (1 - inputs.cowPoolBytes / peakBytes);
}

interface CatchUp {
  rounds: number;
  /** Wall time the delta rounds took, and their page bytes on the wire. */
  deltaMs: number;
  deltaBytes: number;
  /** Backlog left for replay, guest ms. */
  backlogMs: number;
}

/** The hybrid catch-up's delta rounds, as chooseCatchUp would take them after the checkpoint. */
function hybridRounds(inputs: PredictionInputs, d: Derived, checkpointMs: number, pageLinkBytesPerSec: number): CatchUp {
  const out: CatchUp = { rounds: 0, deltaMs: 0, deltaBytes: 0, backlogMs: checkpointMs };
  // The replica replays only once restored: the backlog is the checkpoint's duration, and the
  // pages dirtied since the instant are those of the same span.
  let sinceInstantMs = checkpointMs;
  for (;;) {
    const deltaPages = d.workingSet.dirtied(sinceInstantMs);
    const decision = chooseCatchUp({
      backlogUnits: out.backlogMs / inputs.unitMs,
      unitMs: inputs.unitMs,
      replayRate: d.replayRate,
      deltaPages,
      pageWireBytes: d.pageWireBytes,
      restoreBytesPerSec: inputs.restoreBytesPerSec,
      throughputBytesPerSec: pageThroughput(inputs, pageLinkBytesPerSec),
      rttMs: inputs.rttMs,
      roundsTaken: out.rounds,
    });
    if (decision.way === 'replay') return out;
    // chooseCatchUp bounds the rounds (DELTA_ROUNDS_MAX): the loop ends.
    out.rounds++;
    out.deltaMs += decision.deltaMs;
    out.deltaBytes += deltaPages * d.pageWireBytes;
    out.backlogMs = decision.deltaMs;
    sinceInstantMs = decision.deltaMs;
  }
}

/**
 * CR/TR: checkpoint, log alongside, catch-up, switchover at about one unit. `hybrid`: the catch-up
 * may send delta checkpoints (otherwise it replays the log only).
 */
export function predictCrtr(inputs: PredictionInputs, d: Derived, hybrid: boolean): MethodPrediction {
  const base = { method: 'crtr' as const, available: inputs.available.includes('crtr'), logOnlyCatchUp: !hybrid };
  const logRate = inputs.logBytesPerSec;
  if (logRate >= d.linkBytesPerSec) {
    return never(base, `the log alone (${fmtMiB(logRate)}/s) fills the link (${fmtMiB(d.linkBytesPerSec)}/s): the replica can never catch up`);
  }
  const pageLink = d.linkBytesPerSec - logRate;
  const checkpointMs = (pageSeconds(inputs, d, d.nonZeroPages, pageLink) + inputs.rttMs / 1000) * 1000;
  const stallMs = cowStallSeconds(inputs, d, checkpointMs / 1000) * 1000;
  const catchUp: CatchUp = hybrid ? hybridRounds(inputs, d, checkpointMs, pageLink) : { rounds: 0, deltaMs: 0, deltaBytes: 0, backlogMs: checkpointMs };
  const r = d.replayRate;
  const link = d.linkBytesPerSec === Infinity ? 0 : d.linkBytesPerSec;
  const downtimeFor = (unitsToReplay: number) =>
    expectedDowntimeMs({ unsentLogBytes: d.unitLogBytes, unitsToReplay, unitMs: inputs.unitMs, replayRate: r, throughputBytesPerSec: link, rttMs: inputs.rttMs });
  // What is left of the maximum duration once the checkpoint and the deltas are done.
  const drainBudgetMs = Math.max(0, (inputs.maxDurationMs ?? MAX_DURATION_MS_DEFAULT) - checkpointMs - catchUp.deltaMs);
  const { replayMs, downtimeMs, throttledMs, how } = crtrSwitchover(inputs, r, catchUp.backlogMs, drainBudgetMs, downtimeFor);
  const { converges, verdict } = withinLimit(downtimeMs, inputs);
  const runMs = checkpointMs + catchUp.deltaMs + replayMs;
  const setupMs = SETUP_ROUND_TRIPS * inputs.rttMs;
  const bytes = d.nonZeroPages * d.pageWireBytes + catchUp.deltaBytes + (logRate * runMs) / 1000 + d.unitLogBytes;
  const deltas = catchUp.rounds > 0 ? `${catchUp.rounds} delta round(s) (${fmtMiB(catchUp.deltaBytes)}, ${fmtMs(catchUp.deltaMs)}), then ` : '';
  const stall = stallMs > 0 ? `; the guest stalls ${fmtMs(stallMs)} on the copy-on-write pool` : '';
  return {
    ...base,
    converges,
    downtimeMs,
    totalTimeMs: setupMs + runMs + downtimeMs,
    bytes,
    disruptionMs: downtimeMs + stallMs + throttledMs,
    rounds: catchUp.rounds,
    reason: `checkpoint of ${fmtMiB(d.nonZeroPages * d.pageWireBytes)} in ${fmtMs(checkpointMs)}, ${deltas}${how}${stall}${verdict}`,
  };
}

interface CrtrSwitchover {
  /** From the end of the catch-up's deltas to the stop. */
  replayMs: number;
  downtimeMs: number;
  /** The guest's work given up to the final approach. */
  throttledMs: number;
  how: string;
}

/**
 * CR/TR's switchover: the backlog the catch-up leaves drains (replay faster than the guest) until
 * only the unit in progress is left, or the stop comes with what is left: at the maximum duration,
 * or one window after the backlog stopped shrinking. Then the final approach (shared/approach.ts)
 * slows the guest until the replica drained to what a steady log has, if that pays. `r`: the
 * replay rate, a multiple of the guest's speed.
 */
function crtrSwitchover(inputs: PredictionInputs, r: number, backlogMs: number, drainBudgetMs: number, downtimeFor: (units: number) => number): CrtrSwitchover {
  const unitMs = inputs.unitMs;
  // A backlog that shrinks by less than a unit over the convergence window does not shrink for the
  // source's monitor either: under `force` that is the final approach's cue, as for r <= 1.
  const shrinks = r > 1 && ((r - 1) * SWITCHOVER_WINDOW_MS) / unitMs >= 1;
  const drainMs = shrinks ? Math.max(0, backlogMs - SWITCHOVER_UNITS_FLOOR * unitMs) / (r - 1) : Infinity;
  if (shrinks && drainMs <= drainBudgetMs) {
    // The backlog drains at r - 1 until only the unit in progress is left.
    return { replayMs: drainMs, downtimeMs: downtimeFor(SWITCHOVER_UNITS_FLOOR), throttledMs: 0, how: `replay at ${r.toFixed(1)}x drains the ${fmtMs(backlogMs)} backlog in ${fmtMs(drainMs)}; switchover with one unit left` };
  }
  // It would drain, but not before the maximum duration; or replay is no faster than the guest and
  // the switchover comes one window after the backlog stopped shrinking.
  const replayMs = shrinks ? drainBudgetMs : SWITCHOVER_WINDOW_MS;
  const leftMs = shrinks ? Math.max(SWITCHOVER_UNITS_FLOOR * unitMs, backlogMs - (r - 1) * drainBudgetMs) : backlogMs + (1 - r) * SWITCHOVER_WINDOW_MS;
  const floorUnits = stopUnitsFloor(inputs.rttMs, unitMs);
  const approach = planApproach({ backlogUnits: leftMs / unitMs + floorUnits, floorUnits, unitMs, replayRate: r, throttle: 1 });
  if (approach.approach && inputs.finalApproach !== false) {
    return {
      replayMs: replayMs + approach.predictedMs,
      downtimeMs: downtimeFor(SWITCHOVER_UNITS_FLOOR),
      throttledMs: approach.costMs,
      how: `replay at ${r.toFixed(2)}x leaves ${fmtMs(leftMs)} of backlog; the final approach slows the guest to ${approach.throttle} for ${fmtMs(approach.predictedMs)} (${fmtMs(approach.costMs)} of its work) and the switchover comes with one unit left`,
    };
  }
  const how = shrinks ? `replay at ${r.toFixed(2)}x would drain the backlog in ${fmtMs(drainMs)}, past the maximum duration: ${fmtMs(leftMs)} of it is replayed within the downtime` : `replay at ${r.toFixed(2)}x never drains the backlog: ${fmtMs(leftMs)} of it is replayed within the downtime`;
  return { replayMs, downtimeMs: downtimeFor(leftMs / unitMs), throttledMs: 0, how };
}

/** Pre-copy: rounds of dirty pages under Xen's stop rules and rate limits, then the last set. */
export function predictPrecopy(inputs: PredictionInputs, d: Derived): MethodPrediction {
  const base = { method: 'precopy' as const, available: inputs.available.includes('precopy'), logOnlyCatchUp: false };
  let elapsedMs = SETUP_ROUND_TRIPS * inputs.rttMs;
  let bytes = 0;
  let sentRawBytes = 0;
  let dirtyBytesPerSec = 0;
  let toSend = d.pageCount;
  let nonZero = d.nonZeroPages;
  let dirty = 0;
  let rounds = 0;
  let stopReason = '';
  for (;;) {
    const rate = Math.min(d.linkBytesPerSec, precopyRoundRate(rounds, dirtyBytesPerSec, inputs.maxBandwidthBytesPerSec));
    const indexBytes = toSend * PAGE_BATCH_BYTES_PER_PAGE;
    const roundS = pageSeconds(inputs, d, nonZero, rate) + (rate === Infinity ? 0 : indexBytes / rate);
    elapsedMs += roundS * 1000;
    bytes += nonZero * d.pageWireBytes + indexBytes;
    sentRawBytes += toSend * PAGE_BYTES;
    dirty = Math.round(d.workingSet.dirtied(roundS * 1000));
    dirtyBytesPerSec = (dirty * PAGE_BYTES) / Math.max(0.001, roundS);
    rounds++;
    const verdict = precopyShouldStop({ roundsDone: rounds, dirtyPages: dirty, sentBytes: sentRawBytes, memoryBytes: inputs.memoryBytes });
    if (verdict.stop) {
      stopReason = verdict.reason;
      break;
    }
    toSend = nonZero = dirty;
  }
  const lastPages = dirty;
  const lastMs = (pageSeconds(inputs, d, lastPages, d.linkBytesPerSec) + linkSeconds(d, lastPages * PAGE_BATCH_BYTES_PER_PAGE + MACHINE_STATE_BYTES)) * 1000;
  // The last pages and the machine state, the target's acknowledgement, the commit round trip.
  const downtimeMs = lastMs + 2 * inputs.rttMs;
  const { converges, verdict } = withinLimit(downtimeMs, inputs);
  return {
    ...base,
    converges,
    downtimeMs,
    totalTimeMs: elapsedMs + downtimeMs,
    bytes: bytes + lastPages * d.pageWireBytes + MACHINE_STATE_BYTES,
    disruptionMs: downtimeMs,
    rounds,
    reason: `${rounds} round(s) in ${fmtMs(elapsedMs)}, stopped at ${stopReason}; the last ${lastPages} pages go in ${fmtMs(lastMs)}${verdict}`,
  };
}

/**
 * Post-copy's demand faults while `pushS` of pages go in order: the guest's newly touched pages
 * at t, each still missing with probability 1 - t / pushS. Only written pages are measured, so
 * pages the guest only reads are not counted.
 */
export function postcopyFaults(d: Derived, pushS: number): number {
  if (!(pushS > 0)) return 0;
  let faults = 0;
  let before = 0;
  for (let i = 1; i <= GRID_POINTS; i++) {
    const t = (pushS * i) / GRID_POINTS;
    const touched = d.workingSet.dirtied(t * 1000);
    faults += (touched - before) * (1 - (t - pushS / GRID_POINTS / 2) / pushS);
    before = touched;
  }
  return faults;
}

/** Post-copy: switch at once; every page follows, the ones the guest touches first on demand. */
export function predictPostcopy(inputs: PredictionInputs, d: Derived): MethodPrediction {
  const base = { method: 'postcopy' as const, available: inputs.available.includes('postcopy'), logOnlyCatchUp: false };
  // The machine state goes and the target's activation comes back: one round trip.
  const downtimeMs = linkSeconds(d, MACHINE_STATE_BYTES) * 1000 + inputs.rttMs;
  const pushS = pageSeconds(inputs, d, d.nonZeroPages, d.linkBytesPerSec) + linkSeconds(d, d.pageCount * PAGE_BATCH_BYTES_PER_PAGE);
  const faults = postcopyFaults(d, pushS);
  // The pages one unit needs are fetched together: one round trip per unit that faults.
  const fetches = Math.min(faults, (pushS * 1000) / inputs.unitMs);
  // A guest stalled through the whole push loses at most the push: by then every page is there.
  const faultStallMs = Math.min(pushS * 1000, fetches * inputs.rttMs + faults * pageSeconds(inputs, d, 1, d.linkBytesPerSec) * 1000);
  const { converges, verdict } = withinLimit(downtimeMs, inputs);
  return {
    ...base,
    converges,
    downtimeMs,
    totalTimeMs: SETUP_ROUND_TRIPS * inputs.rttMs + downtimeMs + pushS * 1000 + inputs.rttMs,
    bytes: d.nonZeroPages * d.pageWireBytes + d.pageCount * PAGE_BATCH_BYTES_PER_PAGE + MACHINE_STATE_BYTES + faults * 4,
    disruptionMs: downtimeMs + faultStallMs,
    rounds: 0,
    reason: `switch in ${fmtMs(downtimeMs)}; then ${fmtMiB(d.nonZeroPages * d.pageWireBytes)} of pages are pushed in ${fmtMs(pushS * 1000)} while the guest faults on about ${Math.round(faults)} pages (${Math.round(fetches)} fetches of a round trip each, ${fmtMs(faultStallMs)} stalled)${verdict}`,
  };
}

/** Whether a predicted downtime is within the limit, and if not, the words that say so. */
function withinLimit(downtimeMs: number, inputs: PredictionInputs): { converges: boolean; verdict: string } {
  const converges = downtimeMs <= inputs.downtimeLimitMs;
  return { converges, verdict: converges ? '' : `: downtime ${fmtMs(downtimeMs)} is over the ${inputs.downtimeLimitMs} ms limit` };
}
