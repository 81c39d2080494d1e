// report.md of the bench harness: per workload profile, link and guest size, the three figures
// (downtime, total migration time, total data transmitted) and the guest's disruption per method
// as median and min-max over repeats, the ratios CR/TR / pre-copy and CR/TR / post-copy (of the
// medians), the disruption's terms, and CR/TR's measured downtime over its lower bound; then the
// scaling runs, the data plane, and the plots.

import { type DataplaneResult, dataplaneMarkdown } from './dataplane.js';
import type { CellPrediction } from './prediction.js';
import { predictionSection } from './prediction-report.js';
import { MIB_BYTES } from './format.js';
import { groupBy } from './plots.js';
import type { Method, RunRecord } from './run-record.js';
import { fmtRatio, fmtSummary, median, summarize } from './stats.js';

export interface ReportMeta {
  title: string;
  command: string;
  startedAt: string;
  wallSeconds: number;
  host: { cpus: number; cpuModel: string; memoryGiB: number; node: string; loadavgStart: number[]; loadavgEnd: number[]; cpuPressureStart: string; cpuPressureEnd: string };
  options: Record<string, unknown>;
  methodsSkipped: Array<{ method: string; reason: string }>;
  fullMatrixEstimate: { runs: number; seconds: number; how: string };
  plots: Array<{ file: string; caption: string }>;
}

const fmtLoad = (l: Array<number | null>) => (l.some((x) => typeof x !== 'number') ? 'not recorded' : l.map((x) => (x as number).toFixed(2)).join(', '));
const hms = (s: number) => (s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min` : s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(0)} s`);

interface MethodFigures {
  n: number;
  ok: number;
  downtime: ReturnType<typeof summarize>;
  disruption: ReturnType<typeof summarize>;
  /** Medians of the disruption's terms besides the downtime, ms (NaN for runs made before it was measured). */
  stall: number;
  targetStall: number;
  throttled: number;
  lostSchedule: number;
  total: ReturnType<typeof summarize>;
  data: ReturnType<typeof summarize>;
  rounds: ReturnType<typeof summarize>;
  deltaRounds: ReturnType<typeof summarize>;
  forced: number;
  digestsOk: number;
  overBound: ReturnType<typeof summarize>;
  bound: ReturnType<typeof summarize>;
  boundLog: number;
  boundRtt: number;
  boundReplay: number;
  statuses: string[];
}

function figuresOf(runs: RunRecord[]): MethodFigures {
  const ok = runs.filter((r) => r.status === 'completed');
  return {
    n: runs.length,
    ok: ok.length,
    downtime: summarize(ok.map((r) => r.downtimeMs)),
    disruption: summarize(ok.map((r) => r.disruptionMs ?? NaN)),
    stall: median(ok.map((r) => r.disruption?.sourceStallMs ?? NaN)),
    targetStall: median(ok.map((r) => r.disruption?.targetStallMs ?? NaN)),
    throttled: median(ok.map((r) => r.disruption?.throttledMs ?? NaN)),
    lostSchedule: median(ok.map((r) => r.disruption?.lostScheduleMs ?? NaN)),
    total: summarize(ok.map((r) => r.totalTimeMs / 1000)),
    data: summarize(ok.map((r) => r.transferredBytes / MIB_BYTES)),
    rounds: summarize(ok.map((r) => r.rounds)),
    deltaRounds: summarize(ok.map((r) => r.deltaRounds ?? 0)),
    forced: ok.filter((r) => r.forced).length,
    digestsOk: ok.filter((r) => r.digestsMatch).length,
    overBound: summarize(ok.map((r) => r.downtimeOverBound ?? NaN)),
    bound: summarize(ok.map((r) => r.downtimeLowerBoundMs ?? NaN)),
    boundLog: median(ok.map((r) => r.lowerBound?.logTransferMs ?? NaN)),
    boundRtt: median(ok.map((r) => r.lowerBound?.rttMs ?? NaN)),
    boundReplay: median(ok.map((r) => r.lowerBound?.replayMs ?? NaN)),
    statuses: runs.filter((r) => r.status !== 'completed').map((r) => `${r.status}${r.error ? `: ${r.error}` : ''}`),
  };
}

const METHOD_ORDER: Method[] = ['crtr', 'crtr-log', 'precopy', 'postcopy'];
const METHOD_LABEL: Record<Method, string> = { crtr: 'CR/TR', 'crtr-log': 'CR/TR log-only', precopy: 'pre-copy', postcopy: 'post-copy' };

interface Comparison {
  profile: string;
  link: string;
  memoryMiB: number;
  other: Method;
  downtime: number;
  disruption: number;
  total: number;
  data: number;
}

function groupKey(r: RunRecord): string {
  return `${r.profile}|${r.link}|${r.memoryBytes}`;
}

/** One section per profile/link/memory: the table of figures and the ratios. */
function groupSection(runs: RunRecord[], comparisons: Comparison[]): string {
  const r0 = runs[0];
  const memoryMiB = r0.memoryBytes / MIB_BYTES;
  const lines: string[] = [];
  lines.push(`### ${r0.profile}, ${r0.link}, ${memoryMiB} MiB`);
  lines.push('');
  lines.push('| method | runs ok | downtime (ms) | disruption (ms) | total time (s) | data transmitted (MiB) | rounds | delta rounds | forced | digests equal |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|');
  const byMethod = new Map<Method, MethodFigures>();
  for (const m of METHOD_ORDER) {
    const rs = runs.filter((r) => r.method === m);
    if (rs.length === 0) continue;
    const f = figuresOf(rs);
    byMethod.set(m, f);
    lines.push(
      `| ${METHOD_LABEL[m]} | ${f.ok}/${f.n} | ${fmtSummary(f.downtime, 0)} | ${fmtSummary(f.disruption, 0)} | ${fmtSummary(f.total, 2)} | ${fmtSummary(f.data, 0)} | ${fmtSummary(f.rounds, 0)} | ${m === 'crtr' ? fmtSummary(f.deltaRounds, 0) : ''} | ${f.forced} | ${f.digestsOk}/${f.ok} |`,
    );
  }
  lines.push('');
  lines.push(disruptionTermsLine(byMethod));
  const failures = [...byMethod.entries()].flatMap(([m, f]) => f.statuses.map((s) => `${METHOD_LABEL[m]}: ${s}`));
  const crtr = byMethod.get('crtr');
  if (crtr && crtr.ok > 0) {
    const ratioRows: string[] = [];
    for (const other of ['crtr-log', 'precopy', 'postcopy'] as const) {
      const o = byMethod.get(other);
      if (!o || o.ok === 0) continue;
      ratioRows.push(
        `| CR/TR / ${METHOD_LABEL[other]} | ${fmtRatio(crtr.downtime.median, o.downtime.median)} | ${fmtRatio(crtr.disruption.median, o.disruption.median)} | ${fmtRatio(crtr.total.median, o.total.median)} | ${fmtRatio(crtr.data.median, o.data.median)} |`,
      );
      comparisons.push({
        profile: r0.profile,
        link: r0.link,
        memoryMiB,
        other,
        downtime: crtr.downtime.median / o.downtime.median,
        disruption: crtr.disruption.median / o.disruption.median,
        total: crtr.total.median / o.total.median,
        data: crtr.data.median / o.data.median,
      });
    }
    if (ratioRows.length > 0) {
      lines.push('');
      lines.push('| ratio of medians | downtime | disruption | total time | data transmitted |');
      lines.push('|---|---|---|---|---|');
      lines.push(...ratioRows);
    }
    lines.push('');
    lines.push(
      `CR/TR downtime over its lower bound: **${fmtSummary(crtr.overBound, 2)}** (bound ${fmtSummary(crtr.bound, 1)} ms = log left at the suspend ${crtr.boundLog.toFixed(1)} + RTT ${crtr.boundRtt.toFixed(1)} + replay of the last units ${crtr.boundReplay.toFixed(1)} ms, medians).`,
    );
  }
  if (failures.length > 0) {
    lines.push('');
    for (const f of failures) lines.push(`- not completed: ${f}`);
  }
  lines.push('');
  return lines.join('\n');
}

/** Where each method's disruption comes from: the medians of its terms. */
function disruptionTermsLine(byMethod: Map<Method, MethodFigures>): string {
  const parts = [...byMethod.entries()]
    .filter(([, f]) => f.ok > 0 && Number.isFinite(f.disruption.median))
    .map(([m, f]) => {
      const stalls = m === 'postcopy' ? `page waits on the target ${f.targetStall.toFixed(0)}` : `stalls ${f.stall.toFixed(0)}`;
      return `${METHOD_LABEL[m]} ${f.disruption.median.toFixed(0)} = downtime ${f.downtime.median.toFixed(0)} + ${stalls} + throttled ${f.throttled.toFixed(0)} + lost schedule ${f.lostSchedule.toFixed(0)}`;
    });
  return parts.length === 0 ? 'Guest disruption: not measured in these runs.' : `Guest disruption by term (medians, ms; the terms' medians need not add up to the total's): ${parts.join('; ')}.`;
}

function comparisonTable(comparisons: Comparison[]): string {
  if (comparisons.length === 0) return '_No comparison: CR/TR or the other methods have no completed run._\n';
  const lines = ['| workload | link | MiB | CR/TR vs | downtime | disruption | total time | data |', '|---|---|---|---|---|---|---|---|'];
  const mark = (x: number) => (Number.isFinite(x) ? (x > 1 ? `**${x.toFixed(2)}×**` : `${x.toFixed(2)}×`) : '–');
  for (const c of comparisons) {
    lines.push(`| ${c.profile} | ${c.link} | ${c.memoryMiB} | ${METHOD_LABEL[c.other]} | ${mark(c.downtime)} | ${mark(c.disruption)} | ${mark(c.total)} | ${mark(c.data)} |`);
  }
  lines.push('');
  lines.push('Bold: CR/TR is worse than the other method on that figure (ratio of medians > 1).');
  return `${lines.join('\n')}\n`;
}

function scalingSection(runs: RunRecord[]): string {
  if (runs.length === 0) return '';
  const lines = ['## Scaling with guest memory', '', 'Downtime and total migration time against guest memory (median, min-max over repeats).', ''];
  lines.push('| workload | link | method | memory (MiB) | runs ok | downtime (ms) | disruption (ms) | total time (s) | data (MiB) | CR/TR measured/bound |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|');
  const groups = groupBy(runs, (r) => `${r.profile}|${r.link}|${r.method}|${r.memoryBytes}`);
  const sorted = [...groups.values()].sort((a, b) => {
    const x = a[0];
    const y = b[0];
    return x.profile.localeCompare(y.profile) || x.link.localeCompare(y.link) || METHOD_ORDER.indexOf(x.method) - METHOD_ORDER.indexOf(y.method) || x.memoryBytes - y.memoryBytes;
  });
  for (const rs of sorted) {
    const f = figuresOf(rs);
    const r = rs[0];
    lines.push(
      `| ${r.profile} | ${r.link} | ${METHOD_LABEL[r.method]} | ${r.memoryBytes / MIB_BYTES} | ${f.ok}/${f.n} | ${fmtSummary(f.downtime, 0)} | ${fmtSummary(f.disruption, 0)} | ${fmtSummary(f.total, 2)} | ${fmtSummary(f.data, 0)} | ${r.method === 'crtr' ? fmtSummary(f.overBound, 2) : ''} |`,
    );
  }
  return `${lines.join('\n')}\n`;
}

export function buildReport(meta: ReportMeta, runs: RunRecord[], dataplane: DataplaneResult | null, notes: string[], predictions: readonly CellPrediction[] = []): string {
  const out: string[] = [];
  const h = meta.host;
  out.push(`# ${meta.title}`);
  out.push('');
  out.push(`- command: \`${meta.command}\``);
  out.push(`- started ${meta.startedAt}; wall time **${hms(meta.wallSeconds)}**`);
  out.push(`- host: ${h.cpus} × ${h.cpuModel}, ${h.memoryGiB.toFixed(0)} GiB, Node ${h.node}; load average (1, 5, 15 min) at start ${fmtLoad(h.loadavgStart)}, at end ${fmtLoad(h.loadavgEnd)}${h.cpuPressureStart ? `; CPU pressure (/proc/pressure/cpu, some) at start ${h.cpuPressureStart}, at end ${h.cpuPressureEnd}` : ''}. The bench itself keeps both cores busy (source and target agents), so a load near 2-3 during it is its own; more means other work shared the machine.`);
  const o = meta.options;
  out.push(
    `- matrix: profiles ${String(o.profiles)}; methods ${String(o.methods)}; links ${String(o.links)}; memory ${String(o.memoryMiB)} MiB; ${String(o.repeats)} repeat(s); downtime limit ${String(o.downtimeLimitMs)} ms, policy ${String(o.policy ?? 'force')}, max duration ${Number(o.maxDurationMs) / 1000} s; warm-up ${String(o.warmupMs)} ms; GetJob every ${String(o.sampleMs)} ms; link emulator ${String(o.linkMode)}${o.noFinalApproach === true ? '; CR/TR without its final approach (--no-final-approach)' : ''}`,
  );
  for (const s of meta.methodsSkipped) out.push(`- **skipped method ${s.method}**: ${s.reason}`);
  const e = meta.fullMatrixEstimate;
  out.push(`- full matrix (\`npm run bench\` without --quick): ${e.runs} migrations, estimated **${hms(e.seconds)}** on this host (${e.how})`);
  out.push('');
  out.push(
    'Figures: **downtime** from the source suspend to the target resume; **disruption** the guest\'s lost progress against its schedule (one unit every unitMs) over the migration, from its start to the target\'s resume (post-copy: to the target guest\'s last page) = downtime + stalls (source: full log queue or copy-on-write pool; post-copy target: waits for pages) + throttled work + lost schedule (units due minus units run, × unitMs, beyond what the downtime and stalls explain); **total time** from the start of the migration to the commit; **data transmitted** every message between the agents (transferredBytes). Cells are median (min–max) over repeats of completed runs. Every method of one repeat boots its guest with the same environment_seed, so only the method differs. CR/TR\'s **lower bound** on downtime = stopLogWireBytes / link bandwidth + one link RTT + stopUnitsToReplay × unitMs / replayRate (0 bandwidth term on an unshaped link; stopLogWireBytes counts the log bytes sent after the suspend, as sent after lz4: the final unit and any backlog; bytes sent earlier and still in the link are not counted, so the bound stays a lower bound). replayRate is that of the last units, those the target replayed after the stop was granted (stopReplayRate; results made before it have the target\'s recent average there).',
  );
  out.push('');
  for (const n of notes) out.push(`> ${n}\n`);

  const matrix = runs.filter((r) => r.kind === 'matrix');
  const comparisons: Comparison[] = [];
  out.push('## Results per workload, link and guest size');
  out.push('');
  const groups = groupBy(matrix, groupKey);
  for (const rs of groups.values()) out.push(groupSection(rs, comparisons));
  out.push('## CR/TR against the baselines');
  out.push('');
  out.push(comparisonTable(comparisons));
  const losses = comparisons.filter((c) => c.downtime > 1 || c.disruption > 1 || c.total > 1 || c.data > 1);
  if (losses.length > 0) {
    out.push('Where CR/TR loses:');
    out.push('');
    for (const c of losses) {
      const what = [c.downtime > 1 ? `downtime ${c.downtime.toFixed(2)}×` : '', c.disruption > 1 ? `disruption ${c.disruption.toFixed(2)}×` : '', c.total > 1 ? `total time ${c.total.toFixed(2)}×` : '', c.data > 1 ? `data ${c.data.toFixed(2)}×` : ''].filter((x) => x !== '');
      out.push(`- ${c.profile}, ${c.link}, ${c.memoryMiB} MiB vs ${METHOD_LABEL[c.other]}: ${what.join(', ')}`);
    }
    out.push('');
  }
  out.push(scalingSection(runs.filter((r) => r.kind === 'scaling')));
  out.push(predictionSection(predictions, runs));
  if (dataplane) {
    out.push('## Data plane: checkpoint streaming against raw TCP');
    out.push('');
    out.push(dataplaneMarkdown(dataplane));
    out.push('');
  }
  if (meta.plots.length > 0) {
    out.push('## Plots');
    out.push('');
    for (const p of meta.plots) out.push(`- [${p.file}](${p.file}): ${p.caption}`);
    out.push('');
  }
  return out.join('\n');
}
