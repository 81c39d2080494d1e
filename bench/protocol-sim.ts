// `npm run bench -- protocol-sim`: the deterministic simulation of the migration protocol
// (test/support/protocol-sim/): the source's and the target's cores in this process, over a
// simulated network that drops, delays, reorders and stalls messages and crashes the target, one
// seed per run. Prints the seeds run, how they ended, the invariants they violated (each with the
// command that replays it exactly) and the seeds per second. Exits 1 on a violation no known
// issue explains, 2 on a bad option.

import { parseArgs } from 'node:util';
import type { Clock } from '../shared/clock.js';
import { destination, pino } from 'pino';
import { runSeed, type SeedResult } from '../test/support/protocol-sim/run.js';
import { SIM_METHODS, type SimMethod } from '../test/support/protocol-sim/scenario.js';
import { KNOWN_ISSUES } from '../test/support/protocol-sim/known-issues.js';
import { count, describeTally, describeViolation, emptyTally, unexplained } from '../test/support/protocol-sim/summary.js';

const USAGE = `usage: npm run bench -- protocol-sim [options]

  --seeds N           seeds to run (default 2000), from --start
  --start S           first seed (default: a random one, printed)
  --seed S            run this one seed and print its result (with --trace, its trace)
  --method M          only this method (${SIM_METHODS.join(', ')}; default: each seed picks)
  --trace             with --seed: print every message, fault and state change
  --log LEVEL         with --seed: the agents' logs on stderr (debug, info, warn)
  -h, --help          this text

Exits 1 if a seed violated an invariant that no known issue explains (known-issues.ts), 2 on a
bad option.`;

interface Options {
  seeds: number;
  start: number;
  one: number | null;
  method: SimMethod | undefined;
  trace: boolean;
  log: string | undefined;
}

function integer(text: string | undefined, what: string, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${what} ${text}: expected an integer from ${min} to ${max}`);
  return n;
}

function parse(argv: string[]): Options | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      seeds: { type: 'string' },
      start: { type: 'string' },
      seed: { type: 'string' },
      method: { type: 'string' },
      trace: { type: 'boolean', default: false },
      log: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';
  const method = values.method;
  if (method !== undefined && !(SIM_METHODS as readonly string[]).includes(method)) throw new Error(`--method ${method}: expected one of ${SIM_METHODS.join(', ')}`);
  return {
    seeds: integer(values.seeds, 'seeds', 1, 10_000_000) ?? 2_000,
    start: integer(values.start, 'start', 0, 0xffffffff) ?? Math.floor(Math.random() * 0x7fffffff),
    one: integer(values.seed, 'seed', 0, 0xffffffff) ?? null,
    method: method as SimMethod | undefined,
    trace: values.trace,
    log: values.log,
  };
}

async function runOne(seed: number, o: Options): Promise<number> {
  // The agents' log lines carry the simulated time (simMs), as the trace does.
  const log = o.log === undefined ? undefined : (clock: Clock) => pino({ level: o.log, timestamp: () => `,"simMs":${clock.now().toFixed(3)}` }, destination(2));
  const r = await runSeed(seed, { method: o.method, keepTrace: o.trace, log });
  if (r.trace !== null) for (const line of r.trace) console.log(line);
  console.log(`seed ${seed}: ${r.scenario}`);
  console.log(`job ${r.outcome}${r.errorReason ? ` (${r.errorReason})` : ''}; ${r.outcomeQueries} outcome queries; guest on the target: ${r.targetRuns}; faults fired: ${r.faultsFired.join('; ') || 'none'}`);
  console.log(`trace digest ${r.traceDigest}, ${r.events} events, ${(r.simMs / 1000).toFixed(1)} s simulated`);
  for (const v of r.violations) console.log(`VIOLATION ${v}`);
  return r.violations.length > 0 ? 1 : 0;
}

async function runMany(o: Options): Promise<number> {
  console.log(`protocol-sim: seeds ${o.start} to ${o.start + o.seeds - 1}${o.method ? `, method ${o.method}` : ''}`);
  const tally = emptyTally();
  const startMs = performance.now();
  let lastReportMs = startMs;
  for (let seed = o.start; seed < o.start + o.seeds; seed++) {
    const r: SeedResult = await runSeed(seed, { method: o.method });
    count(tally, r);
    if (r.violations.length > 0) console.log(describeViolation(r, o.method));
    if (performance.now() - lastReportMs > 10_000) {
      lastReportMs = performance.now();
      console.log(`  ${tally.seeds} seeds, ${tally.violations.length} violations so far`);
    }
  }
  const seconds = (performance.now() - startMs) / 1000;
  for (const line of describeTally(tally)) console.log(line);
  for (const k of KNOWN_ISSUES) if (tally.known[k.id] !== undefined) console.log(`known issue ${k.id}: ${k.summary}`);
  console.log(`seeds/s: ${(tally.seeds / seconds).toFixed(0)} (${seconds.toFixed(1)} s)`);
  return unexplained(tally).length > 0 ? 1 : 0;
}

export async function runProtocolSimBench(argv: string[]): Promise<number> {
  let options: Options | 'help';
  try {
    options = parse(argv);
  } catch (error) {
    console.error(`bench protocol-sim: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (options === 'help') {
    console.log(USAGE);
    return 0;
  }
  return options.one !== null ? runOne(options.one, options) : runMany(options);
}
