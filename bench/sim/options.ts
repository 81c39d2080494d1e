// The options of `npm run bench -- sim`: their defaults, limits and usage text.

import { parseArgs } from 'node:util';
import { PROFILE_NAMES, type ProfileName } from '../../shared/driver/sim/index.js';

export const PARTS = ['replay', 'checkpoint', 'cow'] as const;
export type Part = (typeof PARTS)[number];

export interface SimBenchOptions {
  quick: boolean;
  json: boolean;
  profiles: ProfileName[];
  memoryMiB: number;
  units: number;
  parts: Set<Part>;
  /** Units run before recording starts, so the instruction budget is calibrated and code is hot. */
  warmupUnits: number;
  /** Repetitions of each 1 GiB checkpoint pass. */
  checkpointReps: number;
  /** Link speeds (bit/s) at which part 3 paces the guest against the checkpoint. */
  linkBitsPerSec: number[];
}

/** Sizes of a full run and of a --quick one. */
const DEFAULTS = {
  full: { memoryMiB: 512, units: 200, warmupUnits: 50, checkpointReps: 3 },
  quick: { memoryMiB: 128, units: 50, warmupUnits: 30, checkpointReps: 1 },
} as const;

const MEMORY_MIB_MIN = 64;
const MEMORY_MIB_MAX = 16384;
/** The sim guest's memory comes in runs of 2 MiB. */
const MEMORY_MIB_MULTIPLE = 2;
const UNITS_MIN = 1;
const UNITS_MAX = 100_000;
const LINK_BITS_PER_SEC = [1e9, 10e9];

export const USAGE = `usage: npm run bench -- sim [options]

  --quick             smaller and shorter (under a minute): ${DEFAULTS.quick.memoryMiB} MiB guests and ${DEFAULTS.quick.units} units in part 1,
                      one repetition of each 1 GiB checkpoint pass
  --profiles a,b      workload profiles for part 1 (default: all: ${PROFILE_NAMES.join(', ')})
  --memory-mib N      guest memory of part 1, MiB (default ${DEFAULTS.full.memoryMiB}, --quick ${DEFAULTS.quick.memoryMiB})
  --units N           units (10 ms of guest time each) recorded per profile (default ${DEFAULTS.full.units}, --quick ${DEFAULTS.quick.units})
  --parts a,b         parts to run (default: all: ${PARTS.join(', ')})
  --json              also print one JSON object with every figure as the last line
  -h, --help          this text

Prints figures only; asserts nothing about timings. Exits 1 if a replica's state digest differs
from its guest's, 2 on a bad option.`;

/** A bad command line: the message says which option and what it expected. */
export class UsageError extends Error {}

function parseFlags(argv: string[]) {
  try {
    return parseArgs({
      args: argv,
      allowPositionals: false,
      strict: true,
      options: {
        quick: { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
        profiles: { type: 'string' },
        'memory-mib': { type: 'string' },
        units: { type: 'string' },
        parts: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }).values;
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

/** The distinct items of a comma-separated list, each one of `allowed`. */
function listFlag(text: string, what: string, allowed: readonly string[]): string[] {
  const items = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (items.length === 0) throw new UsageError(`--${what} is empty: expected a comma-separated list of ${allowed.join(', ')}`);
  for (const item of items) {
    if (!allowed.includes(item)) throw new UsageError(`--${what}: unknown '${item}', expected some of ${allowed.join(', ')}`);
  }
  return [...new Set(items)];
}

function integerFlag(text: string | undefined, what: string, fallback: number, min: number, max: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${what} ${text}: expected an integer from ${min} to ${max}`);
  return n;
}

/** The options `argv` asks for, or 'help'; throws UsageError on a bad one. */
export function parseOptions(argv: string[]): SimBenchOptions | 'help' {
  const v = parseFlags(argv);
  if (v.help) return 'help';
  const quick = v.quick === true;
  const defaults = quick ? DEFAULTS.quick : DEFAULTS.full;
  const memoryMiB = integerFlag(v['memory-mib'], 'memory-mib', defaults.memoryMiB, MEMORY_MIB_MIN, MEMORY_MIB_MAX);
  if (memoryMiB % MEMORY_MIB_MULTIPLE !== 0) throw new UsageError(`--memory-mib ${memoryMiB}: expected a multiple of ${MEMORY_MIB_MULTIPLE} MiB`);
  return {
    quick,
    json: v.json === true,
    profiles: (v.profiles === undefined ? [...PROFILE_NAMES] : listFlag(v.profiles, 'profiles', PROFILE_NAMES)) as ProfileName[],
    memoryMiB,
    units: integerFlag(v.units, 'units', defaults.units, UNITS_MIN, UNITS_MAX),
    parts: new Set((v.parts === undefined ? [...PARTS] : listFlag(v.parts, 'parts', PARTS)) as Part[]),
    warmupUnits: defaults.warmupUnits,
    checkpointReps: defaults.checkpointReps,
    linkBitsPerSec: [...LINK_BITS_PER_SEC],
  };
}
