// The fault matrix's cases: a case is (fault, method, phase, seed), written `fault/method/phase/seed`
// (its id, which replays it). Every random choice of a case (the guest's environment, the delay
// into the phase, how long a stall or an outage lasts, which byte a corruption flips) is drawn from
// its seed, in a fixed order, so that the same id makes the same choices. Timing is not replayed:
// the agents run on a real clock, so a replay makes the same choices at about the same moments.

import { InvalidArgumentError } from '../../shared/errors.js';
import { Random } from '../../shared/random.js';
import type { MigrationMethod, MigrationPhase } from '../../shared/stats.js';

/**
 * kill9-*: SIGKILL to an agent (its sim guests die with it), restarted on the same state dir.
 * sigterm-*: SIGTERM (the agent aborts what has not committed and exits 0), restarted likewise.
 * cut: every connection between the agents reset, new ones refused for an outage, then restored.
 * stall: nothing crosses the link either way for a while; connections stay open.
 * corrupt: one byte of the stream between the agents flipped, once.
 */
export const FAULT_KINDS = ['kill9-source', 'kill9-target', 'sigterm-source', 'sigterm-target', 'cut', 'stall', 'corrupt'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export const FAULT_METHODS = ['crtr', 'precopy', 'postcopy'] as const satisfies readonly MigrationMethod[];

/** Each method's phases, in order (README, "The Control API"). */
export const METHOD_PHASES: Readonly<Record<MigrationMethod, readonly MigrationPhase[]>> = {
  crtr: ['pre-migration', 'reservation', 'checkpoint', 'log-transfer', 'stop-and-copy', 'commitment', 'activation'],
  precopy: ['pre-migration', 'reservation', 'checkpoint', 'stop-and-copy', 'commitment', 'activation'],
  postcopy: ['pre-migration', 'reservation', 'stop-and-copy', 'activation', 'page-push', 'commitment'],
  // A real guest's method: the matrix runs on the sim guest, which has no hypervisor stream of its own.
  'qemu-native': ['pre-migration', 'reservation', 'checkpoint', 'stop-and-copy', 'commitment', 'activation'],
};

/**
 * The longest delay into each phase before the fault: somewhat less than the phase lasts with the
 * cluster's guest and link (64 MiB, 40 MB/s, 10 ms round trip; measured here: the checkpoint
 * 0.8 s, the log transfer 0.3-1.3 s, the page push 0.6 s, the switchover's phases 2-70 ms: CR/TR's
 * stop-and-copy lasts a few ms, so most faults meant for it land in the commitment). A fault that
 * comes after its phase ended is recorded where it landed.
 */
export const PHASE_DELAY_MS_MAX: Readonly<Record<Exclude<MigrationPhase, 'done'>, number>> = {
  'pre-migration': 20,
  reservation: 60,
  checkpoint: 600,
  'log-transfer': 250,
  'stop-and-copy': 2,
  commitment: 15,
  activation: 5,
  'page-push': 500,
};

/** Phases that move the bulk of the guest's state: a corruption may land anywhere in a megabyte of stream. */
const BULK_PHASES: readonly MigrationPhase[] = ['checkpoint', 'log-transfer', 'page-push'];

export interface FaultCase {
  fault: FaultKind;
  method: MigrationMethod;
  phase: MigrationPhase;
  seed: number;
}

/** What a case's seed decides, drawn in this order whatever the fault. */
export interface CaseChoices {
  /** The sim guest's environment seed. */
  guestSeed: number;
  /** From the phase's start (as the watcher sees it) to the fault. */
  delayMs: number;
  /** stall: how long nothing crosses. */
  stallMs: number;
  /** cut: how long new connections are refused after the cut. */
  outageMs: number;
  /** corrupt: which byte (from the moment it is armed), which way, and the bits flipped. */
  corruptOffset: number;
  corruptDirection: 'forward' | 'reverse';
  corruptMask: number;
}

export function caseChoices(c: FaultCase): CaseChoices {
  const rng = new Random(c.seed);
  const guestSeed = rng.nextU32() || 1;
  const delayMs = rng.nextInt(PHASE_DELAY_MS_MAX[c.phase as keyof typeof PHASE_DELAY_MS_MAX] + 1);
  const stallMs = 250 + rng.nextInt(2751);
  const outageMs = rng.nextInt(2001);
  const corruptDirection = rng.nextInt(4) === 0 ? 'reverse' : 'forward';
  const offsetRange = corruptDirection === 'forward' && BULK_PHASES.includes(c.phase) ? 1024 * 1024 : 200;
  const corruptOffset = rng.nextInt(offsetRange);
  const corruptMask = 1 + rng.nextInt(255);
  return { guestSeed, delayMs, stallMs, outageMs, corruptOffset, corruptDirection, corruptMask };
}

export function caseId(c: FaultCase): string {
  return `${c.fault}/${c.method}/${c.phase}/${c.seed}`;
}

/** Parses `fault/method/phase/seed`; throws naming what is wrong. */
export function parseCaseId(id: string): FaultCase {
  const [fault, method, phase, seedText, ...rest] = id.split('/');
  const fail = (why: string) => new InvalidArgumentError(`fault case '${id}': ${why}; expected fault/method/phase/seed, e.g. kill9-target/crtr/commitment/12345`);
  if (rest.length > 0 || seedText === undefined) throw fail('four parts separated by /');
  if (!(FAULT_KINDS as readonly string[]).includes(fault)) throw fail(`fault '${fault}' is not one of ${FAULT_KINDS.join(', ')}`);
  if (!(FAULT_METHODS as readonly string[]).includes(method)) throw fail(`method '${method}' is not one of ${FAULT_METHODS.join(', ')}`);
  const phases = METHOD_PHASES[method as MigrationMethod];
  if (!(phases as readonly string[]).includes(phase)) throw fail(`phase '${phase}' is not one of ${method}'s: ${phases.join(', ')}`);
  const seed = Number(seedText);
  if (!/^\d+$/.test(seedText) || seed > 0xffff_ffff) throw fail(`seed '${seedText}' is not an integer in [0, 4294967295]`);
  return { fault: fault as FaultKind, method: method as MigrationMethod, phase: phase as MigrationPhase, seed };
}

/** The command that runs one case again, alone, with the agents' debug logs kept in `logDir`. */
export function replayCommand(c: FaultCase, logDir = '/tmp/vmmigrate-faults'): string {
  return `npm run bench -- faults --case ${caseId(c)} --log-dir ${logDir}`;
}

export interface MatrixFilter {
  faults?: readonly FaultKind[];
  methods?: readonly MigrationMethod[];
  phases?: readonly MigrationPhase[];
}

/**
 * Every fault x method x phase, `repeats` times, each case with a seed of its own drawn from
 * `baseSeed` in this order (so a base seed names the whole matrix).
 */
export function fullMatrix(baseSeed: number, repeats: number, filter: MatrixFilter = {}): FaultCase[] {
  const rng = new Random(baseSeed);
  const cases: FaultCase[] = [];
  for (let r = 0; r < repeats; r++) {
    for (const fault of filter.faults ?? FAULT_KINDS) {
      for (const method of filter.methods ?? FAULT_METHODS) {
        for (const phase of METHOD_PHASES[method]) {
          const seed = rng.nextU32();
          if (filter.phases === undefined || filter.phases.includes(phase)) cases.push({ fault, method, phase, seed });
        }
      }
    }
  }
  return cases;
}

/**
 * The sample CI runs: every fault x method once, the phases dealt out so that each method's seven
 * faults fall on all of its six or seven phases, rotated by the base seed (another base seed
 * pairs faults and phases differently).
 */
export function ciSample(baseSeed: number): FaultCase[] {
  const rng = new Random(baseSeed);
  const rotation = rng.nextInt(7);
  const cases: FaultCase[] = [];
  for (const method of FAULT_METHODS) {
    const phases = METHOD_PHASES[method];
    FAULT_KINDS.forEach((fault, i) => {
      cases.push({ fault, method, phase: phases[(i + rotation) % phases.length], seed: rng.nextU32() });
    });
  }
  return cases;
}
