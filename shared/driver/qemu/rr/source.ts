// The source of a record/replay migration: a guest that boots recording
// (`rr=record,rrsnapshot=init` with a qcow2 snapshot file), so that its whole execution is in
// its replay log. A migration sends the target a checkpoint, the qcow2 file with a snapshot the
// replay starts from, then slices of the log as the recorder writes them; stop() stops the
// guest and ends QEMU, which writes the log's last bytes (its stdio buffer) and END.
//
// The checkpoint is either the `init` snapshot, saved when recording started (icount 0: the
// target replays the guest's whole life), or one saved now with savevm on the stopped recorder
// (the guest pauses for the save; the target replays from there). A replaying QEMU seeks to the
// log offset the snapshot holds, so the target writes each slice at its offset in the source's
// log; slices wholly before the snapshot are not sent.

import { createHash } from 'node:crypto';
import { createReadStream, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { REPLAY_LOG_HEADER_BYTES } from './log-format.js';
import { LogTail } from './log-tail.js';
import { createSnapshotFile, hmp, queryIcount, type RrMachine, type RrQemu, startRrQemu, stopRrQemu } from './machine.js';
import { QmpError } from '../qmp.js';
import { type IcountSample, type Lag, msAtIcount } from './measure.js';
import { LogSlicer } from './slicer.js';
import { FrameWriter } from './wire.js';

export type CheckpointChoice = 'init' | 'savevm';

export interface RrSourceOptions {
  readonly machine: RrMachine;
  /** Its files: the log, the snapshot file, the QMP socket. */
  readonly dir: string;
  /** The migration's clock, ms. */
  readonly now: () => number;
  readonly sliceBytesMax: number;
  /** Pause between reads of the growing log. */
  readonly pollMs: number;
  /** Pause between samples of the recorder's icount. */
  readonly sampleMs: number;
  readonly connectTimeoutMs: number;
  readonly commandTimeoutMs: number;
  readonly stopGraceMs: number;
}

/** Tag of the snapshot saved for a migration on a recorder that runs already. */
export const MIGRATION_SNAPSHOT_TAG = 'rrmig';
/** Bound on the recorder's icount samples kept (at 100 ms apart, over an hour). */
const SAMPLES_MAX = 50_000;
/** Checkpoint bytes per frame. */
const CHECKPOINT_CHUNK_BYTES = 1 << 20;

/** What the source sent and saw. */
export interface SourceReport {
  readonly checkpoint: { readonly tag: string; readonly icount: number; readonly bytes: number; readonly pauseMs: number; readonly sentMs: number };
  readonly logBytesSent: number;
  readonly slicesSent: number;
  readonly slicesDropped: number;
  readonly wireBytes: number;
  /** The log's total size and the icount at its last instruction event. */
  readonly logBytes: number;
  readonly logIcount: number;
  /**
   * For each slice sent while the guest ran: how long after the recorder passed its end it was
   * read from the disk, and how far the recorder was ahead then (its stdio buffer, the poll).
   */
  readonly diskLag: readonly Lag[];
}

export class RrSource {
  readonly samples: IcountSample[] = [];
  readonly logFile: string;
  readonly snapshotFile: string;
  private sampling = true;
  private stopped: { ms: number; icount: number } | null = null;

  private constructor(
    readonly options: RrSourceOptions,
    readonly qemu: RrQemu,
    readonly startedMs: number,
  ) {
    this.logFile = join(options.dir, 'source.log');
    this.snapshotFile = join(options.dir, 'source.qcow2');
    // Recording starts at icount 0 as QEMU starts.
    this.samples.push({ ms: startedMs, icount: 0 });
    void this.sample();
  }

  /** Boots the guest recording, with its init snapshot at icount 0. */
  static async start(options: RrSourceOptions): Promise<RrSource> {
    const snapshotFile = join(options.dir, 'source.qcow2');
    await createSnapshotFile(options.machine, snapshotFile);
    const startedMs = options.now();
    const qemu = await startRrQemu(options.machine, { mode: 'record', logFile: join(options.dir, 'source.log'), snapshotFile, qmpSocket: join(options.dir, 'source.qmp'), rrSnapshot: 'init' }, options.connectTimeoutMs);
    return new RrSource(options, qemu, startedMs);
  }

  /** When stop() stopped the guest, and the icount there. */
  get stoppedAt(): { ms: number; icount: number } | null {
    return this.stopped;
  }

  /**
   * Samples the recorder's icount until it stops (the lag and the replay speed are read against
   * them). The commands also wake its main loop: left alone, a recorder under QEMU 7.2 runs its
   * idle guest slow (the test guest's 0.5 s sleep took 1.8 s), sampled every 50 ms it keeps pace.
   */
  private async sample(): Promise<void> {
    while (this.sampling && !this.qemu.qmp.closed) {
      try {
        const icount = await queryIcount(this.qemu);
        if (this.samples.length < SAMPLES_MAX) this.samples.push({ ms: this.options.now(), icount });
      } catch {
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, this.options.sampleMs));
    }
  }

  /** The checkpoint: `init`, or a snapshot saved now on the stopped recorder (the guest pauses for it). */
  private async takeCheckpoint(choice: CheckpointChoice): Promise<{ tag: string; icount: number; pauseMs: number }> {
    if (choice === 'init') return { tag: 'init', icount: 0, pauseMs: 0 };
    const { qmp } = this.qemu;
    const t0 = this.options.now();
    await qmp.execute('stop');
    const icount = await queryIcount(this.qemu);
    await hmp(this.qemu, `savevm ${MIGRATION_SNAPSHOT_TAG}`, this.options.commandTimeoutMs * 6);
    await qmp.execute('cont');
    return { tag: MIGRATION_SNAPSHOT_TAG, icount, pauseMs: this.options.now() - t0 };
  }

  /** Streams the snapshot file as checkpoint frames, with its size and sha256. */
  private async sendCheckpoint(writer: FrameWriter, tag: string, icount: number): Promise<number> {
    const bytes = statSync(this.snapshotFile).size;
    await writer.write({ type: 'checkpoint', tag, icount, bytes });
    const hash = createHash('sha256');
    let sent = 0;
    for await (const chunk of createReadStream(this.snapshotFile, { highWaterMark: CHECKPOINT_CHUNK_BYTES, end: bytes - 1 }) as AsyncIterable<Buffer>) {
      hash.update(chunk);
      sent += chunk.length;
      await writer.write({ type: 'checkpoint-data' }, chunk);
    }
    await writer.write({ type: 'checkpoint-end', sha256: hash.digest('hex') });
    return sent;
  }

  /**
   * Migrates: takes the checkpoint, sends it, then sends the log's slices as they reach the
   * disk, until the log ends (after stop()). Ends the stream when done.
   */
  async send(stream: Writable, choice: CheckpointChoice): Promise<SourceReport> {
    const writer = new FrameWriter(stream);
    const { tag, icount, pauseMs } = await this.takeCheckpoint(choice);
    const t0 = this.options.now();
    const bytes = await this.sendCheckpoint(writer, tag, icount);
    const sentMs = this.options.now() - t0;
    const slicer = new LogSlicer({ startOffset: REPLAY_LOG_HEADER_BYTES, startIcount: 0, sliceBytesMax: this.options.sliceBytesMax, pendingBytesMax: 8 * this.options.sliceBytesMax, dropBelowIcount: icount });
    const tail = new LogTail(this.logFile, REPLAY_LOG_HEADER_BYTES, this.options.sliceBytesMax);
    const diskLag: Lag[] = [];
    let logBytesSent = 0;
    let slicesSent = 0;
    try {
      while (!slicer.ended) {
        const exitedBefore = this.qemu.process.exitStatus !== null;
        const chunk = await tail.read();
        for (const slice of slicer.push(chunk)) {
          await writer.write({ type: 'slice', seq: slice.seq, offset: slice.offset, icountEnd: slice.icountEnd, final: slice.final }, slice.data);
          logBytesSent += slice.data.length;
          slicesSent++;
          // Once the tail has caught up with the file (a read short of its bound).
          if (chunk.length < this.options.sliceBytesMax) this.noteDiskLag(slice.icountEnd, diskLag);
        }
        if (chunk.length === 0 && exitedBefore && !slicer.ended) throw new QmpError('DATA_LOSS', `the recorder exited and its log ${this.logFile} ends at offset ${tail.offset} without its END event (QEMU killed?)`, { metadata: { offset: tail.offset } });
        if (chunk.length < this.options.sliceBytesMax && !slicer.ended) await new Promise((resolve) => setTimeout(resolve, this.options.pollMs));
      }
    } finally {
      await tail.close();
    }
    writer.end();
    return { checkpoint: { tag, icount, bytes, pauseMs, sentMs }, logBytesSent, slicesSent, slicesDropped: slicer.slicesDropped, wireBytes: writer.bytes, logBytes: tail.offset, logIcount: slicer.icount, diskLag };
  }

  /** Notes when a slice reaching `icountEnd` came off the disk, against when the recorder got there. */
  private noteDiskLag(icountEnd: number, out: Lag[]): void {
    if (this.stopped !== null || out.length >= SAMPLES_MAX) return;
    const atMs = this.options.now();
    const recordedMs = msAtIcount(this.samples, icountEnd);
    const recorderIcount = this.samples.at(-1)?.icount;
    if (recordedMs !== null && recorderIcount !== undefined) out.push({ atMs, ms: atMs - recordedMs, icount: Math.max(0, recorderIcount - icountEnd) });
  }

  /** Stops the guest for the switchover: QMP stop, its icount, then quit (QEMU writes the log's end). */
  async stop(): Promise<{ ms: number; icount: number }> {
    const ms = this.options.now();
    await this.qemu.qmp.execute('stop');
    const icount = await queryIcount(this.qemu);
    this.stopped = { ms, icount };
    this.sampling = false;
    if (this.samples.length < SAMPLES_MAX) this.samples.push({ ms, icount });
    await stopRrQemu(this.qemu, this.options.stopGraceMs);
    return this.stopped;
  }

  /** Ends the recorder whatever its state (after a failure, or when done). */
  async discard(): Promise<void> {
    this.sampling = false;
    await stopRrQemu(this.qemu, this.options.stopGraceMs);
  }
}
