// The target of a record/replay migration. It writes the checkpoint it receives (the source's
// qcow2 snapshot file) and the log's slices, each at its offset in the source's log, behind a
// header it writes itself (the recorder writes its own only when it exits). Once it holds the
// checkpoint and some log, it starts QEMU replaying from the checkpoint's snapshot, paused, and
// then moves it forward with `replay-break` to one instruction short of the last instruction
// event it holds, `cont`, and the STOP at the break: the replayer never reads past the log it
// has (log-format.ts). After the last slice it replays to one instruction short of the log's
// end, saves the state there (savevm), ends the replayer and starts the guest live: a QEMU that
// loads that snapshot (-loadvm) and records a new log. The guest goes on from there.

import { createHash, type Hash } from 'node:crypto';
import { type FileHandle, open } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { CorruptDataError, InvalidStateError, LimitExceededError, ReplayDivergenceError, UnavailableError, UnitOrderError } from '../../../errors.js';
import { REPLAY_LOG_HEADER_BYTES, replayLogHeader } from './log-format.js';
import { hmp, listSnapshots, queryIcount, type RrMachine, type RrQemu, type SnapshotInfo, startRrQemu, stopRrQemu } from './machine.js';
import { lastLines } from '../process.js';
import { QmpError } from '../qmp.js';
import type { ReplayStep } from './measure.js';
import { type Frame, readFrames } from './wire.js';

export interface RrTargetOptions {
  readonly machine: RrMachine;
  /** Its files: the snapshot file, the log, the live QEMU's new log, the QMP sockets. */
  readonly dir: string;
  readonly now: () => number;
  readonly connectTimeoutMs: number;
  readonly commandTimeoutMs: number;
  readonly stopGraceMs: number;
  /** Bound on one replay step, from `cont` to the STOP at the break. */
  readonly stepTimeoutMs: number;
  /** Pause between the QMP commands that keep the replayer's main loop awake during a step (0: none). */
  readonly kickMs: number;
  /** Pause between those that keep the live QEMU's guest at pace (see RrSource's samples; 0: none). */
  readonly liveKickMs: number;
}

/** Tag of the snapshot the replayer saves at its last break, which the live QEMU loads. */
export const LIVE_SNAPSHOT_TAG = 'rrlive';
/** Bound on the checkpoint's size (the snapshot file of a guest of up to 16 GiB and its disk state). */
const CHECKPOINT_BYTES_MAX = 32 * 2 ** 30;
/** Bound on the replay log the target writes: where a slice's bytes may end in it (the file is sparse past its end). */
const LOG_BYTES_MAX = 16 * 2 ** 30;
/** Replay steps kept for the report (the replay goes on past them). */
const STEPS_MAX = 50_000;

/** The switchover on the target, ms on the migration's clock. */
export interface TargetSwitchover {
  /** When the last slice was written, and when the replayer stopped at the log's end. */
  readonly lastSliceMs: number;
  readonly replayedMs: number;
  readonly savevmMs: number;
  readonly replayerEndedMs: number;
  /** When the live QEMU answered `running`. */
  readonly liveMs: number;
}

export interface TargetReport {
  readonly checkpoint: { readonly tag: string; readonly icount: number; readonly bytes: number; readonly receivedMs: number };
  readonly replayStartedMs: number;
  readonly steps: readonly ReplayStep[];
  /** The icount the replay stopped at: the state handed to the live QEMU. */
  readonly finalIcount: number;
  readonly logBytes: number;
  readonly switchover: TargetSwitchover;
  readonly liveSnapshot: SnapshotInfo | null;
}

interface CheckpointState {
  tag: string;
  icount: number;
  bytes: number;
  written: number;
  hash: Hash;
  file: FileHandle | null;
  receivedMs: number;
}

export class RrTarget {
  readonly snapshotFile: string;
  readonly logFile: string;
  replay: RrQemu | null = null;
  live: RrQemu | null = null;
  /** The replayer's serial console when it ended: the guest's console up to the switchover. */
  replayConsole = '';
  readonly steps: ReplayStep[] = [];
  private checkpoint: CheckpointState | null = null;
  private checkpointDone = false;
  private log: FileHandle | null = null;
  private nextSeq = 0;
  private nextOffset = -1;
  /** When the last replay step ended (the steps kept for the report are bounded). */
  private lastStepEndMs: number | undefined;
  /** icount at the last instruction event received, and whether the last slice is in. */
  private availableIcount = -1;
  private finalReceived = false;
  private lastSliceMs = 0;
  private logBytes = 0;
  private icount = 0;
  private replayStartedMs = 0;
  private failure: unknown = null;
  private wake: (() => void) | null = null;

  constructor(readonly options: RrTargetOptions) {
    this.snapshotFile = join(options.dir, 'target.qcow2');
    this.logFile = join(options.dir, 'target.log');
  }

  /** Receives the migration from `stream`, replays it as it comes, and starts the guest live. */
  async run(stream: Readable): Promise<TargetReport> {
    const receiving = this.receive(stream).then(
      () => this.notify(),
      (error: unknown) => {
        this.failure = error;
        this.notify();
      },
    );
    try {
      await this.follow();
      await receiving;
    } catch (error) {
      // Reading stops: the source sees its stream fail.
      stream.destroy(error instanceof Error ? error : new Error(String(error)));
      await receiving;
      throw error;
    } finally {
      await this.checkpoint?.file?.close();
      await this.log?.close();
    }
    return this.switchover();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  private async receive(stream: Readable): Promise<void> {
    for await (const frame of readFrames(stream)) await this.apply(frame);
    if (!this.finalReceived) throw new UnavailableError(`the migration stream ended before the log's last slice (${this.nextSeq} slices received)`, { metadata: { slices: this.nextSeq } });
  }

  /** Writes one frame's bytes where they belong, in the order the stream must follow. */
  private async apply({ header, payload }: Frame): Promise<void> {
    const order = (what: string) => new InvalidStateError(`a ${header.type} frame ${what}`, { metadata: { frame: header.type } });
    if (header.type === 'checkpoint') {
      if (this.checkpoint !== null) throw order('after the checkpoint began');
      if (header.bytes > CHECKPOINT_BYTES_MAX) throw new LimitExceededError(`a checkpoint of ${header.bytes} bytes, the limit is ${CHECKPOINT_BYTES_MAX}`, { metadata: { bytes: header.bytes, limit: CHECKPOINT_BYTES_MAX } });
      this.checkpoint = { tag: header.tag, icount: header.icount, bytes: header.bytes, written: 0, hash: createHash('sha256'), file: await open(this.snapshotFile, 'w'), receivedMs: 0 };
      return;
    }
    const checkpoint = this.checkpoint;
    if (checkpoint === null) throw order('before the checkpoint');
    if (header.type === 'checkpoint-data') {
      if (this.checkpointDone) throw order('after the checkpoint ended');
      if (checkpoint.written + payload.length > checkpoint.bytes) throw new CorruptDataError(`the checkpoint grows past its announced ${checkpoint.bytes} bytes`, { metadata: { bytes: checkpoint.bytes } });
      await checkpoint.file!.write(payload, 0, payload.length, checkpoint.written);
      checkpoint.written += payload.length;
      checkpoint.hash.update(payload);
    } else if (header.type === 'checkpoint-end') {
      if (this.checkpointDone) throw order('after the checkpoint ended');
      const sha256 = checkpoint.hash.digest('hex');
      if (checkpoint.written !== checkpoint.bytes || sha256 !== header.sha256) throw new CorruptDataError(`the checkpoint arrived as ${checkpoint.written} bytes of sha256 ${sha256}; the source sent ${checkpoint.bytes} bytes of sha256 ${header.sha256}`, { metadata: { bytes: checkpoint.bytes, received: checkpoint.written } });
      await checkpoint.file!.close();
      checkpoint.file = null;
      checkpoint.receivedMs = this.options.now();
      this.checkpointDone = true;
      this.log = await open(this.logFile, 'w');
      await this.log.write(replayLogHeader(), 0, REPLAY_LOG_HEADER_BYTES, 0);
    } else {
      if (!this.checkpointDone) throw order('before the checkpoint ended');
      if (this.finalReceived) throw order('after the last slice');
      if (header.seq !== this.nextSeq) throw new UnitOrderError(`slice ${header.seq} arrived where slice ${this.nextSeq} was due`, header.seq < this.nextSeq ? 'duplicate' : 'gap', this.nextSeq, header.seq);
      if (this.nextOffset >= 0 && header.offset !== this.nextOffset) throw new UnitOrderError(`slice ${header.seq} starts at log offset ${header.offset}, the slice before ended at ${this.nextOffset}`, 'position', this.nextSeq, header.seq);
      if (header.offset + payload.length > LOG_BYTES_MAX) throw new LimitExceededError(`slice ${header.seq} would end at log offset ${header.offset + payload.length}, the limit is ${LOG_BYTES_MAX}`, { metadata: { seq: header.seq, limit: LOG_BYTES_MAX } });
      if (header.icountEnd < Math.max(this.availableIcount, checkpoint.icount)) throw new CorruptDataError(`slice ${header.seq} reaches icount ${header.icountEnd}, behind ${Math.max(this.availableIcount, checkpoint.icount)}`, { metadata: { seq: header.seq } });
      await this.log!.write(payload, 0, payload.length, header.offset);
      this.nextSeq++;
      this.nextOffset = header.offset + payload.length;
      this.logBytes += payload.length;
      this.availableIcount = header.icountEnd;
      this.finalReceived = header.final;
      this.lastSliceMs = this.options.now();
    }
    this.notify();
  }

  /** The furthest break the log received allows: one instruction short of its last instruction event. */
  private goal(): number {
    return this.availableIcount - 1;
  }

  /** Replays as the log arrives, until the replayer stands one instruction short of the log's end. */
  private async follow(): Promise<void> {
    for (;;) {
      if (this.failure !== null) throw this.failure;
      const goal = this.goal();
      if (this.replay === null && this.checkpointDone && goal > this.checkpoint!.icount) {
        await this.startReplay();
        continue;
      }
      if (this.replay !== null && goal > this.icount) {
        await this.step(goal);
        continue;
      }
      if (this.finalReceived && this.replay !== null) return;
      if (this.finalReceived) throw new InvalidStateError(`the log ended at icount ${this.availableIcount}, not past the checkpoint's ${this.checkpoint!.icount}: nothing to replay`);
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  /** Starts QEMU replaying from the checkpoint's snapshot, paused (-S) until its first break. */
  private async startReplay(): Promise<void> {
    const checkpoint = this.checkpoint!;
    this.replayStartedMs = this.options.now();
    this.replay = await startRrQemu(this.options.machine, { mode: 'replay', logFile: this.logFile, snapshotFile: this.snapshotFile, qmpSocket: join(this.options.dir, 'replay.qmp'), rrSnapshot: checkpoint.tag, paused: true }, this.options.connectTimeoutMs);
    this.icount = await queryIcount(this.replay);
    if (this.icount !== checkpoint.icount) throw new ReplayDivergenceError(`the replayer starts at icount ${this.icount}, the checkpoint '${checkpoint.tag}' was taken at ${checkpoint.icount}`, { metadata: { icount: this.icount, checkpointIcount: checkpoint.icount } });
  }

  /**
   * One step: a break at `goal`, `cont`, and the STOP there. While it runs, a QMP command every
   * kickMs wakes the replayer's main loop: without it, QEMU 7.2 waits out the guest's idle time
   * (longer than it took to record) on a clock that moves only when the log is read.
   */
  private async step(goal: number): Promise<void> {
    const replay = this.replay!;
    await replay.qmp.execute('replay-break', { icount: goal });
    let running = true;
    const stopped = replay.qmp.waitEvent('STOP', this.options.stepTimeoutMs).finally(() => (running = false));
    stopped.catch(() => undefined);
    const startMs = this.options.now();
    await replay.qmp.execute('cont');
    while (running && this.options.kickMs > 0) {
      // The query itself wakes a replayer that waits out the guest's idle time (docs/qemu.md).
      await queryIcount(replay).catch(() => undefined);
      await Promise.race([stopped, new Promise((resolve) => setTimeout(resolve, this.options.kickMs))]).catch(() => undefined);
    }
    await stopped;
    const endMs = this.options.now();
    const icount = await queryIcount(replay);
    if (icount !== goal) throw new ReplayDivergenceError(`the replayer stopped at icount ${icount}, its break was at ${goal}: ${lastLines(replay.process.stderrTail)}`, { metadata: { icount, goal } });
    if (this.steps.length < STEPS_MAX) this.steps.push({ fromIcount: this.icount, toIcount: goal, startMs, endMs });
    this.lastStepEndMs = endMs;
    this.icount = goal;
  }

  /** Saves the replayed state, ends the replayer and starts the guest live from that state. */
  private async switchover(): Promise<TargetReport> {
    const replay = this.replay!;
    const { now, commandTimeoutMs, stopGraceMs } = this.options;
    const replayedMs = this.lastStepEndMs ?? now();
    await hmp(replay, `savevm ${LIVE_SNAPSHOT_TAG}`, commandTimeoutMs * 6);
    const savevmMs = now();
    this.replayConsole = replay.process.serial.text();
    await stopRrQemu(replay, stopGraceMs);
    const replayerEndedMs = now();
    this.live = await startRrQemu(this.options.machine, { mode: 'record', logFile: join(this.options.dir, 'live.log'), snapshotFile: this.snapshotFile, qmpSocket: join(this.options.dir, 'live.qmp'), loadvm: LIVE_SNAPSHOT_TAG }, this.options.connectTimeoutMs);
    const status = await this.live.qmp.execute<{ status: string }>('query-status');
    if (status.status !== 'running') throw new QmpError('FAILED_PRECONDITION', `the live QEMU loaded snapshot '${LIVE_SNAPSHOT_TAG}' but is ${status.status}, not running`, { metadata: { status: status.status } });
    const liveMs = now();
    void this.keepAwake(this.live);
    const snapshots = await listSnapshots(this.options.machine, this.snapshotFile);
    const checkpoint = this.checkpoint!;
    return {
      checkpoint: { tag: checkpoint.tag, icount: checkpoint.icount, bytes: checkpoint.bytes, receivedMs: checkpoint.receivedMs },
      replayStartedMs: this.replayStartedMs,
      steps: this.steps,
      finalIcount: this.icount,
      logBytes: this.logBytes,
      switchover: { lastSliceMs: this.lastSliceMs, replayedMs, savevmMs, replayerEndedMs, liveMs },
      liveSnapshot: snapshots.find((s) => s.name === LIVE_SNAPSHOT_TAG) ?? null,
    };
  }

  /** Queries the live QEMU every liveKickMs until it ends (a recorder left alone runs its idle guest slow). */
  private async keepAwake(live: RrQemu): Promise<void> {
    while (this.options.liveKickMs > 0 && !live.qmp.closed) {
      await queryIcount(live).catch(() => undefined);
      await new Promise((resolve) => setTimeout(resolve, this.options.liveKickMs));
    }
  }

  /** Ends every QEMU of the target (after a failure, or when done). */
  async discard(): Promise<void> {
    this.failure ??= new UnavailableError('the target was discarded');
    this.notify();
    for (const qemu of [this.replay, this.live]) if (qemu !== null) await stopRrQemu(qemu, this.options.stopGraceMs);
  }
}
