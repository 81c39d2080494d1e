// Hybrid catch-up (CR/TR): while the guest runs, each round brings the replica forward the cheaper
// way, from measured rates. A pure function of its inputs, so each decision is unit-tested alone.
//
// Two ways to bring the replica to the guest's present:
// - replay the backlog B (guest milliseconds recorded and not yet replayed): the replica replays at
//   r guest ms per wall ms while the guest adds 1 per wall ms, so the backlog drains in B / (r - 1)
//   (never, when r <= 1: a CPU-bound guest replays about as fast as it ran);
// - a delta checkpoint: the pages dirtied since the last checkpoint instant, as of a new instant,
//   take D ms to send and restore; the log restarts from the new instant, so the backlog is then
//   about D, which drains in D / (r - 1): D * r / (r - 1) in all.
// The delta pays when D * r < B (both sides share the 1 / (r - 1)); when r <= 1 neither drains,
// and the delta still pays when it leaves less backlog than it removes (D < B). On a busy host the
// guest may run slower than its schedule, at g guest ms per wall ms: then the backlog grows by g,
// drains at r - g, and the rule is D * max(r, g) < B. A delta must win
// by a margin (its estimate is rougher: compression and dirtying vary), the backlog must be worth
// it (more than a few units), and the rounds are bounded.
//
// The final switchover always goes through the log: a delta only shortens the backlog while the
// guest runs.

import { PAGE_BYTES } from './driver/types.js';

/** A delta must cost less than the backlog's replay by this factor. */
export const DELTA_MARGIN = 1.25;
/** Below this backlog (units), replaying is always cheap enough. */
export const DELTA_BACKLOG_UNITS_MIN = 8;
/** Delta rounds of one migration, at most. */
export const DELTA_ROUNDS_MAX = 16;

export interface CatchUpInputs {
  /** Units recorded and not yet replayed by the target (in flight and queued included). */
  backlogUnits: number;
  unitMs: number;
  /**
   * The replica's catch-up rate, guest ms replayed per wall ms while it has a backlog (best
   * measured as the source sees it drain, gaps included); 0 when not measured yet.
   */
  replayRate: number;
  /**
   * The guest's own speed, guest ms recorded per wall ms (1 when it keeps its schedule; less on a
   * host too busy for it). Default 1.
   */
  guestRate?: number;
  /** Pages dirtied since the last checkpoint instant: the next delta's size. */
  deltaPages: number;
  /** Expected bytes on the wire per page of a delta (measured from the checkpoint: after lz4). */
  pageWireBytes: number;
  /** Expected guest memory restored per second by the target (0: not limiting / unknown). */
  restoreBytesPerSec: number;
  /** Throughput of the checkpoint on the wire, bytes per second. */
  throughputBytesPerSec: number;
  /**
   * The log's bytes per second of guest time (0: not known). A log that fills the link alone can
   * never let the switchover through, whatever a delta does to the backlog.
   */
  logBytesPerSec?: number;
  rttMs: number;
  /** Delta rounds taken so far in this migration. */
  roundsTaken: number;
}

export interface CatchUpDecision {
  way: 'replay' | 'delta';
  /** Backlog to replay, guest ms. */
  backlogMs: number;
  /** Estimated time to send and restore the delta, ms. */
  deltaMs: number;
  /** Wall time to catch up each way (Infinity: it never does at these rates). */
  replayCatchUpMs: number;
  deltaCatchUpMs: number;
  reason: string;
}

/** Estimated time to send and restore a delta of `pages` pages. */
export function deltaCostMs(input: Pick<CatchUpInputs, 'deltaPages' | 'pageWireBytes' | 'restoreBytesPerSec' | 'throughputBytesPerSec' | 'rttMs'>): number {
  if (!(input.throughputBytesPerSec > 0)) return Infinity;
  const sendMs = ((input.deltaPages * input.pageWireBytes) / input.throughputBytesPerSec) * 1000;
  const restoreMs = input.restoreBytesPerSec > 0 ? ((input.deltaPages * PAGE_BYTES) / input.restoreBytesPerSec) * 1000 : 0;
  // Sending and restoring overlap chunk by chunk: the slower of the two sets the pace.
  return Math.max(sendMs, restoreMs) + input.rttMs;
}

/** Wall time for a replica `backlogMs` behind to catch up while the guest runs on at `guestRate`. */
export function replayCatchUpMs(backlogMs: number, replayRate: number, guestRate = 1): number {
  return replayRate > guestRate ? backlogMs / (replayRate - guestRate) : Infinity;
}

export function chooseCatchUp(input: CatchUpInputs): CatchUpDecision {
  const backlogMs = Math.max(0, input.backlogUnits) * input.unitMs;
  const deltaMs = deltaCostMs(input);
  const r = input.replayRate;
  const g = input.guestRate ?? 1;
  const replayMs = replayCatchUpMs(backlogMs, r, g);
  const deltaCatchUp = r > g ? deltaMs + replayCatchUpMs(g * deltaMs, r, g) : Infinity;
  const base = { backlogMs, deltaMs, replayCatchUpMs: replayMs, deltaCatchUpMs: deltaCatchUp };
  const fmt = (ms: number) => (Number.isFinite(ms) ? `${ms.toFixed(0)} ms` : 'never');
  if (!(r > 0)) return { ...base, way: 'replay', reason: 'replay rate not measured yet' };
  if (input.roundsTaken >= DELTA_ROUNDS_MAX) return { ...base, way: 'replay', reason: `${input.roundsTaken} delta rounds taken, the most one migration takes` };
  if (input.backlogUnits < DELTA_BACKLOG_UNITS_MIN) return { ...base, way: 'replay', reason: `backlog of ${input.backlogUnits} units is small` };
  if (!Number.isFinite(deltaMs)) return { ...base, way: 'replay', reason: 'checkpoint throughput not measured' };
  const logRate = input.logBytesPerSec ?? 0;
  if (logRate >= input.throughputBytesPerSec) {
    return { ...base, way: 'replay', reason: `the log alone (${(logRate / 1e6).toFixed(1)} MB/s) fills the link (${(input.throughputBytesPerSec / 1e6).toFixed(1)} MB/s): no delta lets the switchover through` };
  }
  // D * max(r, g) * margin < B: see the head comment.
  const weighted = deltaMs * Math.max(r, g) * DELTA_MARGIN;
  const summary = `backlog ${fmt(backlogMs)} of guest time (catch-up by replay ${fmt(replayMs)} at ${r.toFixed(2)}x${g !== 1 ? `, the guest at ${g.toFixed(2)}x` : ''}), delta of ${input.deltaPages} pages ${fmt(deltaMs)} (catch-up ${fmt(deltaCatchUp)})`;
  if (weighted < backlogMs) return { ...base, way: 'delta', reason: `delta: ${summary}` };
  return { ...base, way: 'replay', reason: `replay: ${summary}` };
}
