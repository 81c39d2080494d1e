// `npm run bench -- [harness] [--quick] [--out DIR] [...]`: the migration bench harness (the
// default benchmark). Runs the matrix profiles × methods × links × memory sizes × repeats, each
// run with fresh source and target agent processes and a link emulator between them
// (bench/run.ts), then the scaling runs and the data-plane benchmark; writes results.json,
// report.md and SVG plots to DIR. A progress bar goes to stderr.
//
// Methods: crtr and precopy always; postcopy when the source agent accepts it (a probe at start:
// StartMigration answering INVALID_ARGUMENT "not available" skips it, with a note in the report).
//
// Running time on this host (2 cores, measured; report.md's header gives the estimate of the full
// matrix, from the table MEASURED_WALL_S below and from what the run itself measured):
// - --quick (web, mmuncher, db × crtr, precopy, postcopy × lan × 512 MiB × 1 repeat, + the data
//   plane): 2 min 50 s - 3 min including the build;
// - the full matrix: 6 profiles × 3 methods × lan, wan × 512 MiB × 5 repeats = 180 migrations
//   (~21 min a repeat: 1 h 45 min), + scaling 2 profiles × 2 methods × 3 sizes × 3 repeats = 36
//   (~14 min a repeat: 40 min), + the data plane × 3 with the link check (~5 min): ~2.5 h. Pre-copy
//   of the writing workloads on wan (up to 30 rounds or 3× memory at 100 Mbit/s: mmuncher 220 s)
//   and the 4 GiB scaling runs dominate.

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { type AgentProcess, startAgentProcess, stopAgentProcess } from '../cli/agent-process.js';
import { PROFILE_NAMES } from '../shared/driver/sim/profiles.js';
import { jobEnded, methodValue, policyValue } from '../cli/views.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';
import { LINK_PROFILE_NAMES, LINK_PROFILES, type LinkProfileName } from '../shared/transport/link.js';
import { type DataplaneResult, dataplaneSteps, runDataplane } from './dataplane.js';
import { GIB_BYTES, MIB_BYTES } from './format.js';
import { convergenceSpec, dataTransmittedSpec, downtimeVsMemorySpec, groupBy, renderSvg } from './plots.js';
import { buildReport, type ReportMeta } from './report.js';
import { ALL_METHODS, type LinkMode, type Method, type RunRecord, type RunSpec } from './run-record.js';
import { AGENT_ARGS, killLiveChildren, MethodUnavailableError, runOne, seedOf } from './run.js';
import { median } from './stats.js';

interface HarnessOptions {
  quick: boolean;
  out: string;
  profiles: string[];
  methods: Method[];
  links: LinkProfileName[];
  memoryMiB: number[];
  repeats: number;
  scaling: boolean;
  scalingProfiles: string[];
  scalingMemoryMiB: number[];
  scalingRepeats: number;
  dataplane: boolean;
  dataplaneRepeats: number;
  linkCheck: boolean;
  downtimeLimitMs: number;
  policy: RunSpec['policy'];
  maxDurationMs: number;
  warmupMs: number;
  sampleMs: number;
  linkMode: LinkMode;
}

const QUICK_PROFILES = ['web', 'mmuncher', 'db'];

const USAGE = `usage: npm run bench -- [harness] [options]

Live-migrates sim guests between two fresh agent processes per run, through the link emulator,
and writes results.json, report.md and SVG plots.

  --quick                 web, mmuncher, db × every available method × lan × 512 MiB × 1 repeat,
                          + the data plane (no scaling); ~3 min on a 2-core host (full: ~2.5 h)
  --out DIR               output folder (default: $TMPDIR/vmmigrate-bench-<time>)
  --profiles a,b          workload profiles (default: all: ${PROFILE_NAMES.join(', ')})
  --methods a,b           crtr, precopy, postcopy (default: all; postcopy skipped when the agent
                          answers "not available")
  --links a,b             ${LINK_PROFILE_NAMES.join(', ')} (default lan,wan; --quick lan)
  --memory-mib a,b        guest memory sizes, MiB (default 512)
  --repeats N             repeats of every cell (default 5; --quick 1)
  --scaling               include the scaling runs (default without --quick): crtr and precopy,
                          --scaling-profiles (web,mmuncher) × --scaling-memory-mib (256,1024,4096)
                          on lan, --scaling-repeats N (default 3)
  --no-scaling            leave them out
  --no-dataplane          leave out the data-plane benchmark (default: in; --dataplane-repeats N,
                          default 3, --quick 1)
  --link-check            the data plane also measures the lan link emulator in this process and
                          in a child process (default without --quick)
  --link-process MODE     in-process (default) or child: where the link emulator runs
  --downtime-limit-ms N   (default 300)       --max-duration-ms N   (default 300000)
  --policy P              non-convergence policy: force (default: every run ends in a migration),
                          abort or throttle
  --warmup-ms N           guest run time before the migration (default 1000)
  --sample-ms N           GetJob sampling period (default 100)
  --from-results FILE     no runs: plots and report again from a results.json (into its folder,
                          or --out), e.g. after an interrupt
  -h, --help              this text`;

class UsageError extends Error {}

function list(value: string | undefined, fallback: string[]): string[] {
  if (value === undefined) return fallback;
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function numbers(value: string | undefined, fallback: number[], name: string): number[] {
  const xs = list(value, fallback.map(String)).map(Number);
  for (const x of xs) if (!(Number.isInteger(x) && x > 0)) throw new UsageError(`${name}: expected positive integers, got '${value}'`);
  return xs;
}

function parseOptions(argv: string[]): HarnessOptions | 'help' {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      out: { type: 'string' },
      profiles: { type: 'string' },
      methods: { type: 'string' },
      links: { type: 'string' },
      'memory-mib': { type: 'string' },
      repeats: { type: 'string' },
      scaling: { type: 'boolean' },
      'no-scaling': { type: 'boolean' },
      'scaling-profiles': { type: 'string' },
      'scaling-memory-mib': { type: 'string' },
      'scaling-repeats': { type: 'string' },
      'no-dataplane': { type: 'boolean' },
      'dataplane-repeats': { type: 'string' },
      'link-check': { type: 'boolean' },
      'link-process': { type: 'string', default: 'in-process' },
      'downtime-limit-ms': { type: 'string', default: '300' },
      policy: { type: 'string', default: 'force' },
      'max-duration-ms': { type: 'string', default: '300000' },
      'warmup-ms': { type: 'string', default: '1000' },
      'sample-ms': { type: 'string', default: '100' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const quick = values.quick;
  const profiles = list(values.profiles, quick ? QUICK_PROFILES : [...PROFILE_NAMES]);
  for (const p of profiles) if (!(PROFILE_NAMES as readonly string[]).includes(p)) throw new UsageError(`unknown profile '${p}': expected ${PROFILE_NAMES.join(', ')}`);
  const methods = list(values.methods, [...ALL_METHODS]) as Method[];
  for (const m of methods) if (!ALL_METHODS.includes(m)) throw new UsageError(`unknown method '${m}': expected ${ALL_METHODS.join(', ')}`);
  const links = list(values.links, quick ? ['lan'] : ['lan', 'wan']) as LinkProfileName[];
  for (const l of links) if (!(LINK_PROFILE_NAMES as string[]).includes(l)) throw new UsageError(`unknown link '${l}': expected ${LINK_PROFILE_NAMES.join(', ')}`);
  const scalingProfiles = list(values['scaling-profiles'], ['web', 'mmuncher']);
  for (const p of scalingProfiles) if (!(PROFILE_NAMES as readonly string[]).includes(p)) throw new UsageError(`unknown profile '${p}'`);
  const policy = values.policy;
  if (policy !== 'force' && policy !== 'abort' && policy !== 'throttle') throw new UsageError(`--policy: expected force, abort or throttle, got '${policy}'`);
  const linkMode = values['link-process'];
  if (linkMode !== 'in-process' && linkMode !== 'child') throw new UsageError(`--link-process: expected in-process or child, got '${linkMode}'`);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
  const one = (v: string | undefined, fallback: number, name: string) => numbers(v, [fallback], name)[0];
  return {
    quick,
    out: path.resolve(values.out ?? path.join(os.tmpdir(), `vmmigrate-bench-${stamp}`)),
    profiles,
    methods,
    links,
    memoryMiB: numbers(values['memory-mib'], [512], '--memory-mib'),
    repeats: one(values.repeats, quick ? 1 : 5, '--repeats'),
    scaling: values['no-scaling'] ? false : (values.scaling ?? !quick),
    scalingProfiles,
    scalingMemoryMiB: numbers(values['scaling-memory-mib'], [256, 1024, 4096], '--scaling-memory-mib'),
    scalingRepeats: one(values['scaling-repeats'], quick ? 1 : 3, '--scaling-repeats'),
    dataplane: !values['no-dataplane'],
    dataplaneRepeats: one(values['dataplane-repeats'], quick ? 1 : 3, '--dataplane-repeats'),
    linkCheck: values['link-check'] ?? !quick,
    downtimeLimitMs: one(values['downtime-limit-ms'], 300, '--downtime-limit-ms'),
    policy,
    maxDurationMs: one(values['max-duration-ms'], 300_000, '--max-duration-ms'),
    warmupMs: numbers(values['warmup-ms'], [1000], '--warmup-ms')[0],
    sampleMs: one(values['sample-ms'], 100, '--sample-ms'),
    linkMode,
  };
}

/**
 * Asks a fresh source agent to start a migration of each method that might not be built in
 * (postcopy) with a small guest; an INVALID_ARGUMENT "not available" answer marks it unavailable.
 * A method it accepts is cancelled at once.
 */
async function probeMethods(methods: Method[]): Promise<Map<Method, string>> {
  const unavailable = new Map<Method, string>();
  const toProbe = methods.filter((m) => m !== 'crtr' && m !== 'precopy');
  if (toProbe.length === 0) return unavailable;
  const agents: AgentProcess[] = [];
  try {
    const [source, target] = await Promise.all([startAgentProcess('source', AGENT_ARGS), startAgentProcess('target', AGENT_ARGS)]);
    agents.push(source, target);
    const c = makeClient(controlServiceV2, 'Control', source.address, grpc.credentials.createInsecure());
    try {
      for (const method of toProbe) {
        const id = `probe-${method}`;
        await unary(c, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id, profile: 'idle', memoryBytes: 64 * MIB_BYTES }), 60_000, 'probe guest');
        try {
          const { jobId } = await unary(
            c,
            controlServiceV2.startMigration,
            pb2.StartMigrationRequest.create({ guestId: id, targetAddress: target.address, method: methodValue(method), nonConvergencePolicy: policyValue('force'), maxDurationMs: 60_000 }),
            10_000,
            'probe',
          );
          // Cancel it (post-copy cannot be cancelled once the guest switched: then let it end).
          await unary(c, controlServiceV2.cancelJob, pb2.CancelJobRequest.create({ jobId }), 10_000, 'probe cancel').catch(() => undefined);
          for (let i = 0; i < 300; i++) {
            const job = await unary(c, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'probe job');
            if (jobEnded(job)) break;
            await sleep(100);
          }
        } catch (error) {
          const e = error as { code?: string; message?: string };
          if (e.code === 'INVALID_ARGUMENT' && /not available/i.test(e.message ?? '')) unavailable.set(method, e.message ?? 'not available');
        }
      }
    } finally {
      c.close();
    }
  } finally {
    await Promise.all(agents.map((a) => stopAgentProcess(a)));
  }
  return unavailable;
}

function matrixSpecs(o: HarnessOptions, methods: Method[]): RunSpec[] {
  const specs: RunSpec[] = [];
  const common = { downtimeLimitMs: o.downtimeLimitMs, policy: o.policy, maxDurationMs: o.maxDurationMs, warmupMs: o.warmupMs, sampleMs: o.sampleMs, disableCompression: false, linkMode: o.linkMode };
  // Methods innermost: the runs a ratio compares are close in time (same load on the host).
  for (let repeat = 0; repeat < o.repeats; repeat++) {
    for (const link of o.links) {
      for (const profile of o.profiles) {
        for (const mib of o.memoryMiB) {
          const seed = seedOf(`${profile}:${mib}:${repeat}`);
          for (const method of methods) specs.push({ kind: 'matrix', profile, method, link, memoryBytes: mib * MIB_BYTES, repeat, seed, ...common });
        }
      }
    }
  }
  if (o.scaling) {
    const scalingMethods = methods.filter((m) => m === 'crtr' || m === 'precopy');
    for (let repeat = 0; repeat < o.scalingRepeats; repeat++) {
      for (const profile of o.scalingProfiles) {
        for (const mib of o.scalingMemoryMiB) {
          const seed = seedOf(`${profile}:${mib}:${repeat}`);
          for (const method of scalingMethods) specs.push({ kind: 'scaling', profile, method, link: 'lan', memoryBytes: mib * MIB_BYTES, repeat, seed, ...common });
        }
      }
    }
  }
  return specs;
}

// ---------------------------------------------------------------------------------------------
// Running time estimate of the full matrix.
//
// Wall seconds of one run (agents up to agents down: start, boot, 1 s warm-up, migration, stop) at
// 512 MiB, measured on this host (2 cores, 2026-11-25) with `--repeats 1 --links lan,wan
// --no-scaling --no-dataplane`: 36 migrations in 20.7 min. Other sizes scale the migration part
// linearly with memory (measured: web at 4 GiB 65-73 s on lan, mmuncher pre-copy at 4 GiB > 300 s).
const MEASURED_WALL_S: Record<Method, Record<string, [number, number]>> = {
  //               [lan, wan] seconds
  crtr: { idle: [9, 21], web: [12, 35], compile: [16, 68], db: [14, 57], mmuncher: [19, 64], stream: [11, 44] },
  precopy: { idle: [9, 21], web: [12, 61], compile: [19, 134], db: [14, 99], mmuncher: [36, 219], stream: [10, 23] },
  postcopy: { idle: [11, 21], web: [11, 22], compile: [11, 23], db: [11, 23], mmuncher: [11, 38], stream: [10, 22] },
};
const FIXED_WALL_S = 5;

function estimateRunSeconds(spec: Pick<RunSpec, 'profile' | 'method' | 'link' | 'memoryBytes'>, measured: Map<string, number>): number {
  const key = `${spec.profile}|${spec.method}|${spec.link}|${spec.memoryBytes}`;
  const m = measured.get(key);
  if (m !== undefined) return m;
  const pair = MEASURED_WALL_S[spec.method]?.[spec.profile] ?? [15, 60];
  const base = spec.link === 'wan' ? pair[1] : spec.link === 'lan' ? pair[0] : pair[0] * 0.8;
  const migration = Math.max(1, base - FIXED_WALL_S) * (spec.memoryBytes / (512 * MIB_BYTES));
  return Math.min(FIXED_WALL_S + migration, 360);
}

function fullMatrixEstimate(runs: RunRecord[], methods: Method[], dataplaneWallS: number | null): ReportMeta['fullMatrixEstimate'] {
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
  };
  const specs = matrixSpecs(full, methods);
  let seconds = specs.reduce((sum, s) => sum + estimateRunSeconds(s, measured), 0);
  seconds += 3 * (dataplaneWallS ?? 60) * (6 / 4); // three repeats, with the link check
  return {
    runs: specs.length,
    seconds,
    how: `per run: this run's median wall time where it measured the cell, else a table measured on this host (bench/harness.ts), scaled with memory; ${methods.join(', ')}; + data plane × 3`,
  };
}

// ---------------------------------------------------------------------------------------------

function writeJson(file: string, value: unknown): void {
  writeFileSync(file, `${JSON.stringify(value, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 1)}\n`);
}

function slug(text: string): string {
  return text.replace(/[^a-zA-Z0-9.-]+/g, '-');
}

async function writePlots(out: string, runs: RunRecord[]): Promise<ReportMeta['plots']> {
  const plots: ReportMeta['plots'] = [];
  const write = async (file: string, spec: Parameters<typeof renderSvg>[0] | null, caption: string) => {
    if (spec === null) return;
    try {
      writeFileSync(path.join(out, file), await renderSvg(spec));
      plots.push({ file, caption });
    } catch (error) {
      plots.push({ file, caption: `NOT RENDERED: ${error instanceof Error ? error.message : String(error)}` });
    }
  };
  const matrix = runs.filter((r) => r.kind === 'matrix');
  for (const rs of groupBy(matrix, (r) => `${r.profile}|${r.link}|${r.memoryBytes}`).values()) {
    const r = rs[0];
    const mib = r.memoryBytes / MIB_BYTES;
    await write(
      `convergence-${slug(r.profile)}-${slug(r.link)}-${mib}MiB.svg`,
      convergenceSpec(rs, `Convergence: ${r.profile}, ${r.link} link, ${mib} MiB guest`),
      `convergence curve of each method, ${r.profile}, ${r.link}, ${mib} MiB`,
    );
  }
  await write('data-transmitted.svg', dataTransmittedSpec(matrix), 'total data transmitted per method and workload (Figure 8 of the seed paper)');
  await write('downtime-vs-memory.svg', downtimeVsMemorySpec(runs.filter((r) => r.kind !== 'dataplane')), 'downtime against guest memory size per method');
  return plots;
}

/** "some avg60=..% avg300=..%" of /proc/pressure/cpu (time some task waited for a CPU), or ''. */
function cpuPressure(): string {
  try {
    const m = /^some avg10=([\d.]+) avg60=([\d.]+) avg300=([\d.]+)/m.exec(readFileSync('/proc/pressure/cpu', 'utf8'));
    return m ? `avg10 ${m[1]}%, avg60 ${m[2]}%, avg300 ${m[3]}%` : '';
  } catch {
    return '';
  }
}

interface Outputs {
  argv: string[];
  cpuPressureStart?: string;
  cpuPressureEnd?: string;
  options: HarnessOptions;
  startedAt: string;
  wallSeconds: number;
  loadavgStart: number[];
  loadavgEnd: number[];
  methods: Method[];
  methodsSkipped: Array<{ method: string; reason: string }>;
  runs: RunRecord[];
  dataplane: DataplaneResult | null;
}

/** Writes the plots, report.md and the final results.json into `out`. */
async function writeOutputs(out: string, x: Outputs): Promise<ReportMeta> {
  const { options: o, runs, dataplane, methods } = x;
  const plots = await writePlots(out, runs);
  const notes: string[] = [];
  // As bench/curve.ts decided for each run (curveSource).
  const reconstructed = runs.some((r) => r.method === 'precopy' && r.curveSource === 'reconstructed');
  if (reconstructed) {
    notes.push(
      "Pre-copy convergence curves after round 0 are reconstructed from the samples' transferred bytes (bench/curve.ts): the source agent's GetJob reports remainingBytes = checkpoint not yet covered + unsent log, which is 0 for pre-copy once round 0 is done, not the dirty set.",
    );
  }
  if (runs.some((r) => r.method === 'postcopy')) {
    notes.push(
      "Post-copy's downtime is only the switch (suspend, machine state, resume); its guest then runs on the target while pages are fetched on demand (demandPages) and pushed, a degraded period this table does not show. Its total time ends at the commit after the last page.",
    );
  }
  if (o.linkMode === 'in-process' && o.links.some((l) => LINK_PROFILES[l].bandwidthBytesPerSec !== Infinity)) {
    const checked = dataplane?.repeats.some((r) => r.agents.some((a) => a.link === 'lan')) ?? false;
    notes.push(
      checked
        ? "The link emulator runs in the harness process (--link-process in-process); the data plane's link check below compares it with a child process and with no emulator."
        : 'The link emulator runs in the harness process (--link-process in-process). Not checked in this run (--link-check); measured on this host: uncompressed checkpoint 79 MB/s through the in-process lan emulator, 48 in a child process, 89 direct (one noisy repeat each; a second repeat under load: 28, 48, 38): the agents, at 40-90 MB/s, not the emulator, limit lan runs below its 125 MB/s.',
    );
  }
  const reportMeta: ReportMeta = {
    title: o.quick ? 'Migration bench report (--quick)' : 'Migration bench report',
    command: `npm run bench -- ${['harness', ...x.argv].join(' ')}`,
    startedAt: x.startedAt,
    wallSeconds: x.wallSeconds,
    host: {
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model ?? '?',
      memoryGiB: os.totalmem() / GIB_BYTES,
      node: process.version,
      loadavgStart: x.loadavgStart,
      loadavgEnd: x.loadavgEnd,
      cpuPressureStart: x.cpuPressureStart ?? '',
      cpuPressureEnd: x.cpuPressureEnd ?? '',
    },
    options: { ...o, profiles: o.profiles.join(','), methods: methods.join(','), links: o.links.join(','), memoryMiB: o.memoryMiB.join(',') },
    methodsSkipped: x.methodsSkipped,
    fullMatrixEstimate: fullMatrixEstimate(runs, methods, dataplane ? dataplane.wallMs / 1000 / Math.max(1, dataplane.repeats.length) : null),
    plots,
  };
  writeFileSync(path.join(out, 'report.md'), buildReport(reportMeta, runs, dataplane, notes));
  writeJson(path.join(out, 'results.json'), { meta: { ...x, runs: undefined, dataplane: undefined, report: reportMeta }, runs, dataplane });
  return reportMeta;
}

export async function runHarness(argv: string[]): Promise<number> {
  let o: HarnessOptions;
  let fromResults: string | undefined;
  try {
    const i = argv.indexOf('--from-results');
    if (i >= 0) {
      fromResults = argv[i + 1];
      if (!fromResults) throw new UsageError('--from-results: expected a results.json');
      argv = [...argv.slice(0, i), ...argv.slice(i + 2)];
    }
    const parsed = parseOptions(argv);
    if (parsed === 'help') {
      console.log(USAGE);
      return 0;
    }
    o = parsed;
  } catch (error) {
    console.error(`bench harness: ${error instanceof Error ? error.message : String(error)}\n\n${USAGE}`);
    return 2;
  }

  if (fromResults !== undefined) {
    // Plots and report again from a results.json (a finished or an interrupted run).
    const saved = JSON.parse(readFileSync(fromResults, 'utf8')) as { meta: Partial<Outputs> & { options?: HarnessOptions }; runs: RunRecord[]; dataplane: DataplaneResult | null };
    const out = argv.includes('--out') ? o.out : path.dirname(path.resolve(fromResults));
    mkdirSync(out, { recursive: true });
    const m = saved.meta;
    const x: Outputs = {
      argv: m.argv ?? [],
      options: m.options ?? o,
      startedAt: m.startedAt ?? '?',
      wallSeconds: m.wallSeconds ?? NaN,
      loadavgStart: m.loadavgStart ?? [NaN, NaN, NaN],
      loadavgEnd: m.loadavgEnd ?? [NaN, NaN, NaN],
      cpuPressureStart: m.cpuPressureStart,
      cpuPressureEnd: m.cpuPressureEnd,
      methods: m.methods ?? [...new Set(saved.runs.map((r) => r.method))],
      methodsSkipped: m.methodsSkipped ?? [],
      runs: saved.runs,
      dataplane: saved.dataplane,
    };
    const meta = await writeOutputs(out, x);
    console.error(`bench: wrote ${path.join(out, 'report.md')} and ${meta.plots.length} SVG plots from ${saved.runs.length} runs`);
    return 0;
  }

  mkdirSync(o.out, { recursive: true });
  const startedAt = new Date();
  const wallStart = performance.now();
  const loadavgStart = os.loadavg();
  const cpuPressureStart = cpuPressure();
  const runs: RunRecord[] = [];
  let dataplane: DataplaneResult | null = null;
  const skipped: Array<{ method: string; reason: string }> = [];
  let methods: Method[] = [...o.methods];
  const snapshot = (): Outputs => ({
    argv,
    options: o,
    startedAt: startedAt.toISOString(),
    wallSeconds: (performance.now() - wallStart) / 1000,
    loadavgStart,
    loadavgEnd: os.loadavg(),
    cpuPressureStart,
    cpuPressureEnd: cpuPressure(),
    methods,
    methodsSkipped: skipped,
    runs,
    dataplane,
  });
  const save = () => {
    const x = snapshot();
    writeJson(path.join(o.out, 'results.json'), { meta: { ...x, runs: undefined, dataplane: undefined }, runs, dataplane });
  };
  // An interrupt stops the agents and keeps what was measured (then: --from-results to report).
  const onSignal = (signal: NodeJS.Signals) => {
    killLiveChildren();
    save();
    console.error(`\nbench: ${signal}: stopped; ${runs.length} runs kept in ${path.join(o.out, 'results.json')} (report them with --from-results)`);
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const unavailable = await probeMethods(o.methods);
  for (const [method, reason] of unavailable) {
    skipped.push({ method, reason });
    console.error(`bench: skipping method ${method}: ${reason}`);
  }
  methods = methods.filter((m) => !unavailable.has(m));

  const specs = matrixSpecs(o, methods);
  const dpSteps = o.dataplane ? dataplaneSteps({ repeats: o.dataplaneRepeats, linkCheck: o.linkCheck }) : 0;
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: 'bench {bar} {value}/{total} | {duration_formatted} elapsed | ETA {eta_formatted} | {label}',
      hideCursor: true,
      noTTYOutput: true,
      notTTYSchedule: 10_000,
      etaBuffer: 50,
      barsize: 30,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(specs.length + dpSteps, 0, { label: 'starting' });

  for (const spec of specs) {
    const label = `${spec.kind === 'scaling' ? 'scaling ' : ''}${spec.profile} ${spec.method} ${spec.link} ${spec.memoryBytes / MIB_BYTES} MiB #${spec.repeat + 1}`;
    if (!methods.includes(spec.method)) {
      bar.increment(1, { label: `${label}: skipped` });
      continue;
    }
    bar.update({ label });
    try {
      const record = await runOne(spec);
      runs.push(record);
      const dt = Number.isFinite(record.downtimeMs) && record.status === 'completed' ? `${record.downtimeMs.toFixed(0)} ms down` : record.error.slice(0, 60);
      bar.increment(1, { label: `${label}: ${record.status}, ${dt}` });
    } catch (error) {
      if (!(error instanceof MethodUnavailableError)) throw error;
      skipped.push({ method: spec.method, reason: error.message });
      methods = methods.filter((m) => m !== spec.method);
      bar.increment(1, { label: `${label}: method not available, skipped` });
    }
    save();
  }
  if (o.dataplane) {
    bar.update({ label: 'data plane' });
    dataplane = await runDataplane({
      memoryMiB: 1024,
      repeats: o.dataplaneRepeats,
      linkCheck: o.linkCheck,
      warmupMs: o.warmupMs,
      onStep: (label) => bar.increment(1, { label }),
    });
    save();
  }
  bar.update({ label: 'plots and report' });
  bar.stop();
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);

  const meta = await writeOutputs(o.out, snapshot());
  console.error(`bench: ${runs.length} migrations in ${(meta.wallSeconds / 60).toFixed(1)} min; wrote ${path.join(o.out, 'report.md')}, results.json and ${meta.plots.length} SVG plots`);
  const broken = runs.filter((r) => r.status === 'completed' && !r.digestsMatch);
  if (broken.length > 0) {
    console.error(`bench: ${broken.length} completed migration(s) whose digests differ`);
    return 1;
  }
  return 0;
}
