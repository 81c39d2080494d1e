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
// matrix, from the table MEASURED_WALL_S in bench/estimate.ts and what the run itself measured):
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
import cliProgress from 'cli-progress';
import { type AgentProcess, startAgentProcess, stopAgentProcess } from '../cli/agent-process.js';
import { jobEnded, methodValue, policyValue } from '../cli/views.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';
import { LINK_PROFILES } from '../shared/transport/link.js';
import { type DataplaneResult, dataplaneSteps, runDataplane } from './dataplane.js';
import { GIB_BYTES, MIB_BYTES } from './format.js';
import { convergenceSpec, dataTransmittedSpec, disruptionSpec, downtimeVsMemorySpec, groupBy, renderSvg } from './plots.js';
import { buildReport, type ReportMeta } from './report.js';
import { isCrtr, type Method, type RunRecord, type RunSpec } from './run-record.js';
import { MethodUnavailableError, runOne } from './run.js';
import { AGENT_ARGS, killLiveChildren } from './run-processes.js';
import { fullMatrixEstimate } from './estimate.js';
import { type CellPrediction, cellsOf, predictBefore } from './prediction.js';
import { type HarnessOptions, matrixSpecs, parseOptions, USAGE, UsageError } from './harness-options.js';

async function probeMethods(methods: Method[]): Promise<Map<Method, string>> {
  const unavailable = new Map<Method, string>();
  const toProbe = methods.filter((m) => !isCrtr(m) && m !== 'precopy');
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
  await write('disruption.svg', disruptionSpec(matrix), 'guest disruption per method and workload, with the downtime marked');
  await write('downtime-vs-memory.svg', downtimeVsMemorySpec(runs.filter((r) => r.kind !== 'dataplane')), 'downtime and guest disruption against guest memory size per method');
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
  /** One EstimateMigration per cell, before its runs (bench/prediction.ts). */
  predictions: CellPrediction[];
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
      "Post-copy's downtime is only the switch (suspend, machine state, resume); its guest then runs on the target while pages are fetched on demand (demandPages) and pushed, a degraded period its disruption counts (the waits for pages, and the units it could not run meanwhile). Its total time ends at the commit after the last page.",
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
  writeFileSync(path.join(out, 'report.md'), buildReport(reportMeta, runs, dataplane, notes, x.predictions));
  writeJson(path.join(out, 'results.json'), { meta: { ...x, runs: undefined, dataplane: undefined, predictions: undefined, report: reportMeta }, runs, dataplane, predictions: x.predictions });
  return reportMeta;
}

export async function runHarness(argv: string[]): Promise<number> {
  const parsed = parseHarnessArgs(argv);
  if (typeof parsed === 'number') return parsed;
  if (parsed.fromResults !== undefined) return reportFromResults(parsed.fromResults, parsed.options, parsed.argv);
  return runMatrix(parsed.options, parsed.argv);
}

/** The options, and the results.json of --from-results; or the exit code (help: 0, usage: 2). */
function parseHarnessArgs(argv: string[]): number | { options: HarnessOptions; fromResults?: string; argv: string[] } {
  try {
    let fromResults: string | undefined;
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
    return { options: parsed, fromResults, argv };
  } catch (error) {
    console.error(`bench harness: ${error instanceof Error ? error.message : String(error)}\n\n${USAGE}`);
    return 2;
  }
}

/** Plots and report again from a results.json (a finished or an interrupted run). */
async function reportFromResults(fromResults: string, o: HarnessOptions, argv: string[]): Promise<number> {
  const saved = JSON.parse(readFileSync(fromResults, 'utf8')) as { meta: Partial<Outputs> & { options?: HarnessOptions }; runs: RunRecord[]; dataplane: DataplaneResult | null; predictions?: CellPrediction[] };
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
    predictions: saved.predictions ?? [],
  };
  const meta = await writeOutputs(out, x);
  console.error(`bench: wrote ${path.join(out, 'report.md')} and ${meta.plots.length} SVG plots from ${saved.runs.length} runs`);
  return 0;
}

/** What a run of the matrix has so far: saved after every migration, reported at the end. */
interface MatrixState {
  runs: RunRecord[];
  dataplane: DataplaneResult | null;
  skipped: Array<{ method: string; reason: string }>;
  methods: Method[];
  predictions: CellPrediction[];
}

async function runMatrix(o: HarnessOptions, argv: string[]): Promise<number> {
  mkdirSync(o.out, { recursive: true });
  const startedAt = new Date();
  const wallStart = performance.now();
  const loadavgStart = os.loadavg();
  const cpuPressureStart = cpuPressure();
  const state: MatrixState = { runs: [], dataplane: null, skipped: [], methods: [...o.methods], predictions: [] };
  const snapshot = (): Outputs => ({
    argv,
    options: o,
    startedAt: startedAt.toISOString(),
    wallSeconds: (performance.now() - wallStart) / 1000,
    loadavgStart,
    loadavgEnd: os.loadavg(),
    cpuPressureStart,
    cpuPressureEnd: cpuPressure(),
    methods: state.methods,
    methodsSkipped: state.skipped,
    runs: state.runs,
    dataplane: state.dataplane,
    predictions: state.predictions,
  });
  const save = () =>
    writeJson(path.join(o.out, 'results.json'), { meta: { ...snapshot(), runs: undefined, dataplane: undefined, predictions: undefined }, runs: state.runs, dataplane: state.dataplane, predictions: state.predictions });
  // An interrupt stops the agents and keeps what was measured (then: --from-results to report).
  const onSignal = (signal: NodeJS.Signals) => {
    killLiveChildren();
    save();
    console.error(`\nbench: ${signal}: stopped; ${state.runs.length} runs kept in ${path.join(o.out, 'results.json')} (report them with --from-results)`);
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    await runAll(o, state, save);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  const meta = await writeOutputs(o.out, snapshot());
  console.error(`bench: ${state.runs.length} migrations in ${(meta.wallSeconds / 60).toFixed(1)} min; wrote ${path.join(o.out, 'report.md')}, results.json and ${meta.plots.length} SVG plots`);
  const broken = state.runs.filter((r) => r.status === 'completed' && !r.digestsMatch);
  if (broken.length > 0) {
    console.error(`bench: ${broken.length} completed migration(s) whose digests differ`);
    return 1;
  }
  return 0;
}

/** The probe, every migration of the matrix, then the data plane, with a progress bar on stderr. */
async function runAll(o: HarnessOptions, state: MatrixState, save: () => void): Promise<void> {
  const unavailable = await probeMethods(o.methods);
  for (const [method, reason] of unavailable) {
    state.skipped.push({ method, reason });
    console.error(`bench: skipping method ${method}: ${reason}`);
  }
  state.methods = state.methods.filter((m) => !unavailable.has(m));
  const specs = matrixSpecs(o, state.methods);
  const cells = o.predict ? cellsOf(specs) : new Map<string, RunSpec>();
  const bar = progressBar();
  bar.start(specs.length + cells.size + (o.dataplane ? dataplaneSteps({ repeats: o.dataplaneRepeats, linkCheck: o.linkCheck }) : 0), 0, { label: 'starting' });
  for (const spec of specs) {
    await predictBefore(spec, cells, state.predictions, bar);
    await runSpec(spec, state, bar);
    save();
  }
  if (o.dataplane) {
    bar.update({ label: 'data plane' });
    state.dataplane = await runDataplane({ memoryMiB: 1024, repeats: o.dataplaneRepeats, linkCheck: o.linkCheck, warmupMs: o.warmupMs, onStep: (label) => bar.increment(1, { label }) });
    save();
  }
  bar.update({ label: 'plots and report' });
  bar.stop();
}

function progressBar(): cliProgress.SingleBar {
  return new cliProgress.SingleBar(
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
}

/** One migration of the matrix; a method the agent turns out not to offer is skipped from then on. */
async function runSpec(spec: RunSpec, state: MatrixState, bar: cliProgress.SingleBar): Promise<void> {
  const label = `${spec.kind === 'scaling' ? 'scaling ' : ''}${spec.profile} ${spec.method} ${spec.link} ${spec.memoryBytes / MIB_BYTES} MiB #${spec.repeat + 1}`;
  if (!state.methods.includes(spec.method)) {
    bar.increment(1, { label: `${label}: skipped` });
    return;
  }
  bar.update({ label });
  try {
    const record = await runOne(spec);
    state.runs.push(record);
    const dt = Number.isFinite(record.downtimeMs) && record.status === 'completed' ? `${record.downtimeMs.toFixed(0)} ms down` : record.error.slice(0, 60);
    bar.increment(1, { label: `${label}: ${record.status}, ${dt}` });
  } catch (error) {
    if (!(error instanceof MethodUnavailableError)) throw error;
    state.skipped.push({ method: spec.method, reason: error.message });
    state.methods = state.methods.filter((m) => m !== spec.method);
    bar.increment(1, { label: `${label}: method not available, skipped` });
  }
}
