// `npm run bench -- faults`: the fault matrix (README, "Fault matrix"). Every fault x method x phase
// (or the CI sample, or named cases), each case on a fresh pair of agent processes; prints a line
// per case, then the table fault x phase x method -> outcomes, violations and known gaps, and every
// violating case with the command that replays it. Exit status 1 when a case broke an invariant
// that no known gap explains.

import { mkdirSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Random } from '../../shared/random.js';
import type { MigrationMethod, MigrationPhase } from '../../shared/stats.js';
import { caseId, ciSample, FAULT_KINDS, FAULT_METHODS, type FaultCase, type FaultKind, fullMatrix, parseCaseId } from './cases.js';
import { killLiveAgents } from './cluster.js';
import { describeCase, formatTable, summarize } from './report.js';
import { type CaseResult, runCase } from './run-case.js';

const USAGE = `usage: npm run bench -- faults [options]

Injects kill -9, SIGTERM (either agent), a link cut, a link stall and a corrupt byte at every phase
of every method, each case on two fresh agent processes, and checks the invariants afterwards.

  --seeds N         repeats of the whole matrix, each case with a seed of its own (default 3)
  --seed S          base seed the case seeds are drawn from (default: from the OS, printed)
  --sample          the CI sample instead (every fault x method once, phases dealt out)
  --case ID         one case, fault/method/phase/seed (repeatable): what a failing case prints
  --faults a,b      ${FAULT_KINDS.join(', ')}
  --methods a,b     ${FAULT_METHODS.join(', ')}
  --phases a,b      only these phases
  --log-dir DIR     keep the agents' logs (debug) and state dirs here: every case's with --case,
                    else those of the cases with violations, a split post-copy, or over 15 s
  --json FILE       write every case's observation and verdict
  -h, --help        this text`;

interface FaultsOptions {
  cases: FaultCase[];
  baseSeed: number;
  logDir?: string;
  json?: string;
  replay: boolean;
}

function list<T extends string>(value: string | undefined, allowed: readonly string[], what: string): T[] | undefined {
  if (value === undefined) return undefined;
  const items = value.split(',').map((s) => s.trim());
  for (const item of items) if (!allowed.includes(item)) throw new Error(`--${what}: '${item}' is not one of ${allowed.join(', ')}`);
  return items as T[];
}

function parseOptions(argv: string[]): FaultsOptions | null {
  const { values } = parseArgs({
    args: argv,
    options: {
      seeds: { type: 'string' },
      seed: { type: 'string' },
      sample: { type: 'boolean' },
      case: { type: 'string', multiple: true },
      faults: { type: 'string' },
      methods: { type: 'string' },
      phases: { type: 'string' },
      'log-dir': { type: 'string' },
      json: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return null;
  const baseSeed = values.seed !== undefined ? Number(values.seed) >>> 0 : Random.seedFromOs();
  const logDir = values['log-dir'];
  if (values.case !== undefined) return { cases: values.case.map(parseCaseId), baseSeed, logDir, json: values.json, replay: true };
  if (values.sample) return { cases: ciSample(baseSeed), baseSeed, logDir, json: values.json, replay: false };
  const repeats = values.seeds !== undefined ? Number(values.seeds) : 3;
  if (!Number.isInteger(repeats) || repeats < 1) throw new Error(`--seeds ${values.seeds}: expected an integer >= 1`);
  const filter = {
    faults: list<FaultKind>(values.faults, FAULT_KINDS, 'faults'),
    methods: list<MigrationMethod>(values.methods, FAULT_METHODS, 'methods'),
    phases: list<MigrationPhase>(values.phases, ['pre-migration', 'reservation', 'checkpoint', 'log-transfer', 'stop-and-copy', 'commitment', 'activation', 'page-push'], 'phases'),
  };
  return { cases: fullMatrix(baseSeed, repeats, filter), baseSeed, logDir, json: values.json, replay: false };
}

/** Runs `cases` one after another, a line each as they end. */
export async function runCases(cases: readonly FaultCase[], logDir: string | undefined, keepAll: boolean, onResult: (r: CaseResult, index: number) => void): Promise<CaseResult[]> {
  const results: CaseResult[] = [];
  for (const [index, c] of cases.entries()) {
    const result = await runCase(c, { logLevel: logDir !== undefined ? 'debug' : 'info', logDir, keepLogs: keepAll ? 'always' : 'notable' });
    results.push(result);
    onResult(result, index);
  }
  return results;
}

export function caseLine(r: CaseResult, index: number, count: number): string {
  const { verdict: v, observation: o } = r;
  const landed = o.injection === null ? 'not injected' : `struck in ${o.injection.landedPhase}`;
  const flags = [v.violations.length > 0 ? `${v.violations.length} VIOLATIONS` : '', v.knownGap !== null ? 'known gap' : ''].filter((s) => s !== '').join(', ');
  return `[${index + 1}/${count}] ${caseId(o.case)}: ${v.outcome}, ${landed}, ${(o.durationMs / 1000).toFixed(1)} s${flags ? ` (${flags})` : ''}`;
}

export async function runFaultsBench(argv: string[]): Promise<number> {
  let options: FaultsOptions | null;
  try {
    options = parseOptions(argv);
  } catch (error) {
    console.error(`faults: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (options === null) {
    console.log(USAGE);
    return 0;
  }
  const { cases, logDir } = options;
  if (logDir !== undefined) mkdirSync(logDir, { recursive: true });
  process.once('SIGINT', () => {
    killLiveAgents();
    process.exit(130);
  });
  if (!options.replay) console.log(`fault matrix: ${cases.length} cases, base seed ${options.baseSeed} (the same matrix again: --seed ${options.baseSeed})`);
  const startedMs = performance.now();
  const results = await runCases(cases, logDir, options.replay, (r, i) => console.log(caseLine(r, i, cases.length)));
  const summary = summarize(results, performance.now() - startedMs);
  console.log(`\n${formatTable(results)}\n\n${summary.text}`);
  const notable = results.filter((r) => r.verdict.violations.length > 0 || r.verdict.explained.length > 0 || options.replay);
  if (notable.length > 0) console.log(`\n${notable.map(describeCase).join('\n\n')}`);
  if (options.json !== undefined) writeFileSync(options.json, `${JSON.stringify(results, null, 2)}\n`);
  return summary.violatingCases > 0 ? 1 : 0;
}
