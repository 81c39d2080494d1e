// The source's guest in the protocol simulation: a machine (machine.ts) that runs one unit every
// unitMs of the simulated clock while something watches it (a recording for CR/TR, dirty-page
// tracking for pre-copy), its events drawn from the seed. It records its units as a CR/TR
// recorder does (bounded queue: the guest stalls when it is full), makes its live checkpoint from
// a copy taken at the recording's start (copy-on-write, in effect), and tracks dirty pages for
// pre-copy. Every change of state is told to an observer, which checks that no guest ever runs
// in two places.

import type { Clock, Timer } from '../../../shared/clock.js';
import { PAGE_BYTES, type CheckpointChunk, type DeltaSource, type DeltaStart, type GuestDescription, type GuestState, type LogRecorder, type PageAccess, type RecordingStart, type RecordingStats, type SealedUnit, type SourceGuest } from '../../../shared/driver/types.js';
import { InvalidStateError } from '../../../shared/errors.js';
import type { Random } from '../../../shared/random.js';
import { CHUNK_PAGES, digestOf, encodeChunk, encodeDeltaChunk, encodeMachineState, encodePages, encodeUnit, PAGE_COUNT, runUnit } from './machine.js';

export const SIM_DRIVER = 'protocol-sim';

/** Told of every state a guest copy enters, on either host. */
export interface PlacementObserver {
  changed(side: 'source' | 'target', state: GuestState): void;
}

export interface SourceGuestOptions {
  unitMs: number;
  /** Sealed units the recorder queues before the guest stalls. */
  unitQueueMax: number;
  /** What a unit weighs on the link beyond its event (the guest's log rate). */
  unitFillerBytes: number;
}

export class SimSourceGuest implements SourceGuest {
  state: GuestState = 'running';
  readonly memory = new Uint32Array(PAGE_COUNT);
  position = 0;
  readonly recorder: SimRecorder;
  readonly pages: SimPages;
  readonly deltas: SimDeltas;
  /** Units the guest could not run because its log queue was full. */
  stalledUnits = 0;
  private ticker: Timer | null = null;

  constructor(
    readonly id: string,
    private readonly clock: Clock,
    private readonly world: Random,
    readonly options: SourceGuestOptions,
    private readonly observer: PlacementObserver,
  ) {
    for (let i = 0; i < this.memory.length; i++) this.memory[i] = world.nextU32();
    this.recorder = new SimRecorder(this);
    this.pages = new SimPages(this);
    this.deltas = new SimDeltas(this, this.recorder);
  }

  get pagesMissing(): number {
    return 0;
  }

  describe(): GuestDescription {
    const { unitMs } = this.options;
    return { id: this.id, driver: SIM_DRIVER, memoryBytes: PAGE_COUNT * PAGE_BYTES, vcpus: 1, unitMs, state: this.state, machineConfig: new Uint8Array(0), summary: 'protocol simulation guest' };
  }

  async suspend(): Promise<void> {
    this.require('running', 'suspend');
    this.setState('suspended');
    if (this.recorder.recording) this.recorder.seal(0, true);
  }

  resume(): void {
    this.require('suspended', 'resume');
    this.setState('running');
  }

  machineState(): Uint8Array {
    return encodeMachineState(this.position);
  }

  setThrottle(_factor: number): void {
    // The simulated guest keeps its pace: throttling is not what the simulation checks.
  }

  discard(): void {
    this.recorder.stopRecording();
    this.setState('discarded');
  }

  digest(): string {
    return digestOf(this.memory, this.position);
  }

  /** Starts or stops the unit ticks: the guest runs while it is running and watched. */
  sync(): void {
    const run = this.state === 'running' && (this.recorder.recording || this.pages.tracking);
    if (run && this.ticker === null) this.ticker = this.clock.interval(this.options.unitMs, () => this.tick());
    if (!run && this.ticker !== null) {
      this.ticker.cancel();
      this.ticker = null;
    }
  }

  private tick(): void {
    if (this.recorder.recording && this.recorder.full) {
      this.stalledUnits++;
      return;
    }
    const event = this.world.nextU32();
    const position = this.position;
    const written = runUnit(this.memory, position, event);
    this.position++;
    this.pages.dirtied(written);
    if (this.recorder.recording) {
      this.deltas.dirtied(written);
      this.recorder.seal(event, false, position);
    }
  }

  private setState(state: GuestState): void {
    this.state = state;
    this.sync();
    this.observer.changed('source', state);
  }

  private require(state: GuestState, what: string): void {
    if (this.state !== state) throw new InvalidStateError(`cannot ${what} guest '${this.id}': it is ${this.state}`);
  }
}

/** The guest's CR/TR recorder: a live checkpoint of the recording's start, then units as the guest runs them. */
export class SimRecorder implements LogRecorder {
  recording = false;
  private readonly queue: SealedUnit[] = [];
  private queueBytes = 0;
  private waiter: (() => void) | null = null;
  /** The sequence of the next unit to be sealed. */
  nextSequence = 100;
  private unitsDropped = 0;
  private finalTaken = false;
  private unitsRecorded = 0;
  private logBytes = 0;
  private snapshot = new Uint32Array(0);
  private snapshotPosition = 0;
  private firstSequence = 0;

  constructor(private readonly guest: SimSourceGuest) {}

  get full(): boolean {
    return this.queue.length >= this.guest.options.unitQueueMax;
  }

  startRecording(): RecordingStart {
    this.recording = true;
    this.finalTaken = false;
    this.snapshot = this.guest.memory.slice();
    this.snapshotPosition = this.guest.position;
    this.firstSequence = this.nextSequence;
    this.guest.deltas.restart();
    this.guest.sync();
    return { firstSequence: this.firstSequence, position: this.snapshotPosition };
  }

  async *liveCheckpoint(): AsyncIterable<CheckpointChunk> {
    const chunks = Math.ceil(this.snapshot.length / CHUNK_PAGES);
    for (let index = 0; index < chunks; index++) {
      const final = index === chunks - 1;
      const bytes = encodeChunk(index, final, this.snapshot, index * CHUNK_PAGES, this.snapshotPosition, this.firstSequence);
      yield { index, final, bytes, memoryBytesCovered: CHUNK_PAGES * PAGE_BYTES };
    }
  }

  /** Seals the unit the guest just ran (or, `final`, the empty one the suspend ends the log with). */
  seal(event: number, final: boolean, position = this.guest.position): void {
    const bytes = encodeUnit({ sequence: this.nextSequence, position, event, final }, final ? 0 : this.guest.options.unitFillerBytes);
    this.queue.push({ sequence: this.nextSequence++, bytes, guestNs: this.guest.options.unitMs * 1e6, eventCount: final ? 0 : 1, final });
    this.queueBytes += bytes.length;
    this.unitsRecorded++;
    this.logBytes += bytes.length;
    this.wake();
  }

  async nextSealedUnit(signal?: AbortSignal): Promise<SealedUnit | null> {
    for (;;) {
      const unit = this.queue.shift();
      if (unit !== undefined) {
        this.queueBytes -= unit.bytes.length;
        if (unit.final) this.finalTaken = true;
        return unit;
      }
      if (!this.recording || this.finalTaken) return null;
      if (signal?.aborted) throw signal.reason as Error;
      await new Promise<void>((resolve) => {
        const onAbort = () => resolve();
        this.waiter = () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        };
        signal?.addEventListener('abort', onAbort, { once: true });
      });
      this.waiter = null;
    }
  }

  recordingStats(): RecordingStats {
    const { queue, queueBytes, unitsDropped } = this;
    return { unitsRecorded: this.unitsRecorded, logBytes: this.logBytes, unitsQueued: queue.length, bytesQueued: queueBytes, stallMs: this.guest.stalledUnits * this.guest.options.unitMs, unitsDropped };
  }

  /** A delta's instant: the units sealed before it and still queued are superseded. */
  dropQueued(): void {
    this.unitsDropped += this.queue.length;
    this.queue.length = 0;
    this.queueBytes = 0;
  }

  stopRecording(): void {
    this.recording = false;
    this.queue.length = 0;
    this.queueBytes = 0;
    this.guest.sync();
    this.wake();
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  }
}

/** The guest's pages for pre-copy: dirty tracking, and page batches in the machine's encoding. */
export class SimPages implements PageAccess {
  tracking = false;
  private dirty = new Set<number>();

  constructor(private readonly guest: SimSourceGuest) {}

  get pageCount(): number {
    return this.guest.memory.length;
  }

  dirtied(pages: number[]): void {
    if (this.tracking) for (const p of pages) this.dirty.add(p);
  }

  startDirtyTracking(): void {
    this.tracking = true;
    this.dirty.clear();
    this.guest.sync();
  }

  stopDirtyTracking(): void {
    this.tracking = false;
    this.dirty.clear();
    this.guest.sync();
  }

  fetchAndClearDirty(): Uint32Array {
    const out = Uint32Array.from(this.dirty).sort();
    this.dirty.clear();
    return out;
  }

  readPages(_firstPage: number, count: number, out: Uint8Array): void {
    out.fill(0, 0, count * PAGE_BYTES);
  }

  encodePages(pages: Uint32Array): Uint8Array {
    return encodePages(this.guest.memory, pages);
  }
}

/** The guest's delta checkpoints (CR/TR's hybrid catch-up): the pages written since the last instant, as of a new one. */
export class SimDeltas implements DeltaSource {
  private dirty = new Set<number>();
  private generation = 0;
  private pending: { start: DeltaStart; pairs: Array<[number, number]> } | null = null;

  constructor(
    private readonly guest: SimSourceGuest,
    private readonly recorder: SimRecorder,
  ) {}

  /** A recording starts: its checkpoint is the instant. */
  restart(): void {
    this.dirty.clear();
    this.generation = 0;
    this.pending = null;
  }

  dirtied(pages: number[]): void {
    for (const p of pages) this.dirty.add(p);
  }

  pagesDirtiedSinceInstant(): number {
    return this.dirty.size;
  }

  rebase(): DeltaStart {
    const pages = [...this.dirty].sort((a, b) => a - b);
    const pairs = pages.map((p): [number, number] => [p, this.guest.memory[p]]);
    this.dirty.clear();
    this.recorder.dropQueued();
    const start: DeltaStart = { generation: ++this.generation, firstSequence: this.recorder.nextSequence, position: this.guest.position, pages: pairs.length };
    this.pending = { start, pairs };
    return start;
  }

  async *deltaCheckpoint(): AsyncIterable<CheckpointChunk> {
    const pending = this.pending;
    if (pending === null) throw new InvalidStateError('a delta checkpoint without a rebase');
    const { generation, firstSequence, position } = pending.start;
    const chunks = Math.max(1, Math.ceil(pending.pairs.length / CHUNK_PAGES));
    for (let index = 0; index < chunks; index++) {
      const pairs = pending.pairs.slice(index * CHUNK_PAGES, (index + 1) * CHUNK_PAGES);
      const final = index === chunks - 1;
      yield { index, final, bytes: encodeDeltaChunk({ index, final, generation, firstSequence, position, pairs }), memoryBytesCovered: pairs.length * PAGE_BYTES };
    }
  }
}
