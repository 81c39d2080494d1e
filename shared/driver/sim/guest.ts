// A running `sim` guest on its host: the machine, its vCPU, and (during a migration) the recording
// that seals each unit into the log.
//
// Pacing: unit k starts at boot + k * unitMs of wall time. The vCPU executes its busy part at once
// (real CPU work), then sleeps out the idle part. A host too slow to keep up makes the guest run
// late, as an overcommitted VM does; past `lagMsMax` the schedule is reset and the lost time
// counted. The instruction budget of a unit adapts to the host's measured speed so that the busy
// part takes busyFraction of the unit; the budget is recorded, so replay needs no such measure.
//
// Where the vCPU executes (SimGuestOptions.vcpu): on a thread of its own (`thread`, the agents'
// default: vcpu-thread.ts, vcpu-link.ts), as a hypervisor runs a vCPU beside its own work, so that
// moving data and running the guest do not queue behind each other; or on the agent's event loop
// between its other work (`inline`, inline-runner.ts; manual pacing always). Either way the unit
// is the same (vcpu-core.ts) and so is what it records: the mode changes timing, not results.
//
// Bounds: the queue of sealed units waiting for the agent, and the copy-on-write pool of a live
// checkpoint, both have a limit. Past either, the guest stalls (does not run its next unit) until
// the consumer catches up, like a vCPU blocked on a full log ring or a write-protect fault; the
// stall time is reported.

import { AbortedError, InvalidArgumentError, InvalidStateError } from '../../errors.js';
import type { CheckpointChunk, DeltaSource, DeltaStart, GuestDescription, GuestOutput, GuestState, LogRecorder, PageAccess, RecordingStart, RecordingStats, SealedUnit, SourceGuest } from '../types.js';
import { PAGE_BYTES } from '../types.js';
import type { SimGuestOptions } from './guest-options.js';
import type { SimMachine } from './machine.js';
import { pageAccessOf } from './page-codec.js';
import type { SimMachineConfig } from './config.js';
import { encodeMachineConfig, summarizeConfig } from './config.js';
import { machineDigest } from './digest.js';
import { SimRecorder } from './recorder.js';
import { InlineRunner } from './inline-runner.js';
import { VcpuCore } from './vcpu-core.js';
import { VcpuLink } from './vcpu-link.js';
import type { Worker } from 'node:worker_threads';

export { type Pacing, SIM_GUEST_DEFAULTS, type SimGuestOptions, VCPU_MODES, type VcpuMode } from './guest-options.js';

export class SimSourceGuest implements SourceGuest, LogRecorder, DeltaSource {
  private runState: GuestState;
  private readonly core: VcpuCore;
  private readonly rec: SimRecorder;
  /** The runner on this thread (inline), while running. */
  private loop: { stop: AbortController; done: Promise<void> } | null = null;
  /** The vCPU on its own thread (vcpu mode `thread`), from the first start on. */
  private vcpu: VcpuLink | null = null;
  private readonly inline: InlineRunner;
  /** How long the vCPU ran on after the last suspend() was called, and the units it completed (on its own thread: the unit in progress). */
  private suspendRan = { ms: 0, units: 0 };
  /** Post-copy: fetches missing pages before a unit touches them. */
  private pageFetcher: ((pages: Uint32Array) => Promise<void>) | null = null;
  readonly pages: PageAccess;

  /** Capability `log-recording`: the sim guest records every nondeterministic event. */
  get recorder(): LogRecorder {
    return this.rec;
  }

  /** Capability `delta-checkpoint`. */
  get deltas(): DeltaSource {
    return this.rec;
  }

  /** Its replies to the packets it receives (output.ts). */
  get output(): GuestOutput {
    return this.machine.output;
  }

  get pagesMissing(): number {
    return this.machine.memory.missing === null ? 0 : this.machine.memory.missingCount;
  }

  /** Whether the vCPU runs on a thread of its own (manual pacing always runs on the caller's). */
  get threaded(): boolean {
    return this.options.vcpu === 'thread' && this.options.pacing !== 'manual';
  }

  constructor(
    readonly id: string,
    readonly machine: SimMachine,
    readonly config: SimMachineConfig,
    readonly options: SimGuestOptions,
    private readonly onDiscard: (guest: SimSourceGuest) => void = () => {},
    /** A vCPU thread started ahead for this guest (at its reservation), for vCPU mode `thread`. */
    private vcpuThread?: Worker,
  ) {
    if (!(options.cowBytesMax >= PAGE_BYTES) || !(options.logQueueBytesMax >= 1) || !(options.logQueueUnitsMax >= 1)) {
      throw new InvalidArgumentError(`guest ${id}: cowBytesMax, logQueueBytesMax and logQueueUnitsMax must be positive`);
    }
    this.core = new VcpuCore(machine, config, options.environmentSeed, options.instructionsPerMs);
    const guest = this;
    this.inline = new InlineRunner({
      id,
      core: this.core,
      memory: machine.memory,
      pacing: options.pacing,
      lagMsMax: options.lagMsMax,
      running: () => this.runState === 'running',
      recording: () => this.rec.recording,
      get pageFetcher() {
        return guest.pageFetcher;
      },
    });
    this.runState = 'suspended';
    this.pages = pageAccessOf(machine.memory, () => this.checkAlive());
    this.rec = new SimRecorder({
      id,
      machine,
      options,
      checkAlive: () => this.checkAlive(),
      stallMs: () => this.runnerStats().stallMs,
      unitsUnsent: () => this.vcpu?.counter('unitsUnsent') ?? 0,
      atBoundary: (fn) => this.atBoundary(fn),
      recordingChanged: (recording) => this.vcpu?.setRecording(recording?.id ?? 0),
      logBatchChanged: (ms) => this.vcpu?.setLogBatchMs(ms),
      unitsLeft: (units, bytes) => this.vcpu?.unitsTaken(units, bytes),
    });
  }

  /** Post-copy: how the runner gets pages that have not arrived yet. */
  setPageFetcher(fetch: (pages: Uint32Array) => Promise<void>): void {
    this.pageFetcher = fetch;
  }

  /** Starts the guest running (a new guest, or one just activated on this host). */
  start(): void {
    this.checkAlive();
    if (this.runState === 'running') return;
    this.runState = 'running';
    if (this.options.pacing === 'manual') return;
    if (!this.threaded) return this.startLoop();
    if (this.vcpu !== null) return this.vcpu.restart(this.machine.state, this.machine.memory.cow);
    this.vcpu = new VcpuLink(
      {
        guestId: this.id,
        config: this.config,
        options: this.options,
        memory: this.machine.memory,
        state: this.machine.state,
        throttle: this.core.throttle,
        cow: this.machine.memory.cow,
        recording: this.rec.recording?.id ?? 0,
        logBatchMs: this.rec.logBatchMs,
      },
      {
        sealed: (unit) => this.rec.sealFromThread(unit),
        // Produced on the vCPU's thread: the delay counts from there, the hop to this thread included.
        output: (o) => this.machine.output.afterUnit(o.unit, o.rxBefore, o.rxAfter, o.stateHash, o.producedAtEpochMs - performance.timeOrigin),
        fetchPages: (pages) => (this.pageFetcher === null ? Promise.reject(new InvalidStateError(`guest ${this.id} has pages missing and no way to fetch them`)) : this.pageFetcher(pages)),
        failed: (error) => this.runnerFailed(error),
      },
      this.vcpuThread,
    );
    this.vcpuThread = undefined;
  }

  describe(): GuestDescription {
    return {
      id: this.id,
      driver: 'sim',
      memoryBytes: this.config.memoryBytes,
      vcpus: 1,
      unitMs: this.config.unitMs,
      state: this.runState,
      machineConfig: encodeMachineConfig(this.config),
      summary: summarizeConfig(this.config),
      workload: { profile: this.config.profile, rates: { ...this.config.rates } },
    };
  }

  get state(): GuestState {
    return this.runState;
  }

  /** Runner counters: units executed, wall time stalled on bounds, work given up to throttling, schedule resets. */
  runnerStats(): { unitsRun: number; instructionsRun: number; stallMs: number; throttledMs: number; lagResets: number; instructionsPerMs: number; throttle: number; pagesFetched: number; suspendRanMs: number; suspendRanUnits: number } {
    const core = this.core;
    const thread = this.vcpu;
    // On a thread, its counters plus the final units sealed here at each suspend.
    return {
      unitsRun: core.unitsRun + (thread?.counter('unitsRun') ?? 0),
      instructionsRun: core.instructionsRun + (thread?.counter('instructionsRun') ?? 0),
      stallMs: this.inline.stallMs + (thread?.counter('stallMs') ?? 0),
      throttledMs: core.throttledMs + (thread?.counter('throttledMs') ?? 0),
      lagResets: this.inline.lagResets + (thread?.counter('lagResets') ?? 0),
      instructionsPerMs: thread?.counter('instructionsPerMs') || core.instructionsPerMs,
      throttle: core.throttle,
      pagesFetched: this.inline.pagesFetched + (thread?.counter('pagesFetched') ?? 0),
      suspendRanMs: this.suspendRan.ms,
      suspendRanUnits: this.suspendRan.units,
    };
  }

  // Capabilities log-recording and delta-checkpoint, by the recorder (recorder.ts).
  startRecording(): RecordingStart {
    return this.rec.startRecording();
  }
  liveCheckpoint(options?: { chunkPages?: number; reuseBuffer?: boolean; base?: BigUint64Array }): AsyncIterable<CheckpointChunk> {
    return this.rec.liveCheckpoint(options);
  }
  pagesDirtiedSinceInstant(): number {
    return this.rec.pagesDirtiedSinceInstant();
  }
  rebase(): DeltaStart {
    return this.rec.rebase();
  }
  deltaCheckpoint(options?: { chunkPages?: number; reuseBuffer?: boolean }): AsyncIterable<CheckpointChunk> {
    return this.rec.deltaCheckpoint(options);
  }
  nextSealedUnit(signal?: AbortSignal): Promise<SealedUnit | null> {
    return this.rec.nextSealedUnit(signal);
  }
  recordingStats(): RecordingStats {
    return this.rec.recordingStats();
  }
  setLogBatch(ms: number): void {
    this.rec.setLogBatch(ms);
  }
  stopRecording(): void {
    this.rec.stopRecording();
  }

  async suspend(): Promise<void> {
    this.checkAlive();
    if (this.runState === 'running') {
      this.runState = 'suspended';
      const loop = this.loop;
      if (loop !== null) {
        loop.stop.abort();
        await loop.done;
      }
      // On its own thread, the vCPU stops between units; every unit it sealed was received by then.
      if (this.vcpu !== null) {
        const { state, ranMs, ranUnits } = await this.vcpu.stop();
        this.machine.state = state;
        this.suspendRan = { ms: ranMs, units: ranUnits };
      }
    }
    // Also for a guest recorded while already suspended: its log must still end.
    const rec = this.rec.recording;
    if (rec !== null && !rec.sealedFinal) {
      // The last unit: it covers no more execution (the runner stops between units), and tells
      // the replica that the log ends here.
      rec.seal(this.core.runFinal(true)!);
    }
  }

  resume(): void {
    this.checkAlive();
    if (this.retired) throw new InvalidStateError(`guest ${this.id} was failed over elsewhere: this copy never runs again`, { reason: 'FAILED_OVER', metadata: { guestId: this.id } });
    if (this.runState !== 'suspended') throw new InvalidStateError(`guest ${this.id} is ${this.runState}, not suspended`);
    // A migration that is aborted resumes the source: its recording ends with it.
    this.stopRecording();
    this.start();
  }

  machineState(): Uint8Array {
    this.checkAlive();
    if (this.runState !== 'suspended') throw new InvalidStateError(`guest ${this.id} is ${this.runState}: its machine state is only taken while suspended`);
    return this.machine.state.serialize();
  }

  setThrottle(factor: number): void {
    this.checkAlive();
    if (!(factor > 0 && factor <= 1)) throw new InvalidArgumentError(`throttle factor ${factor} is out of range (0, 1]`);
    this.core.throttle = factor;
    this.vcpu?.setThrottle(factor);
  }

  /** Set by retire(): a copy stopped for good, kept only as a base image for a fail back. */
  retired = false;

  retire(): void {
    this.checkAlive();
    if (this.runState !== 'suspended') throw new InvalidStateError(`guest ${this.id} is ${this.runState}: only a suspended guest is retired`);
    this.stopRecording();
    this.retired = true;
  }

  /**
   * Hands a retired guest's machine over to a replica that adopts it as its base image: the guest
   * leaves the host (its vCPU thread ends) and its memory is not freed.
   */
  relinquish(): SimMachine {
    if (!this.retired || this.runState !== 'suspended') throw new InvalidStateError(`guest ${this.id} is not a retired copy`);
    this.runState = 'discarded';
    this.vcpu?.exit();
    void this.vcpuThread?.terminate();
    this.onDiscard(this);
    return this.machine;
  }

  discard(): void {
    if (this.runState === 'discarded') return;
    this.loop?.stop.abort();
    this.stopRecording();
    this.runState = 'discarded';
    const memory = this.machine.memory;
    const vcpu = this.vcpu;
    if (vcpu !== null && memory.pool !== null) {
      // The segments go to the pool only once the vCPU thread, which may be writing them, has ended.
      const pool = memory.pool;
      const segments = memory.segments.filter((s) => s !== undefined);
      memory.pool = null;
      void vcpu.exited.then(() => segments.forEach((s) => pool.give(s)));
    }
    vcpu?.exit();
    void this.vcpuThread?.terminate();
    memory.free();
    this.onDiscard(this);
  }

  digest(): string {
    this.checkAlive();
    return machineDigest(this.machine);
  }

  /**
   * Runs one unit now, outside real-time pacing (manual pacing, tests). Waits, as the runner
   * does, while the log queue or the checkpoint pool is full.
   */
  async step(units = 1): Promise<void> {
    if (this.options.pacing !== 'manual') throw new InvalidStateError(`guest ${this.id}: step() needs manual pacing, it is ${this.options.pacing}`);
    if (this.runState !== 'running') throw new InvalidStateError(`guest ${this.id} is ${this.runState}, not running`, { reason: 'GUEST_NOT_RUNNING', metadata: { guestId: this.id } });
    for (let i = 0; i < units; i++) {
      if (!(await this.inline.runUnit(new AbortController().signal))) return;
    }
  }

  private checkAlive(): void {
    if (this.runState === 'discarded') throw new InvalidStateError(`guest ${this.id} was discarded`, { reason: 'GUEST_NOT_RUNNING', metadata: { guestId: this.id } });
  }

  /**
   * Runs `fn` at a unit boundary: at once on this thread; on its own thread, the vCPU is parked
   * first (this thread waits the rest of its unit), and goes on afterwards with what `fn` began.
   */
  private atBoundary<T>(fn: () => T): T {
    const vcpu = this.vcpu;
    if (vcpu === null || this.runState !== 'running') return fn();
    this.machine.state = vcpu.park();
    try {
      return fn();
    } finally {
      vcpu.unpark(this.machine.memory.cow);
    }
  }

  private runnerFailed(error: unknown): void {
    if (this.runState === 'running') this.runState = 'suspended';
    // A thread that failed is gone: a later start begins a new one (from this thread's state).
    if (this.vcpu !== null) {
      this.core.unitsRun += this.vcpu.counter('unitsRun');
      this.core.instructionsRun += this.vcpu.counter('instructionsRun');
      this.vcpu.exit();
      this.vcpu = null;
    }
    this.options.onRunnerFailure?.(this.id, error);
  }

  private startLoop(): void {
    const stop = new AbortController();
    const done = this.inline.runLoop(stop.signal).catch((error: unknown) => {
      if (error instanceof AbortedError) return;
      this.runnerFailed(error);
    });
    this.loop = { stop, done };
  }
}
