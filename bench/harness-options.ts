// The harness's options: the matrix (profiles, methods, links, sizes, repeats), the scaling runs,
// the data plane, and how each run is driven; parsed from its command line, with its usage text.

import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { PROFILE_NAMES } from '../shared/driver/sim/profiles.js';
import { LINK_PROFILE_NAMES, type LinkProfileName } from '../shared/transport/link.js';
import { MIB_BYTES } from './format.js';
import { ALL_METHODS, type LinkMode, type Method, type RunSpec } from './run-record.js';
import { seedOf } from './run.js';

export interface HarnessOptions {
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
  /** One EstimateMigration per cell before its runs, reported against what they measured. */
  predict: boolean;
  /** CR/TR runs stop without the final approach. */
  noFinalApproach: boolean;
}

export const QUICK_PROFILES = ['web', 'compile', 'mmuncher', 'db'];

export const USAGE = `usage: npm run bench -- [harness] [options]

Live-migrates sim guests between two fresh agent processes per run, through the link emulator,
and writes results.json, report.md and SVG plots.

  --quick                 web, compile, mmuncher, db × every available method × lan × 512 MiB × 1 repeat,
                          + the data plane (no scaling); ~5 min on a 2-core host (full: ~2.5 h)
  --out DIR               output folder (default: $TMPDIR/vmmigrate-bench-<time>)
  --profiles a,b          workload profiles (default: all: ${PROFILE_NAMES.join(', ')})
  --methods a,b           crtr, crtr-log (CR/TR without delta checkpoints), precopy, postcopy (default: all; postcopy skipped when the agent
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
  --no-predict            leave out the estimate of each cell (default: one EstimateMigration
                          before each profile/link/size cell, reported against its runs)
  --downtime-limit-ms N   (default 300)       --max-duration-ms N   (default 300000)
  --no-final-approach     CR/TR stops without its final approach (the guest slowed for a bounded
                          time so that the replica drains its backlog first), for comparison
  --policy P              non-convergence policy: force (default: every run ends in a migration),
                          abort or throttle
  --warmup-ms N           guest run time before the migration (default 1000)
  --sample-ms N           GetJob sampling period (default 100)
  --from-results FILE     no runs: plots and report again from a results.json (into its folder,
                          or --out), e.g. after an interrupt
  -h, --help              this text`;

export class UsageError extends Error {}

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

export function parseOptions(argv: string[]): HarnessOptions | 'help' {
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
      'no-predict': { type: 'boolean' },
      'no-final-approach': { type: 'boolean' },
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
    predict: !values['no-predict'],
    noFinalApproach: values['no-final-approach'] === true,
  };
}

/**
 * Asks a fresh source agent to start a migration of each method that might not be built in
 * (postcopy) with a small guest; an INVALID_ARGUMENT "not available" answer marks it unavailable.
 * A method it accepts is cancelled at once.
 */

/** Every run of the matrix and the scaling runs, methods innermost. */
export function matrixSpecs(o: HarnessOptions, methods: Method[]): RunSpec[] {
  const specs: RunSpec[] = [];
  const common = { downtimeLimitMs: o.downtimeLimitMs, policy: o.policy, maxDurationMs: o.maxDurationMs, warmupMs: o.warmupMs, sampleMs: o.sampleMs, disableCompression: false, linkMode: o.linkMode, noFinalApproach: o.noFinalApproach };
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
