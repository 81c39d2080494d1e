// report.md's "Predicted against measured": per profile/link/size cell, what EstimateMigration
// predicted before the cell's runs (bench/prediction.ts) next to what the runs measured (medians
// over repeats of completed runs: downtime, total time, data, guest disruption), with the ratio
// measured / predicted; then the median ratios over all cells, per method.

import { MIB_BYTES } from './format.js';
import { groupBy } from './plots.js';
import { type CellPrediction, cellKey } from './prediction.js';
import type { Method, RunRecord } from './run-record.js';
import { median } from './stats.js';

type Json = Record<string, unknown>;

const LABEL: Record<Method, string> = { crtr: 'CR/TR', 'crtr-log': 'CR/TR log-only', precopy: 'pre-copy', postcopy: 'post-copy' };

/** The bench's name of a predicted method. */
function benchMethod(m: Json): Method | null {
  switch (m.method) {
    case 'METHOD_CRTR':
      return m.logOnlyCatchUp === true ? 'crtr-log' : 'crtr';
    case 'METHOD_PRECOPY':
      return 'precopy';
    case 'METHOD_POSTCOPY':
      return 'postcopy';
    default:
      return null;
  }
}

/** A predicted figure: results.json keeps Infinity ("never") as null. */
const figure = (x: unknown): number => (typeof x === 'number' ? x : Infinity);
const fmt = (x: number, digits: number) => (Number.isFinite(x) ? x.toFixed(digits) : x === Infinity ? 'never' : '–');
const ratio = (measured: number, predicted: number) => (Number.isFinite(measured) && Number.isFinite(predicted) && predicted > 0 ? measured / predicted : NaN);
const fmtRatio = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : '–');

interface Row {
  method: Method;
  ratios: { downtime: number; total: number; data: number; disruption: number };
  line: string;
}

function methodRow(m: Json, runs: RunRecord[]): Row | null {
  const method = benchMethod(m);
  if (method === null) return null;
  const rs = runs.filter((r) => r.method === method);
  const ok = rs.filter((r) => r.status === 'completed');
  const measured = {
    downtime: median(ok.map((r) => r.downtimeMs)),
    total: median(ok.map((r) => r.totalTimeMs / 1000)),
    data: median(ok.map((r) => r.transferredBytes / MIB_BYTES)),
    // NaN in records made before the disruption was measured.
    disruption: median(ok.map((r) => r.disruptionMs ?? NaN)),
  };
  const predicted = { downtime: figure(m.downtimeMs), total: figure(m.totalTimeMs) / 1000, data: figure(m.transferredBytes) / MIB_BYTES, disruption: figure(m.disruptionMs) };
  const ratios = {
    downtime: ratio(measured.downtime, predicted.downtime),
    total: ratio(measured.total, predicted.total),
    data: ratio(measured.data, predicted.data),
    disruption: ratio(measured.disruption, predicted.disruption),
  };
  const converged = rs.length === 0 ? 'not run' : `${ok.filter((r) => !r.forced).length}/${rs.length}`;
  const line = `| ${LABEL[method]}${m.available === false ? ' (not available)' : ''} | ${m.converges === true ? 'yes' : 'no'} / ${converged} | ${fmt(predicted.downtime, 1)} / ${fmt(measured.downtime, 1)} | ${fmtRatio(ratios.downtime)} | ${fmt(predicted.total, 2)} / ${fmt(measured.total, 2)} | ${fmtRatio(ratios.total)} | ${fmt(predicted.data, 0)} / ${fmt(measured.data, 0)} | ${fmtRatio(ratios.data)} | ${fmt(predicted.disruption, 1)} / ${fmt(measured.disruption, 1)} | ${fmtRatio(ratios.disruption)} | ${String(m.rounds ?? 0)} |`;
  return { method, ratios, line };
}

/** What the estimate measured, in one paragraph. */
function inputsLine(p: CellPrediction, e: Json): string {
  const g = (e.guest ?? {}) as Json;
  const l = (e.link ?? {}) as Json;
  const n = (x: unknown) => (typeof x === 'number' ? x : NaN);
  const source = (x: unknown) => String(x ?? '').replace('INPUT_SOURCE_', '').toLowerCase();
  return (
    `Estimate (${(n(e.elapsedMs) / 1000).toFixed(1)} s; cell ${(p.wallMs / 1000).toFixed(1)} s with boot and warm-up): ` +
    `RTT ${n(l.rttMs).toFixed(1)} ms, bandwidth ${(n(l.bandwidthBytesPerSec) / 1e6).toFixed(0)} MB/s (${source(l.bandwidthSource)}), ` +
    `${(100 * n(g.nonZeroFraction)).toFixed(0)}% non-zero, lz4 ${n(g.pageWireRatio).toFixed(2)}, lz4 speed ${(n(g.compressBytesPerSec) / 1e6).toFixed(0)} MB/s, ` +
    `busy ${(100 * n(g.busyFraction)).toFixed(0)}% (replay ${n(g.replayRate).toFixed(1)}x), ` +
    `dirtying ${n(g.dirtyPagesPerSec).toFixed(0)} pages/s over ${n(g.workingSetPages).toFixed(0)} pages, log ${(n(g.logBytesPerSec) / 1e6).toFixed(2)} MB/s (${source(g.logSource)}). ` +
    `Recommended: **${String(e.recommendedMethod ?? '').replace('METHOD_', '').toLowerCase()}**: ${String(e.recommendationReason ?? '')}`
  );
}

function cellSection(p: CellPrediction, runs: RunRecord[], rows: Row[]): string {
  const lines = [`### ${p.kind === 'scaling' ? 'scaling: ' : ''}${p.profile}, ${p.link}, ${p.memoryBytes / MIB_BYTES} MiB`, ''];
  if (p.status !== 'ok' || p.estimate === null) return [...lines, `Estimate failed: ${p.error}`, ''].join('\n');
  const e = p.estimate;
  lines.push(inputsLine(p, e), '');
  lines.push('| method | converges (predicted / measured) | downtime ms (predicted / measured) | × | total s | × | data MiB | × | disruption ms | × | rounds (predicted) |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const m of (e.methods ?? []) as Json[]) {
    const row = methodRow(m, runs);
    if (row === null) continue;
    rows.push(row);
    lines.push(row.line);
  }
  lines.push('');
  return lines.join('\n');
}

/** The section, or '' without predictions. */
export function predictionSection(predictions: readonly CellPrediction[], runs: readonly RunRecord[]): string {
  if (predictions.length === 0) return '';
  const byCell = groupBy(
    runs.filter((r) => r.kind !== 'dataplane'),
    (r) => cellKey(r),
  );
  const out = [
    '## Predicted against measured',
    '',
    "Before each cell's runs, one EstimateMigration (2 s sample of the guest, 8 MiB bandwidth probe) on fresh agents with the cell's guest (same seed) through the cell's link; its predictions beside the runs' medians. × is measured / predicted. Converges (measured): runs completed without a forced stop, of those run. The model and its formulas: README, \"Prediction before start\".",
    '',
  ];
  const rows: Row[] = [];
  for (const p of predictions) out.push(cellSection(p, byCell.get(cellKey(p)) ?? [], rows));
  if (rows.length > 0) {
    out.push('Median of measured / predicted over the cells:', '');
    out.push('| method | cells | downtime | total time | data | disruption |', '|---|---|---|---|---|---|');
    for (const [method, rs] of groupBy(rows, (r) => r.method)) {
      const med = (f: (r: Row) => number) => fmtRatio(median(rs.map(f)));
      out.push(`| ${LABEL[method as Method]} | ${rs.length} | ${med((r) => r.ratios.downtime)} | ${med((r) => r.ratios.total)} | ${med((r) => r.ratios.data)} | ${med((r) => r.ratios.disruption)} |`);
    }
    out.push('');
  }
  return out.join('\n');
}
