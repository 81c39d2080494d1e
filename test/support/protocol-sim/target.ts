// The target agent of the protocol simulation: the real MigrationService (its sessions, receivers,
// replay pipeline, reservations and decisions) run as a process that can crash and start again.
// A run of the agent has its own clock (timers that die with it), its own driver (replicas that die
// with it) and its hold on the journal: the same records across runs when the journal is kept (a
// stateDir), fresh ones otherwise. The host, and any guest the agent activated on it, outlive it.
// The source reaches a run through connections (calls.ts): a crash breaks them all.

import type { Logger } from 'pino';
import type { ManualClock } from '../../../shared/clock.js';
import { type DecisionJournal, type JournalRecord, openJournal } from '../../../shared/journal.js';
import { MigrationService, TARGET_DEFAULTS, type TargetOptions } from '../../../target-agent/migration-service.js';
import { ProcessClock, ProcessJournal } from './process.js';
import { SimDriver, type SimHost } from './target-driver.js';

export type Handlers = ReturnType<MigrationService['handlers']>;

/** How a connection ended: a reset (both ends see it), or the target's process died (only the source is left to see it). */
export type BreakMode = 'reset' | 'crash';

/** A connection from the source to one run of the target agent; its calls fail together. */
export class SimConnection {
  broken = false;
  private readonly listeners = new Set<(mode: BreakMode) => void>();

  constructor(
    readonly id: number,
    readonly process: TargetProcess,
  ) {}

  /** `listener` learns of the break; the returned function forgets it (the call ended). */
  onBreak(listener: (mode: BreakMode) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  break(mode: BreakMode): void {
    if (this.broken) return;
    this.broken = true;
    for (const listener of [...this.listeners]) listener(mode);
    this.listeners.clear();
  }
}

/** One run of the target agent. */
export class TargetProcess {
  alive = true;
  readonly service: MigrationService;
  readonly handlers: Handlers;
  private readonly clock: ProcessClock;
  readonly journal: ProcessJournal;
  private readonly driver: SimDriver;
  private connection: SimConnection | null = null;
  private connections = 0;

  constructor(
    readonly run: number,
    base: ManualClock,
    host: SimHost,
    records: DecisionJournal,
    durable: boolean,
    options: TargetOptions,
    log: Logger,
    epochSkewMs: number,
    replaySpeed: number,
  ) {
    // Each run of the agent has a monotonic clock of its own (another boot: another origin).
    this.clock = new ProcessClock(base, 1_000_000 * run, epochSkewMs);
    this.journal = new ProcessJournal(records, durable, this.clock);
    const clock = this.clock;
    this.driver = new SimDriver(host, { work: (ms) => clock.work(ms), replaySpeed });
    const own = { agentInstanceId: `target-run-${run}`, defer: (fn: () => void) => clock.defer(fn) };
    this.service = new MigrationService(this.driver, { ...options, ...own }, log.child({ run }), undefined, this.clock, this.journal);
    this.handlers = this.service.handlers();
  }

  /** The connection calls go over: the one open, or a new one. */
  connect(): SimConnection {
    if (this.connection === null || this.connection.broken) this.connection = new SimConnection(++this.connections, this);
    return this.connection;
  }

  /** The process dies: its timers, replicas and connections with it. */
  kill(): void {
    this.alive = false;
    this.clock.kill();
    this.journal.close();
    this.driver.kill();
    this.connection?.break('crash');
  }
}

export interface TargetConfig {
  /** Whether the decisions survive a crash (a stateDir), or each run starts with none. */
  journalKept: boolean;
  /** The target host's wall clock minus the source's. */
  epochSkewMs: number;
  /** Guest time a replica replays per unit of its own time. */
  replaySpeed: number;
  options?: Partial<TargetOptions>;
}

export class SimTarget {
  process: TargetProcess | null = null;
  runs = 0;
  /** The journal on disk, when it is kept. */
  private readonly records: DecisionJournal = openJournal(undefined);
  private restartTimer: { cancel(): void } | null = null;

  constructor(
    private readonly clock: ManualClock,
    readonly host: SimHost,
    readonly config: TargetConfig,
    private readonly log: Logger,
    private readonly note: (text: string) => void,
  ) {}

  get up(): boolean {
    return this.process !== null;
  }

  /** Waiting for a restart. */
  get down(): boolean {
    return this.process === null;
  }

  start(): void {
    const kept = this.config.journalKept;
    const records = kept ? this.records : openJournal(undefined);
    this.process = new TargetProcess(++this.runs, this.clock, this.host, records, kept, { ...TARGET_DEFAULTS, ...this.config.options }, this.log, this.config.epochSkewMs, this.config.replaySpeed);
    this.note(`TARGET run ${this.runs} starts (journal ${kept ? 'kept' : 'empty'})`);
  }

  /** The target agent crashes now and starts again `downMs` later (a crash while down changes nothing). */
  crash(downMs: number): void {
    const process = this.process;
    if (process === null) return;
    this.process = null;
    process.kill();
    this.note(`TARGET run ${process.run} crashes; restart in ${downMs} ms`);
    this.restartTimer = this.clock.timeout(downMs, () => {
      this.restartTimer = null;
      this.start();
    });
  }

  /** A connection to the run up now, or null while the agent is down. */
  connect(): SimConnection | null {
    return this.process?.connect() ?? null;
  }

  /** The running agent's journal refuses its next write. */
  journalFails(): void {
    this.process?.journal.failNextAppend();
  }

  /** Breaks the connection the source has to the target, if any. */
  resetConnection(): void {
    this.process?.connect().break('reset');
  }

  /** The target's latest record of a migration, in the journal kept across runs. */
  journalRecord(migrationId: string): JournalRecord | undefined {
    return this.records.latest('target', migrationId);
  }

  /** Restarts at once if down (the run's faults are over). */
  ensureUp(): void {
    if (this.process !== null) return;
    this.restartTimer?.cancel();
    this.restartTimer = null;
    this.start();
  }
}
