// The faults of one simulated run, drawn from its seed: a few of them, each fired once by a
// trigger (the n-th message of a kind going one way, a phase of the source entering, an instant)
// and doing one thing (the connection resets, a unary message vanishes, a message is held back, the
// link stalls, the target agent crashes before or after a message and restarts later, or the
// operator cancels the job). Message triggers land faults at every step of the protocol, the
// commit and its answer included, whatever the timing of the run.

import type { Clock } from '../../../shared/clock.js';
import type { Random } from '../../../shared/random.js';
import type { MigrationMethod, MigrationPhase } from '../../../shared/stats.js';
import type { Direction } from './network.js';

export type FaultAction =
  /** The connection breaks: this message is lost, every call on the connection fails. */
  | { kind: 'reset' }
  /** Unary: this message is lost and the connection seems fine, so the caller waits out its deadline (a stream message: as reset). */
  | { kind: 'blackhole' }
  /** This message, and those behind it on its call, arrive `ms` late: other calls overtake it. */
  | { kind: 'hold'; ms: number }
  /** The link carries nothing `direction` for `ms`; what is in flight then arrives, in order. */
  | { kind: 'stall'; ms: number; direction: Direction | 'both' }
  /** The target agent crashes before the message is handled (or sent), or right after; it restarts `downMs` later. */
  | { kind: 'crash'; when: 'before' | 'after'; downMs: number }
  /** The operator cancels the job (refused past the commit point). */
  | { kind: 'cancel' }
  /** The target's journal refuses its next write (a full disk); the message goes on. */
  | { kind: 'journal' };

export type Trigger =
  /** The `occurrence`-th message of kind `what` going `direction` (unary calls are named by their method). */
  | { on: 'message'; what: string; direction: Direction; occurrence: number }
  | { on: 'phase'; phase: MigrationPhase }
  | { on: 'time'; atMs: number };

export interface Fault {
  trigger: Trigger;
  action: FaultAction;
}

/** What a fault fired by a phase or an instant acts on. */
export interface Actuators {
  crash(downMs: number): void;
  stall(direction: Direction | 'both', ms: number): void;
  /** Breaks the connection to the target, if there is one. */
  reset(): void;
  cancel(): void;
  /** The target's journal refuses its next write. */
  journalFails(): void;
}

type Weighted<T> = ReadonlyArray<readonly [T, number]>;

/** Kinds of message and their weights: the commit's neighbourhood weighs most. */
const MESSAGE_KINDS: Record<MigrationMethod, Weighted<[Direction, string]>> = {
  crtr: [
    [['toTarget', 'stream-open'], 1], [['toTarget', 'open'], 1], [['toTarget', 'chunk'], 2], [['toTarget', 'unit'], 2], [['toTarget', 'stopDecision'], 2],
    [['toTarget', 'commit'], 5], [['toTarget', 'abort'], 1], [['toTarget', 'half-close'], 1],
    [['toSource', 'progress'], 2], [['toSource', 'stopRequest'], 2], [['toSource', 'commitResult'], 5], [['toSource', 'activated'], 3], [['toSource', 'error'], 1], [['toSource', 'status'], 2],
    [['toTarget', 'getCapacity'], 1], [['toTarget', 'reserve'], 2], [['toTarget', 'release'], 1], [['toTarget', 'queryOutcome'], 3], [['toTarget', 'ping'], 1],
    [['toSource', 'getCapacity'], 1], [['toSource', 'reserve'], 3], [['toSource', 'release'], 1], [['toSource', 'queryOutcome'], 3], [['toSource', 'ping'], 1],
  ],
  precopy: [
    [['toTarget', 'stream-open'], 1], [['toTarget', 'open'], 1], [['toTarget', 'pages'], 3], [['toTarget', 'machineState'], 3],
    [['toTarget', 'commit'], 5], [['toTarget', 'abort'], 1], [['toTarget', 'half-close'], 1],
    [['toSource', 'progress'], 2], [['toSource', 'commitResult'], 5], [['toSource', 'activated'], 3], [['toSource', 'error'], 1], [['toSource', 'status'], 2],
    [['toTarget', 'getCapacity'], 1], [['toTarget', 'reserve'], 2], [['toTarget', 'release'], 1], [['toTarget', 'queryOutcome'], 3], [['toTarget', 'ping'], 1],
    [['toSource', 'getCapacity'], 1], [['toSource', 'reserve'], 3], [['toSource', 'release'], 1], [['toSource', 'queryOutcome'], 3], [['toSource', 'ping'], 1],
  ],
  postcopy: [],
  'qemu-native': [],
};

/** Kinds sent many times in a run: their trigger picks a later occurrence. */
const FREQUENT = new Set(['chunk', 'unit', 'pages', 'progress', 'ping', 'queryOutcome']);

const PHASES: Record<MigrationMethod, readonly MigrationPhase[]> = {
  crtr: ['pre-migration', 'reservation', 'checkpoint', 'log-transfer', 'stop-and-copy', 'commitment', 'activation'],
  precopy: ['pre-migration', 'reservation', 'checkpoint', 'stop-and-copy', 'commitment', 'activation'],
  postcopy: [],
  'qemu-native': [],
};

export function pick<T>(random: Random, choices: Weighted<T>): T {
  let total = 0;
  for (const [, w] of choices) total += w;
  let x = random.nextFloat() * total;
  for (const [value, w] of choices) {
    x -= w;
    if (x < 0) return value;
  }
  return choices[choices.length - 1][0];
}

/** Log-uniform in [min, max): short and long durations alike. */
export function logUniform(random: Random, min: number, max: number): number {
  return Math.round(min * Math.exp(random.nextFloat() * Math.log(max / min)));
}

function drawTrigger(random: Random, method: MigrationMethod): Trigger {
  const on = pick<Trigger['on']>(random, [['message', 7], ['phase', 2], ['time', 1]]);
  if (on === 'phase') return { on, phase: PHASES[method][random.nextInt(PHASES[method].length)] };
  if (on === 'time') return { on, atMs: random.nextInt(3_000) };
  const [direction, what] = pick(random, MESSAGE_KINDS[method]);
  const occurrence = FREQUENT.has(what) ? 1 + random.nextInt(12) : random.nextFloat() < 0.7 ? 1 : 2 + random.nextInt(2);
  return { on, what, direction, occurrence };
}

function drawAction(random: Random): FaultAction {
  const kind = pick<FaultAction['kind']>(random, [['reset', 3], ['blackhole', 1], ['hold', 2], ['stall', 2], ['crash', 3], ['cancel', 1], ['journal', 1]]);
  switch (kind) {
    case 'hold':
      return { kind, ms: logUniform(random, 20, 8_000) };
    case 'stall':
      return { kind, ms: logUniform(random, 50, 90_000), direction: pick<Direction | 'both'>(random, [['both', 3], ['toTarget', 1], ['toSource', 1]]) };
    case 'crash':
      return { kind, when: random.nextFloat() < 0.5 ? 'before' : 'after', downMs: logUniform(random, 50, 20_000) };
    default:
      return { kind };
  }
}

/** The faults of one run: none in about one run in ten (the protocol's plain path), one to three mostly, up to eight in a few. */
export function drawFaults(random: Random, method: MigrationMethod): Fault[] {
  const count = pick(random, [[0, 2], [1, 8], [2, 6], [3, 3], [4 + random.nextInt(5), 1]]);
  return Array.from({ length: count }, () => ({ trigger: drawTrigger(random, method), action: drawAction(random) }));
}

export function describeFault(fault: Fault): string {
  const t = fault.trigger;
  const when = t.on === 'message' ? `${t.what}#${t.occurrence} ${t.direction === 'toTarget' ? '->T' : '->S'}` : t.on === 'phase' ? `phase ${t.phase}` : `at ${t.atMs} ms`;
  const a = fault.action;
  const what = a.kind === 'hold' ? `hold ${a.ms} ms` : a.kind === 'stall' ? `stall ${a.direction} ${a.ms} ms` : a.kind === 'crash' ? `crash ${a.when}, down ${a.downMs} ms` : a.kind;
  return `${what} @ ${when}`;
}

/** A lossy link: each message resets the connection with this probability, until a given instant. */
export interface Loss {
  probability: number;
  untilMs: number;
  random: Random;
}

/** Fires each fault once, when its trigger comes; on a lossy link, resets connections at random besides. */
export class FaultInjector {
  private readonly pending: Fault[];
  private readonly seen = new Map<string, number>();
  readonly fired: string[] = [];
  /** When a fault last fired (a lossy link's included). */
  lastFiredAtMs = Number.NEGATIVE_INFINITY;

  constructor(
    faults: readonly Fault[],
    private readonly actuators: Actuators,
    private readonly clock: Clock,
    private readonly note: (text: string) => void,
    private readonly loss: Loss | null = null,
  ) {
    this.pending = [...faults];
    for (const f of faults) if (f.trigger.on === 'time') clock.timeout(f.trigger.atMs, () => this.fire(f));
  }

  /** The action a message meets, if its kind and count trigger a fault. */
  onMessage(what: string, direction: Direction): FaultAction | null {
    const key = `${direction}:${what}`;
    const n = (this.seen.get(key) ?? 0) + 1;
    this.seen.set(key, n);
    const fault = this.pending.find((f) => f.trigger.on === 'message' && f.trigger.what === what && f.trigger.direction === direction && f.trigger.occurrence === n);
    if (fault === undefined) return this.lost() ? { kind: 'reset' } : null;
    this.take(fault);
    return fault.action;
  }

  /** Faults that have not fired yet. */
  get pendingCount(): number {
    return this.pending.length;
  }

  /** What a message's fault does besides the message itself (stall, cancel, journal): done by the actuators. */
  act(action: FaultAction): void {
    if (action.kind === 'stall') this.actuators.stall(action.direction, action.ms);
    else if (action.kind === 'cancel') this.actuators.cancel();
    else if (action.kind === 'journal') this.actuators.journalFails();
  }

  /** The source entered `phase`. */
  onPhase(phase: MigrationPhase): void {
    for (const f of this.pending.filter((f) => f.trigger.on === 'phase' && f.trigger.phase === phase)) this.fire(f);
  }

  /** Whether the lossy link loses this message. */
  private lost(): boolean {
    const loss = this.loss;
    if (loss === null || this.clock.now() >= loss.untilMs || loss.random.nextFloat() >= loss.probability) return false;
    this.fired.push('loss: reset');
    this.lastFiredAtMs = this.clock.now();
    this.note('FAULT loss: reset');
    return true;
  }

  /** A fault not tied to a message: done at once, by the actuators. */
  private fire(fault: Fault): void {
    if (!this.pending.includes(fault)) return;
    this.take(fault);
    const a = fault.action;
    if (a.kind === 'crash') this.actuators.crash(a.downMs);
    else if (a.kind === 'hold') this.actuators.stall('toTarget', a.ms);
    else if (a.kind === 'reset' || a.kind === 'blackhole') this.actuators.reset();
    else this.act(a);
  }

  private take(fault: Fault): void {
    this.pending.splice(this.pending.indexOf(fault), 1);
    const text = describeFault(fault);
    this.fired.push(text);
    this.lastFiredAtMs = this.clock.now();
    this.note(`FAULT ${text}`);
  }
}
