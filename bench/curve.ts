// Convergence curves from the GetJob samples of one run: what is left to do against time.
//
// - crtr: remainingUnits (units recorded and not yet replayed on the target). It grows during the
//   checkpoint (the target cannot replay before it has restored the image), then falls as replay,
//   which skips the guest's idle time, catches up.
// - precopy: dirty pages still to send. Round 0 (the full copy) is exact: remainingBytes is the
//   memory not yet covered, / 4096. For later rounds the agent's GetJob does not carry the dirty
//   set: its refreshStats() rewrites remainingBytes as "checkpoint not yet covered + unsent log",
//   which is 0 for pre-copy once round 0 is done (source-agent/migration.ts). Until that is fixed
//   (then remainingBytes/4096 is used as is, detected below), the curve of rounds >= 1 is
//   reconstructed after the run from the samples: round k sends the dirty set of round k-1, so
//   the wire bytes round k moved in total, less what it had moved at the sample, is what is left
//   of it; shown in 4 KiB page equivalents of wire bytes (exact for incompressible pages such as
//   mmuncher's, an under-count for pages lz4 shrinks). Rounds shorter than the 100 ms sampling
//   merge into their neighbours.
// - postcopy: remainingBytes / 4096 (pages not yet on the target), as the agent reports them.

import { PAGE_BYTES } from '../shared/driver/types.js';
import { type CurvePoint, isCrtr, type RunRecord } from './run-record.js';

export interface SeriesPoint {
  tS: number;
  value: number;
}

export interface Series {
  measure: string;
  /** Where the values come from (precopy: 'remainingBytes' or 'reconstructed'). */
  source: string;
  points: SeriesPoint[];
}

export const MEASURE = {
  crtr: 'remaining replay units',
  precopy: 'dirty pages left to send',
  postcopy: 'pages not yet on the target',
} as const;

/** Samples of a job still moving memory: running and not yet at its commitment. */
function moving(p: CurvePoint): boolean {
  // 'setup', 'active' and 'stop-and-copy': the statuses of results.json files made before Control v2.
  return (p.status === 'running' || p.status === 'setup' || p.status === 'active' || p.status === 'stop-and-copy') && p.phase !== 'commitment' && p.phase !== 'activation';
}

export function convergenceSeries(r: RunRecord): Series {
  const curve = r.curve;
  if (isCrtr(r.method)) {
    return { measure: MEASURE.crtr, source: 'remainingUnits', points: curve.map((p) => ({ tS: p.tMs / 1000, value: p.remainingUnits })) };
  }
  if (r.method === 'postcopy') {
    return { measure: MEASURE.postcopy, source: 'remainingBytes', points: curve.map((p) => ({ tS: p.tMs / 1000, value: p.remainingBytes / PAGE_BYTES })) };
  }
  const agentReportsDirty = curve.some((p) => p.rounds >= 1 && moving(p) && p.remainingBytes > 0);
  if (agentReportsDirty) {
    return { measure: MEASURE.precopy, source: 'remainingBytes', points: curve.map((p) => ({ tS: p.tMs / 1000, value: p.remainingBytes / PAGE_BYTES })) };
  }
  return { measure: MEASURE.precopy, source: 'reconstructed', points: reconstructPrecopy(curve) };
}

function reconstructPrecopy(curve: CurvePoint[]): SeriesPoint[] {
  // Wire bytes at the first sample of each completed-round count (the end of the previous round).
  const firstTxAtRounds = new Map<number, number>();
  for (const p of curve) if (!firstTxAtRounds.has(p.rounds)) firstTxAtRounds.set(p.rounds, p.transferredBytes);
  const counts = [...firstTxAtRounds.keys()].sort((a, b) => a - b);
  const finalTx = curve.length > 0 ? curve[curve.length - 1].transferredBytes : 0;
  /** Transferred bytes when the round being sent at a sample with `rounds` done will have ended. */
  const endOfRound = (rounds: number): number => {
    const next = counts.find((k) => k > rounds);
    return next === undefined ? finalTx : firstTxAtRounds.get(next)!;
  };
  return curve.map((p) => {
    const tS = p.tMs / 1000;
    if (!moving(p)) return { tS, value: 0 };
    if (p.rounds === 0) return { tS, value: p.remainingBytes / PAGE_BYTES };
    return { tS, value: Math.max(0, endOfRound(p.rounds) - p.transferredBytes) / PAGE_BYTES };
  });
}
