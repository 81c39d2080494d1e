// A running `sim` guest on its host: the machine, its outside world, a runner that paces units in
// real time, and (during a migration) the recording that seals each unit into the log.
//
// Pacing: unit k starts at boot + k * unitMs of wall time. The runner executes its busy part at
// once (real CPU work), then sleeps out the idle part. A host too slow to keep up makes the guest
// run late, as an overcommitted VM does; past `lagMsMax` the schedule is reset and the lost time
// counted. The instruction budget of a unit adapts to the host's measured speed so that the busy
// part takes busyFraction of the unit; the budget is recorded, so replay needs no such measure.
//
// Bounds: the queue of sealed units waiting for the agent, and the copy-on-write pool of a live
// checkpoint, both have a limit. Past either, the guest stalls (does not run its next unit) until
// the consumer catches up, like a vCPU blocked on a full log ring or a write-protect fault; the
// stall time is reported.

import { AbortedError, InvalidArgumentError, InvalidStateError } from '../../errors.js';
import type { CheckpointChunk, DeltaSource, DeltaStart, GuestDescription, GuestOutput, GuestState, LogRecorder, PageAccess, RecordingStart, RecordingStats, SealedUnit, SourceGuest } from '../types.js';
import { PAGE_BYTES } from '../types.js';
import { COW_BYTES_MAX_DEFAULT } from './checkpoint.js';
import { Environment } from './environment.js';
import { SimMachine } from './machine.js';
import { pageAccessOf } from './page-codec.js';
import type { SimMachineConfig } from './config.js';
import { encodeMachineConfig, summarizeConfig } from './config.js';
import { type AsyncEvent, encodeUnit, type SyncEvent, type UnitHeader } from './unit-codec.js';
import { machineDigest } from './digest.js';
import { SimRecorder } from './recorder.js';
import { mergeByPosition } from './recording.js';

/**
 * How the runner paces units: `realtime` as a VM runs (the agents' mode); `asap` back to back,
 * yielding to the event loop between units (tests, benchmarks); `manual` only when `step()` is
 * called (tests that interleave execution with other operations precisely).
 */
export type Pacing = 'realtime' | 'asap' | 'manual';

export interface SimGuestOptions {
  pacing: Pacing;
  /** Seed of the outside world (packets, disk data, hardware random). */
  environmentSeed: number;
  /** Fixed instructions per millisecond of busy time; unset: adapt to the host's speed. */
  instructionsPerMs?: number;
  /** Sealed units waiting for the agent, at most this many bytes / units before the guest stalls. */
  logQueueBytesMax: number;
  logQueueUnitsMax: number;
  /** Copy-on-write pool of a live checkpoint: pages preserved and not yet sent. */
  cowBytesMax: number;
  /** Real-time lag past which the runner gives up catching up and resets its schedule. */
  lagMsMax: number;
  /**
   * Told when the runner fails (a bug, or a state no unit runs from): the guest is then suspended
   * and the host goes on, rather than the process ending with an unhandled rejection.
   */
  onRunnerFailure?: (guestId: string, error: unknown) => void;
}

export const SIM_GUEST_DEFAULTS: Readonly<Omit<SimGuestOptions, 'environmentSeed'>> = {
  pacing: 'realtime',
  logQueueBytesMax: 64 * 1024 * 1024,
  logQueueUnitsMax: 10_000,
  cowBytesMax: COW_BYTES_MAX_DEFAULT,
  lagMsMax: 1000,
};

/** Instructions per busy millisecond assumed before the first measurement. */
const INITIAL_INSTRUCTIONS_PER_MS = 20_000;

export class SimSourceGuest implements SourceGuest, LogRecorder, DeltaSource {
  private runState: GuestState;
  private environment: Environment;
  private readonly rec: SimRecorder;
  private throttle = 1;
  private instructionsPerMs: number;
  private pageWriteCarry = 0;
  private loop: { stop: AbortController; done: Promise<void> } | null = null;
  private stallMsTotal = 0;
  private throttledMsTotal = 0;
  private lagResets = 0;
  private unitsRun = 0;
  /** Post-copy: fetches missing pages before a unit touches them. */
  private pageFetcher: ((pages: Uint32Array) => Promise<void>) | null = null;
  private pagesFetched = 0;
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

  constructor(
    readonly id: string,
    readonly machine: SimMachine,
    readonly config: SimMachineConfig,
    readonly options: SimGuestOptions,
    private readonly onDiscard: (guest: SimSourceGuest) => void = () => {},
  ) {
    if (!(options.cowBytesMax >= PAGE_BYTES) || !(options.logQueueBytesMax >= 1) || !(options.logQueueUnitsMax >= 1)) {
      throw new InvalidArgumentError(`guest ${id}: cowBytesMax, logQueueBytesMax and logQueueUnitsMax must be positive`);
    }
    this.instructionsPerMs = options.instructionsPerMs ?? INITIAL_INSTRUCTIONS_PER_MS;
    this.environment = new Environment(config.rates, config.payload, options.environmentSeed, machine.state.guestNs);
    this.runState = 'suspended';
    this.pages = pageAccessOf(machine.memory, () => this.checkAlive());
    this.rec = new SimRecorder({ id, machine, options, checkAlive: () => this.checkAlive(), stallMs: () => this.stallMsTotal });
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
    if (this.options.pacing !== 'manual') this.startLoop();
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
  runnerStats(): { unitsRun: number; stallMs: number; throttledMs: number; lagResets: number; instructionsPerMs: number; throttle: number; pagesFetched: number } {
    return {
      unitsRun: this.unitsRun,
      stallMs: this.stallMsTotal,
      throttledMs: this.throttledMsTotal,
      lagResets: this.lagResets,
      instructionsPerMs: this.instructionsPerMs,
      throttle: this.throttle,
      pagesFetched: this.pagesFetched,
    };
  }

  // Capabilities log-recording and delta-checkpoint, by the recorder (recorder.ts).
  startRecording(): RecordingStart {
    return this.rec.startRecording();
  }
  liveCheckpoint(options?: { chunkPages?: number; reuseBuffer?: boolean }): AsyncIterable<CheckpointChunk> {
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
    }
    // Also for a guest recorded while already suspended: its log must still end.
    const rec = this.rec.recording;
    if (rec !== null && !rec.sealedFinal) {
      // The last unit: it covers no more execution (the runner stops between units), and tells
      // the replica that the log ends here.
      this.executeUnit(0, 0, [], true);
    }
  }

  resume(): void {
    this.checkAlive();
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
    this.throttle = factor;
  }

  discard(): void {
    if (this.runState === 'discarded') return;
    this.loop?.stop.abort();
    this.stopRecording();
    this.runState = 'discarded';
    this.machine.memory.free();
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
      if (!(await this.runUnit(new AbortController().signal))) return;
    }
  }

  private checkAlive(): void {
    if (this.runState === 'discarded') throw new InvalidStateError(`guest ${this.id} was discarded`, { reason: 'GUEST_NOT_RUNNING', metadata: { guestId: this.id } });
  }

  private startLoop(): void {
    const stop = new AbortController();
    const done = this.runLoop(stop.signal).catch((error: unknown) => {
      if (error instanceof AbortedError) return;
      if (this.runState === 'running') this.runState = 'suspended';
      this.options.onRunnerFailure?.(this.id, error);
    });
    this.loop = { stop, done };
  }

  private async runLoop(signal: AbortSignal): Promise<void> {
    const unitMs = this.config.unitMs;
    let next = performance.now();
    while (!signal.aborted) {
      await this.runUnit(signal);
      if (this.options.pacing === 'asap') {
        await new Promise<void>((resolve) => setImmediate(resolve));
        continue;
      }
      next += unitMs;
      const now = performance.now();
      if (now - next > this.options.lagMsMax) {
        next = now;
        this.lagResets++;
      }
      const delay = next - now;
      if (delay >= 1) await sleep(delay, signal);
      else await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /**
   * Waits for room in the bounded log queue and copy-on-write pool, then runs one unit. Returns
   * false, running nothing, if the guest was suspended or discarded meanwhile.
   */
  private async runUnit(signal: AbortSignal): Promise<boolean> {
    const rates = this.config.rates;
    const unitMs = this.config.unitMs;
    const busyFraction = rates.busyFraction * this.throttle;
    const instructionCount = Math.max(0, Math.min(0xffffffff, Math.round(busyFraction * unitMs * this.instructionsPerMs)));
    this.pageWriteCarry += (rates.pageWritesPerSec * unitMs * this.throttle) / 1000;
    const pageWriteCount = Math.floor(this.pageWriteCarry);
    this.pageWriteCarry -= pageWriteCount;
    const events = this.environment.eventsForUnit(unitMs * 1e6, instructionCount, busyFraction);
    const stallStart = performance.now();
    let stalled = false;
    for (;;) {
      if (signal.aborted) throw new AbortedError('runner stopped');
      if (this.runState !== 'running') return false;
      const rec = this.rec.recording;
      const cow = this.machine.memory.cow;
      if (rec !== null && rec.full) {
        stalled = true;
        await this.waitFor(rec.waitForRoom(), signal);
        continue;
      }
      const bound = SimMachine.pageWritesBound({ pageWriteCount }, events);
      if (cow !== null && cow.preservedBytes > 0 && !cow.hasRoomFor(bound)) {
        stalled = true;
        await this.waitFor(cow.waitForRoom(), signal);
        continue;
      }
      break;
    }
    // Post-copy: the unit may only touch pages that are here. Its address stream is known in
    // advance (SimMachine.pagesTouched), so the missing ones are fetched first, as a vCPU blocked
    // on its page faults would wait for them.
    const memory = this.machine.memory;
    while (memory.missing !== null) {
      const touched = this.machine.pagesTouched(this.header(instructionCount, pageWriteCount, false), events);
      const missing = touched.filter((p) => memory.isMissing(p));
      if (missing.length === 0) break;
      if (this.pageFetcher === null) throw new InvalidStateError(`guest ${this.id} has ${memory.missingCount} pages missing and no way to fetch them`);
      stalled = true;
      this.pagesFetched += missing.length;
      await this.waitFor(this.pageFetcher(missing), signal);
      if (signal.aborted) throw new AbortedError('runner stopped');
      if (this.runState !== 'running') return false;
    }
    if (stalled) this.stallMsTotal += performance.now() - stallStart;
    this.throttledMsTotal += (1 - this.throttle) * unitMs;
    const t0 = performance.now();
    this.executeUnit(instructionCount, pageWriteCount, events, false);
    const busyMs = performance.now() - t0;
    if (this.options.instructionsPerMs === undefined && busyMs > 0.02 && instructionCount >= 100) {
      // Exponentially weighted, so one slow unit (a GC pause) does not halve the next budget.
      const measured = instructionCount / busyMs;
      this.instructionsPerMs = Math.max(100, 0.8 * this.instructionsPerMs + 0.2 * measured);
    }
    return true;
  }

  /** Resolves when `event` does or `signal` aborts, leaving no listener behind. */
  private waitFor(event: Promise<void>, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const onAbort = () => resolve();
      signal.addEventListener('abort', onAbort, { once: true });
      void event.then(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
    });
  }

  /** Executes one unit on the machine and, while recording, seals it into the log. */
  private header(instructionCount: number, pageWriteCount: number, final: boolean): UnitHeader {
    const st = this.machine.state;
    return { sequence: st.unitSequence, final, startPosition: st.position, instructionCount, pageWriteCount, guestNs: final ? 0 : this.config.unitMs * 1e6 };
  }

  private executeUnit(instructionCount: number, pageWriteCount: number, asyncEvents: AsyncEvent[], final: boolean): void {
    const header = this.header(instructionCount, pageWriteCount, final);
    const rec = this.rec.recording;
    if (rec === null || rec.sealedFinal) {
      this.machine.executeUnit(header, asyncEvents, (type, position) => this.environment.sync(type, position));
      this.unitsRun++;
      return;
    }
    const syncEvents: SyncEvent[] = [];
    this.machine.executeUnit(header, asyncEvents, (type, position) => {
      const event = this.environment.sync(type, position);
      syncEvents.push(event);
      return event;
    });
    this.unitsRun++;
    const bytes = encodeUnit(header, mergeByPosition(asyncEvents, syncEvents));
    rec.seal({ sequence: header.sequence, bytes, guestNs: header.guestNs, eventCount: asyncEvents.length + syncEvents.length, final });
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
