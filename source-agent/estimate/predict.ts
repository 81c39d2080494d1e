// Prediction before start: whether a migration of this guest over this link would converge, and
// what each method would cost (downtime, total time, bytes, guest disruption), from a few seconds
// of the guest's measured rates and the link's measured bandwidth and round trip. A pure function
// of its inputs, so each answer is unit-tested alone; the models replay the methods' own decision
// functions (shared/catch-up.ts, shared/convergence.ts, methods/precopy-rules.ts).
//
// Notation (inputs in model.ts): N guest pages, Z = N × nonZeroFraction pages not zero, P = 4096,
// c = P × pageWireRatio wire bytes of a page after lz4, B = min(link bandwidth, bandwidth cap)
// (unlimited when neither is known), R the round trip, L the log's bytes per second, u the unit
// length, ρ = min(100, 1 / busyFraction) the replay rate (replay skips the guest's idle time),
// W(t) the distinct pages dirtied over a window t (working-set.ts: S (1 - exp(-r t / S))).
// Moving n pages over a share b of the link takes
//   pages(n, b) = n × max(c / b, P / compress rate, P / restore rate)
// (the three overlap chunk by chunk: the slowest sets the pace; an unmeasured rate is not limiting).
//
// CR/TR (checkpoint, then log; methods.ts predictCrtr; with the log-only catch-up, no deltas):
//   never converges when L ≥ B (the log alone fills the link);
//   checkpoint  Tc = pages(Z, B - L) + R, the log streaming beside it;
//   catch-up    the replica replays once restored, so the backlog is Tc of guest time and W(Tc) pages
//               were dirtied since the instant; where both agents make deltas, while chooseCatchUp
//               says "delta", a delta round of D = deltaCostMs(W(since the instant)) ms is sent,
//               leaving a backlog of D (and the log-only catch-up is predicted beside it);
//   switchover  with ρ > 1 the backlog drains in (backlog - u) / (ρ - 1) and the downtime is one
//               unit's: expectedDowntimeMs(one unit of log, 1 unit to replay) = max(u L / B, u / ρ)
//               + 2R; unless that is past the maximum duration (default 600 s): then the stop is
//               forced with what is left then; with ρ ≤ 1 it never drains: after one switchover
//               window (2 s) the backlog, grown by (1 - ρ) × 2 s, is replayed within the downtime;
//   converges   when that downtime is within the limit;
//   bytes       Z c + the deltas' pages × c + L × (time until the suspend) + one unit;
//   disruption  downtime + stalls on the copy-on-write pool: the pool holds W(t) (1 - t / Tc)
//               pages at time t; past the pool (peak bytes Q) the guest stalls Tc (1 - pool / Q).
// Pre-copy (Xen's rules, precopyShouldStop and precopyRoundRate; predictPrecopy):
//   round 0     every page: pages(Z, B) + N × 4.125 bytes of page numbers and zero flags;
//   round i     the W(t(i-1)) pages dirtied during the previous round, at most at the previous
//               round's dirtying rate + 50 Mbit/s; stop below 50 dirty pages, after 30 rounds or
//               3x memory sent;
//   downtime    pages(last dirty set, B) + machine state / B + 2R (acknowledgement, commit);
//   disruption  the downtime.
// Post-copy (predictPostcopy):
//   downtime    machine state / B + R; then every page is pushed, pages(Z, B) + N × 4.125 / B;
//   faults      the pages the guest newly touches at t during the push, each missing with
//               probability 1 - t / push time (written pages only: reads are not measured);
//   disruption  downtime + one R per unit that faults (a unit's pages are fetched together) +
//               one page's transfer per fault, at most the push time (then every page is there).
// QEMU native (qemu-native.ts, for a guest of the qemu driver, whose only method it is): QEMU's
//   own pre-copy passes over its relayed stream, switching once what is left fits the limit.
// Only the methods the source guest's driver can carry out are predicted (PredictionInputs.methods).
// Every total time adds 2R of setup (capacity, reservation).
//
// Recommendation: among the methods both agents can carry out and that converge, the least
// disruption, then the least total time. Post-copy must also cost less than half the disruption of
// the best other method: until its push ends, a broken link leaves the guest split between the
// hosts. When none converges, the one with the least downtime, said to be over the limit.
//
// Not modelled: the target's restore rate unless given, log compression (the log is counted raw,
// an upper bound), throttling, a replay slower than 1 / busy (a loaded target), contention between
// the agents and the guest for the CPU (the guest's lost schedule is not in the disruption).

import type { MigrationMethod } from '../../shared/stats.js';
import { predictCrtr, predictPostcopy, predictPrecopy } from './methods.js';
import { predictQemuNative } from './qemu-native.js';
import { type Derived, derive, fmtMs, type MethodPrediction, POSTCOPY_PREFERENCE, type PredictionInputs } from './model.js';

export type { DirtyWindow, MethodPrediction, PredictionInputs } from './model.js';

/** The methods predicted when the inputs do not name the source driver's: the sim's. */
const SIM_METHODS: readonly MigrationMethod[] = ['crtr', 'precopy', 'postcopy'];

export interface Prediction {
  /**
   * The source driver's methods: crtr, then crtr with the log-only catch-up when the hybrid one is
   * possible, precopy, postcopy; qemu-native (its model is qemu-native.ts).
   */
  methods: MethodPrediction[];
  /** null when no method is available. */
  recommended: MigrationMethod | null;
  reason: string;
  /** What the models derived from the inputs, for display. */
  derived: { replayRate: number; dirtyPagesPerSec: number; workingSetPages: number; linkBytesPerSec: number; nonZeroPages: number };
}

export function predictMigration(inputs: PredictionInputs): Prediction {
  const d: Derived = derive(inputs);
  const wanted = inputs.methods ?? SIM_METHODS;
  const methods: MethodPrediction[] = [];
  if (wanted.includes('crtr')) methods.push(...(inputs.hybridCatchUp ? [predictCrtr(inputs, d, true), predictCrtr(inputs, d, false)] : [predictCrtr(inputs, d, false)]));
  if (wanted.includes('precopy')) methods.push(predictPrecopy(inputs, d));
  if (wanted.includes('postcopy')) methods.push(predictPostcopy(inputs, d));
  if (wanted.includes('qemu-native')) methods.push(predictQemuNative(inputs, d));
  const { recommended, reason } = recommend(methods);
  return {
    methods,
    recommended,
    reason,
    derived: { replayRate: d.replayRate, dirtyPagesPerSec: d.workingSet.pagesPerSec, workingSetPages: d.workingSet.workingSetPages, linkBytesPerSec: d.linkBytesPerSec, nonZeroPages: d.nonZeroPages },
  };
}

const LABEL: Record<MigrationMethod, string> = { crtr: 'CR/TR', precopy: 'pre-copy', postcopy: 'post-copy', 'qemu-native': 'QEMU native' };

/** Least disruption, then least total time (see the head comment for post-copy's handicap). */
function better(a: MethodPrediction, b: MethodPrediction): boolean {
  if (a.disruptionMs !== b.disruptionMs) return a.disruptionMs < b.disruptionMs;
  return a.totalTimeMs < b.totalTimeMs;
}

export function recommend(methods: readonly MethodPrediction[]): { recommended: MigrationMethod | null; reason: string } {
  // The log-only CR/TR is there for comparison when the hybrid catch-up is possible.
  const hybridPossible = methods.some((m) => m.method === 'crtr' && !m.logOnlyCatchUp);
  const available = methods.filter((m) => m.available && !(m.logOnlyCatchUp && hybridPossible));
  if (available.length === 0) return { recommended: null, reason: 'no method is available between these agents' };
  const converging = available.filter((m) => m.converges);
  if (converging.length === 0) {
    const closest = available.reduce((a, b) => (b.downtimeMs < a.downtimeMs ? b : a));
    return {
      recommended: closest.method,
      reason: `no method converges within the downtime limit; ${LABEL[closest.method]} comes closest (downtime ${fmtMs(closest.downtimeMs)})`,
    };
  }
  const others = converging.filter((m) => m.method !== 'postcopy');
  const postcopy = converging.find((m) => m.method === 'postcopy');
  const bestOther = others.length > 0 ? others.reduce((a, b) => (better(b, a) ? b : a)) : undefined;
  if (bestOther === undefined) return { recommended: 'postcopy', reason: `only post-copy converges (disruption ${fmtMs(postcopy!.disruptionMs)})` };
  const why = (m: MethodPrediction) => `disruption ${fmtMs(m.disruptionMs)}, downtime ${fmtMs(m.downtimeMs)}, total ${fmtMs(m.totalTimeMs)}`;
  if (postcopy !== undefined && postcopy.disruptionMs < POSTCOPY_PREFERENCE * bestOther.disruptionMs) {
    return { recommended: 'postcopy', reason: `post-copy disrupts the guest least (${why(postcopy)}), under half of ${LABEL[bestOther.method]}'s ${fmtMs(bestOther.disruptionMs)}` };
  }
  const runnersUp = converging.filter((m) => m !== bestOther).map((m) => `${LABEL[m.method]} ${fmtMs(m.disruptionMs)}`);
  const against = runnersUp.length > 0 ? ` (against ${runnersUp.join(', ')}${postcopy ? '; post-copy must halve it to be chosen, as a broken link during its push splits the guest' : ''})` : '';
  return { recommended: bestOther.method, reason: `${LABEL[bestOther.method]} converges with the least disruption: ${why(bestOther)}${against}` };
}
