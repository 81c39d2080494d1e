// SVG plots of the harness's results, rendered in Node without a browser: Vega-Lite specs
// compiled to Vega and rendered by a headless vega.View (renderer 'none', toSVG()). Vega lays out
// text with estimated glyph widths when no canvas package is installed, which is good enough for
// axis labels and titles.
//
// - convergence-<profile>-<link>-<MiB>.svg: what is left to do against time, one panel per
//   method (its own y measure: replay units, dirty pages, pages not yet on the target), one line
//   per repeat, a rule where the guest was suspended;
// - data-transmitted.svg: total data transmitted per method and profile, median with min-max
//   (the seed paper's Figure 8), one panel per link;
// - disruption.svg: the guest's disruption per method and profile (bars, medians with min-max),
//   with the downtime marked inside each bar (a tick), one panel per link;
// - downtime-vs-memory.svg: downtime (solid) and guest disruption (dashed) against guest memory
//   size per method, one panel per profile and link (medians, with min-max).

import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { convergenceSeries } from './curve.js';
import { MIB_BYTES } from './format.js';
import type { RunRecord } from './run-record.js';
import { median, summarize } from './stats.js';

const METHOD_COLORS = { domain: ['crtr', 'crtr-log', 'precopy', 'postcopy'], range: ['#1f77b4', '#9467bd', '#d62728', '#2ca02c'] };
const CONFIG = {
  background: 'white',
  font: 'DejaVu Sans, Helvetica, Arial, sans-serif',
  axis: { labelFontSize: 11, titleFontSize: 12 },
  header: { labelFontSize: 12, titleFontSize: 12 },
  legend: { labelFontSize: 11, titleFontSize: 12 },
  title: { fontSize: 14 },
  view: { stroke: '#ccc' },
};

export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const vgSpec = compile(spec).spec;
  const view = new vega.View(vega.parse(vgSpec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** One plot per profile/link/memory size: the convergence curve of every method and repeat. */
export function convergenceSpec(records: RunRecord[], title: string): TopLevelSpec | null {
  const methods = [...new Set(records.map((r) => r.method))];
  const panels: object[] = [];
  for (const method of methods) {
    const runs = records.filter((r) => r.method === method && r.curve.length > 0);
    if (runs.length === 0) continue;
    const values: object[] = [];
    const suspends: object[] = [];
    let measure = '';
    let source = '';
    for (const r of runs) {
      const s = convergenceSeries(r);
      measure = s.measure;
      source = s.source;
      for (const p of s.points) values.push({ tS: p.tS, value: p.value, repeat: `repeat ${r.repeat + 1}` });
      const stop = r.phases.find((p) => p.phase === 'stop-and-copy');
      if (stop) suspends.push({ tS: stop.tMs / 1000, repeat: `repeat ${r.repeat + 1}` });
    }
    const note = source === 'reconstructed' ? ' (after round 0: wire bytes / 4 KiB, reconstructed)' : '';
    panels.push({
      title: { text: `${method}: ${measure}${note}`, anchor: 'start', fontSize: 12 },
      width: 560,
      height: 150,
      layer: [
        {
          data: { values },
          mark: { type: 'line', interpolate: 'step-after', strokeWidth: 1.5 },
          encoding: {
            x: { field: 'tS', type: 'quantitative', title: 'time since migration start (s)' },
            y: { field: 'value', type: 'quantitative', title: method === 'crtr' || method === 'crtr-log' ? 'units' : 'pages', scale: { type: 'symlog' } },
            color: { field: 'repeat', type: 'nominal', title: 'run' },
          },
        },
        ...(suspends.length > 0
          ? [
              {
                data: { values: suspends },
                mark: { type: 'rule', strokeDash: [4, 3], color: '#555' },
                encoding: { x: { field: 'tS', type: 'quantitative' } },
              },
            ]
          : []),
      ],
    });
  }
  if (panels.length === 0) return null;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: title, subtitle: 'symlog y scale; dashed rule: guest suspended (stop-and-copy)' },
    config: CONFIG,
    vconcat: panels,
    resolve: { scale: { x: 'shared', y: 'independent', color: 'shared' } },
  } as TopLevelSpec;
}

/** Grouped bars: median total data transmitted per method and profile, min-max rules; a panel per link. */
export function dataTransmittedSpec(records: RunRecord[]): TopLevelSpec | null {
  const groups = groupBy(
    records.filter((r) => r.status === 'completed'),
    (r) => `${r.link}|${r.profile}|${r.method}|${r.memoryBytes}`,
  );
  const values = [...groups.values()].map((rs) => {
    const mib = rs.map((r) => r.transferredBytes / MIB_BYTES);
    const r = rs[0];
    return { link: `${r.link}, ${r.memoryBytes / MIB_BYTES} MiB`, profile: r.profile, method: r.method, median: median(mib), min: Math.min(...mib), max: Math.max(...mib) };
  });
  if (values.length === 0) return null;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Total data transmitted per method and workload', subtitle: 'median over repeats, rule: min-max (cf. CR/TR-Motion, Figure 8)' },
    config: CONFIG,
    data: { values },
    facet: { column: { field: 'link', type: 'nominal', title: 'link, guest memory' } },
    spec: {
      width: { step: 26 },
      height: 260,
      layer: [
        { mark: 'bar', encoding: { y: { field: 'median', type: 'quantitative', title: 'data transmitted (MiB)' } } },
        { mark: 'rule', encoding: { y: { field: 'min', type: 'quantitative' }, y2: { field: 'max' }, color: { value: 'black' } } },
      ],
      encoding: {
        x: { field: 'profile', type: 'nominal', title: 'workload', axis: { labelAngle: 0 } },
        xOffset: { field: 'method', type: 'nominal', scale: { domain: METHOD_COLORS.domain.filter((m) => values.some((v) => v.method === m)) } },
        color: { field: 'method', type: 'nominal', scale: METHOD_COLORS, title: 'method' },
      },
    },
  } as TopLevelSpec;
}

/** Median, min and max of the finite values (runs made before a figure was measured have none). */
function spread(xs: number[]): { median: number; min: number; max: number } | null {
  const s = summarize(xs);
  return s.n === 0 ? null : { median: s.median, min: s.min, max: s.max };
}

/** Grouped bars: median guest disruption per method and profile, min-max rules, a tick at the median downtime; a panel per link. */
export function disruptionSpec(records: RunRecord[]): TopLevelSpec | null {
  const groups = groupBy(
    records.filter((r) => r.status === 'completed'),
    (r) => `${r.link}|${r.profile}|${r.method}|${r.memoryBytes}`,
  );
  const values = [...groups.values()].flatMap((rs) => {
    const r = rs[0];
    const disruption = spread(rs.map((x) => x.disruptionMs ?? NaN));
    if (disruption === null) return [];
    return [{ link: `${r.link}, ${r.memoryBytes / MIB_BYTES} MiB`, profile: r.profile, method: r.method, ...disruption, downtime: median(rs.map((x) => x.downtimeMs)) }];
  });
  if (values.length === 0) return null;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Guest disruption per method and workload', subtitle: 'bar: median disruption (lost progress against the schedule), rule: min-max, black tick: median downtime; log scale' },
    config: CONFIG,
    data: { values },
    facet: { column: { field: 'link', type: 'nominal', title: 'link, guest memory' } },
    spec: {
      width: { step: 26 },
      height: 260,
      layer: [
        // A bar on a log scale starts at 1 ms (the default base, 0, has no logarithm).
        { mark: 'bar', encoding: { y: { field: 'median', type: 'quantitative', title: 'milliseconds', scale: { type: 'log', domainMin: 1 } }, y2: { datum: 1 } } },
        { mark: { type: 'rule' }, encoding: { y: { field: 'min', type: 'quantitative' }, y2: { field: 'max' }, color: { value: 'black' } } },
        { mark: { type: 'tick', thickness: 3 }, encoding: { y: { field: 'downtime', type: 'quantitative' }, color: { value: 'black' } } },
      ],
      encoding: {
        x: { field: 'profile', type: 'nominal', title: 'workload', axis: { labelAngle: 0 } },
        xOffset: { field: 'method', type: 'nominal', scale: { domain: METHOD_COLORS.domain.filter((m) => values.some((v) => v.method === m)) } },
        color: { field: 'method', type: 'nominal', scale: METHOD_COLORS, title: 'method' },
      },
    },
  } as TopLevelSpec;
}

/**
 * Downtime (solid) and guest disruption (dashed) against guest memory size: medians with min-max, a
 * line per method and figure; a panel per profile and link.
 */
export function downtimeVsMemorySpec(records: RunRecord[]): TopLevelSpec | null {
  const groups = groupBy(
    records.filter((r) => r.status === 'completed'),
    (r) => `${r.link}|${r.profile}|${r.method}|${r.memoryBytes}`,
  );
  const values = [...groups.values()].flatMap((rs) => {
    const r = rs[0];
    const at = { panel: `${r.profile}, ${r.link}`, method: r.method, memoryMiB: r.memoryBytes / MIB_BYTES };
    const figures = { downtime: spread(rs.map((x) => x.downtimeMs)), disruption: spread(rs.map((x) => x.disruptionMs ?? NaN)) };
    return Object.entries(figures).flatMap(([figure, v]) => (v === null ? [] : [{ ...at, figure, ...v }]));
  });
  if (values.length === 0) return null;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Downtime and guest disruption against guest memory size', subtitle: 'median over repeats, rule: min-max; solid: downtime, dashed: disruption; log scales' },
    config: CONFIG,
    data: { values },
    facet: { column: { field: 'panel', type: 'nominal', title: 'workload, link' } },
    spec: {
      width: 220,
      height: 220,
      encoding: {
        x: {
          field: 'memoryMiB',
          type: 'quantitative',
          title: 'guest memory (MiB)',
          scale: { type: 'log', base: 2, nice: false, domain: [Math.min(...values.map((v) => v.memoryMiB)) / 1.5, Math.max(...values.map((v) => v.memoryMiB)) * 1.5] },
          axis: { values: [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384] },
        },
        color: { field: 'method', type: 'nominal', scale: METHOD_COLORS, title: 'method' },
        strokeDash: { field: 'figure', type: 'nominal', title: 'figure', scale: { domain: ['downtime', 'disruption'], range: [[1, 0], [5, 3]] } },
        shape: { field: 'figure', type: 'nominal', title: 'figure', scale: { domain: ['downtime', 'disruption'], range: ['circle', 'triangle-up'] } },
      },
      layer: [
        { mark: { type: 'line', point: true }, encoding: { y: { field: 'median', type: 'quantitative', title: 'milliseconds', scale: { type: 'log' } } } },
        { mark: 'rule', encoding: { y: { field: 'min', type: 'quantitative' }, y2: { field: 'max' } } },
      ],
    },
  } as TopLevelSpec;
}

export function groupBy<T>(items: T[], key: (t: T) => string): Map<string, T[]> {
  const m = new Map<string, T[]>();
  for (const t of items) {
    const k = key(t);
    const list = m.get(k);
    if (list) list.push(t);
    else m.set(k, [t]);
  }
  return m;
}
