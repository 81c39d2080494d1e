// Running time estimate of the full matrix, from a table measured on this host and from what the
// run itself measured.

import { PROFILE_NAMES } from '../shared/driver/sim/profiles.js';
import { MIB_BYTES } from './format.js';
import { type HarnessOptions, matrixSpecs } from './harness-options.js';
import { groupBy } from './plots.js';
import { cellsOf } from './prediction.js';
import type { ReportMeta } from './report.js';
import type { Method, RunRecord, RunSpec } from './run-record.js';
import { median } from './stats.js';

// ---------------------------------------------------------------------------------------------
// Running time estimate of the full matrix.
//
// Wall seconds of one run (agents up to agents down: start, boot, 1 s warm-up, migration, stop) at
// 512 MiB, measured on this host (2 cores, 2026-11-25) with `--repeats 1 --links lan,wan
// --no-scaling --no-dataplane`: 36 migrations in 20.7 min. Other sizes scale the migration part
// linearly with memory (measured: web at 4 GiB 65-73 s on lan, mmuncher pre-copy at 4 GiB > 300 s).
// crtr-log (CR/TR without deltas) is taken to cost what crtr did before the hybrid catch-up.
const MEASURED_WALL_S: Record<Method, Record<string, [number, number]>> = {
  //               [lan, wan] seconds
  crtr: { idle: [9, 21], web: [12, 35], compile: [16, 68], db: [14, 57], mmuncher: [19, 64], stream: [11, 44] },
  'crtr-log': { idle: [9, 21], web: [12, 35], compile: [16, 68], db: [14, 57], mmuncher: [19, 64], stream: [11, 44] },
  precopy: { idle: [9, 21], web: [12, 61], compile: [19, 134], db: [14, 99], mmuncher: [36, 219], stream: [10, 23] },
  postcopy: { idle: [11, 21], web: [11, 22], compile: [11, 23], db: [11, 23], mmuncher: [11, 38], stream: [10, 22] },
};
const FIXED_WALL_S = 5;
/** One cell's EstimateMigration with its agents, boot and warm-up (bench/prediction.ts): 5.0-5.5 s measured here, 512 MiB on lan. */
const PREDICTION_CELL_WALL_S = 6;

export function estimateRunSeconds(spec: Pick<RunSpec, 'profile' | 'method' | 'link' | 'memoryBytes'>, measured: Map<string, number>): number {
  const key = `${spec.profile}|${spec.method}|${spec.link}|${spec.memoryBytes}`;
  const m = measured.get(key);
  if (m !== undefined) return m;
  const pair = MEASURED_WALL_S[spec.method]?.[spec.profile] ?? [15, 60];
  const base = spec.link === 'wan' ? pair[1] : spec.link === 'lan' ? pair[0] : pair[0] * 0.8;
  const migration = Math.max(1, base - FIXED_WALL_S) * (spec.memoryBytes / (512 * MIB_BYTES));
  return Math.min(FIXED_WALL_S + migration, 360);
}

export function fullMatrixEstimate(runs: RunRecord[], methods: Method[], dataplaneWallS: number | null): ReportMeta['fullMatrixEstimate'] {
  const measured = new Map<string, number>();
  for (const [key, rs] of groupBy(runs, (r) => `${r.profile}|${r.method}|${r.link}|${r.memoryBytes}`)) measured.set(key, median(rs.map((r) => r.wallMs / 1000)));
  const full: HarnessOptions = {
    quick: false,
    out: '',
    profiles: [...PROFILE_NAMES],
    methods,
    links: ['lan', 'wan'],
    memoryMiB: [512],
    repeats: 5,
    scaling: true,
    scalingProfiles: ['web', 'mmuncher'],
    scalingMemoryMiB: [256, 1024, 4096],
    scalingRepeats: 3,
    dataplane: true,
    dataplaneRepeats: 3,
    linkCheck: true,
    downtimeLimitMs: 300,
    policy: 'force',
    maxDurationMs: 300_000,
    warmupMs: 1000,
    sampleMs: 100,
    linkMode: 'in-process',
    predict: true,
    noFinalApproach: false,
  };
  const specs = matrixSpecs(full, methods);
  let seconds = specs.reduce((sum, s) => sum + estimateRunSeconds(s, measured), 0);
  seconds += cellsOf(specs).size * PREDICTION_CELL_WALL_S;
  seconds += 3 * (dataplaneWallS ?? 60) * (6 / 4); // three repeats, with the link check
  return {
    runs: specs.length,
    seconds,
    how: `per run: this run's median wall time where it measured the cell, else a table measured on this host (bench/estimate.ts), scaled with memory; ${methods.join(', ')}; + one estimate per cell + data plane × 3`,
  };
}
