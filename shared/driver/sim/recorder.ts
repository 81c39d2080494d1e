// The `sim` guest's capabilities log-recording and delta-checkpoint: its recording (the bounded
// queue of sealed units, recording.ts), the live checkpoint at the recording's start and the delta
// checkpoints after it (checkpoint.ts, delta.ts). The guest's runner seals units into the current
// recording (SimSourceGuest.executeUnit); everything the agent asks of the log goes through here.

import { InvalidArgumentError, InvalidStateError } from '../../errors.js';
import { type CheckpointChunk, type DeltaSource, type DeltaStart, LOG_BATCH_MS_MAX, type LogRecorder, type RecordingStart, type RecordingStats, type SealedUnit } from '../types.js';
import { beginCheckpoint, checkpointChunks, CHUNK_PAGES_DEFAULT, CHUNK_PAGES_MAX, endCheckpoint } from './checkpoint.js';
import { beginDelta, deltaChunks } from './delta.js';
import type { SimMachine } from './machine.js';
import { Recording, type RecordingLimits } from './recording.js';

/** What the recorder needs of its guest. */
export interface RecorderHost {
  readonly id: string;
  readonly machine: SimMachine;
  readonly options: RecordingLimits & { cowBytesMax: number };
  /** Throws if the guest was discarded. */
  checkAlive(): void;
  /** Wall time the guest stalled on the log queue or the copy-on-write pool, in all. */
  stallMs(): number;
  /** Units the vCPU sealed that wait on its thread to go together (a log batch). */
  unitsUnsent(): number;
  /** Runs `fn` with the vCPU stopped at a unit boundary (the instant of a checkpoint or a delta). */
  atBoundary<T>(fn: () => T): T;
  /** A recording began or ended: units are sealed into it from the next one on. */
  recordingChanged(recording: Recording | null): void;
  /** How long sealed units may wait on the vCPU's side to go together changed (ms; 0: each at once). */
  logBatchChanged(ms: number): void;
  /** Units sealed on the vCPU's own thread left the log queue (taken, superseded or dropped). */
  unitsLeft(units: number, bytes: number): void;
}

export class SimRecorder implements LogRecorder, DeltaSource {
  /** The recording in progress (between startRecording and stopRecording), if any. */
  recording: Recording | null = null;
  /** setLogBatch's, for the recording in progress (0 outside one). */
  logBatchMs = 0;

  constructor(private readonly host: RecorderHost) {}

  startRecording(): RecordingStart {
    this.host.checkAlive();
    return this.host.atBoundary(() => this.startRecordingNow());
  }

  private startRecordingNow(): RecordingStart {
    const { id, machine } = this.host;
    if (machine.memory.missing !== null) {
      throw new InvalidStateError(`guest ${id} is still receiving ${machine.memory.missingCount} pages by post-copy`, { reason: 'GUEST_NOT_RUNNING', metadata: { guestId: id } });
    }
    if (this.recording !== null) throw new InvalidStateError(`guest ${id} is already recording (since unit ${this.recording.firstSequence})`, { reason: 'GUEST_BUSY', metadata: { guestId: id } });
    const st = machine.state;
    // The runner is between units whenever this code runs: the checkpoint's instant is the
    // recording's first unit boundary. Pages dirtied from here make the first delta.
    this.recording = new Recording(st.unitSequence, beginCheckpoint(machine, this.host.options.cowBytesMax), this.host.options, (units, bytes) => this.host.unitsLeft(units, bytes));
    machine.memory.clearDirty();
    this.host.recordingChanged(this.recording);
    return { firstSequence: st.unitSequence, position: st.position };
  }

  liveCheckpoint(options: { chunkPages?: number; reuseBuffer?: boolean; base?: BigUint64Array } = {}): AsyncIterable<CheckpointChunk> {
    const rec = this.recording;
    const id = this.host.id;
    if (rec === null || rec.checkpoint === null) throw new InvalidStateError(`guest ${id}: a live checkpoint is taken at the start of a recording; start one first`);
    if (rec.checkpointTaken) throw new InvalidStateError(`guest ${id}: the checkpoint of this recording was already taken`);
    const chunkPages = checkChunkPages(options.chunkPages);
    const base = options.base ?? null;
    const pageCount = this.host.machine.memory.pageCount;
    if (base !== null && base.length !== pageCount) throw new InvalidArgumentError(`guest ${id}: a base image of ${base.length} pages, the guest has ${pageCount}`);
    rec.checkpointTaken = true;
    return checkpointChunks(this.host.machine, rec.checkpoint, chunkPages, options.reuseBuffer ?? false, base);
  }

  pagesDirtiedSinceInstant(): number {
    this.host.checkAlive();
    return this.recording === null ? 0 : this.host.machine.memory.dirtyCount();
  }

  rebase(): DeltaStart {
    this.host.checkAlive();
    return this.host.atBoundary(() => this.rebaseNow());
  }

  private rebaseNow(): DeltaStart {
    const { id, machine } = this.host;
    const rec = this.recording;
    if (rec === null || rec.sealedFinal) throw new InvalidStateError(`guest ${id} is not recording: a delta checkpoint belongs to a recording`, { reason: 'GUEST_BUSY' });
    if (!rec.checkpointTaken || (rec.delta !== null && !rec.delta.taken)) {
      throw new InvalidStateError(`guest ${id}: the previous checkpoint of this recording was not taken yet`, { reason: 'GUEST_BUSY' });
    }
    // Between units, as always here: the instant is the boundary before the next unit.
    const delta = beginDelta(machine, this.host.options.cowBytesMax, (rec.delta?.generation ?? 0) + 1);
    rec.delta = delta;
    rec.dropBefore(delta.firstSequence);
    return { generation: delta.generation, firstSequence: delta.firstSequence, position: machine.state.position, pages: delta.pages.length };
  }

  deltaCheckpoint(options: { chunkPages?: number; reuseBuffer?: boolean } = {}): AsyncIterable<CheckpointChunk> {
    const delta = this.recording?.delta ?? null;
    if (delta === null || delta.taken) throw new InvalidStateError(`guest ${this.host.id}: no delta begun (rebase first)`);
    const chunkPages = checkChunkPages(options.chunkPages);
    delta.taken = true;
    return deltaChunks(this.host.machine, delta, chunkPages, options.reuseBuffer ?? false);
  }

  /** A unit the vCPU sealed on its own thread, into the recording it names (which may have ended since). */
  sealFromThread(unit: { recording: number; sequence: number; bytes: Uint8Array; guestNs: number; eventCount: number }): void {
    const rec = this.recording;
    if (rec === null || rec.id !== unit.recording || rec.sealedFinal) {
      this.host.unitsLeft(1, unit.bytes.length);
      return;
    }
    rec.seal({ sequence: unit.sequence, bytes: unit.bytes, guestNs: unit.guestNs, eventCount: unit.eventCount, final: false });
  }

  async nextSealedUnit(signal?: AbortSignal): Promise<SealedUnit | null> {
    return this.recording === null ? null : this.recording.next(this.host.id, signal);
  }

  setLogBatch(ms: number): void {
    if (!Number.isInteger(ms) || ms < 0 || ms > LOG_BATCH_MS_MAX) throw new InvalidArgumentError(`log batch of ${ms} ms: expected 0 to ${LOG_BATCH_MS_MAX}`);
    const batch = this.recording === null ? 0 : ms;
    if (batch === this.logBatchMs) return;
    this.logBatchMs = batch;
    this.host.logBatchChanged(batch);
  }

  recordingStats(): RecordingStats {
    const stallMs = this.host.stallMs();
    const rec = this.recording;
    return rec === null ? { unitsRecorded: 0, logBytes: 0, unitsQueued: 0, bytesQueued: 0, stallMs } : { ...rec.stats(stallMs), unitsUnsent: this.host.unitsUnsent() };
  }

  stopRecording(): void {
    const rec = this.recording;
    if (rec === null) return;
    const machine = this.host.machine;
    if (rec.checkpoint !== null) endCheckpoint(machine, rec.checkpoint);
    if (rec.delta !== null) endCheckpoint(machine, rec.delta);
    this.recording = null;
    this.host.recordingChanged(null);
    this.setLogBatch(0);
    rec.stop();
  }
}

function checkChunkPages(requested: number | undefined): number {
  const chunkPages = requested ?? CHUNK_PAGES_DEFAULT;
  if (!Number.isInteger(chunkPages) || chunkPages < 8 || chunkPages > CHUNK_PAGES_MAX || chunkPages % 8 !== 0) {
    throw new InvalidArgumentError(`chunkPages=${chunkPages}: expected a multiple of 8 in [8, ${CHUNK_PAGES_MAX}]`);
  }
  return chunkPages;
}
