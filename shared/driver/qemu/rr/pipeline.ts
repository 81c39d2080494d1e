// A record/replay migration between two QEMUs on this machine: the source records, the target
// replays what it receives over a Node stream (in-process here; an agent's channel would carry
// the same bytes), and at the switchover the guest goes live on the target. The switchover comes
// once the target replays close enough behind the source (lagMsMax), or when the follow phase
// runs out (followMsMax) whatever the lag. Figures: see RrMigrationReport.

import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { DeadlineExceededError } from '../../../errors.js';
import type { SerialTail } from '../process.js';
import type { RrMachine } from './machine.js';
import { type Lag, lags, type ReplaySpeed, replaySpeed } from './measure.js';
import { type CheckpointChoice, RrSource, type SourceReport } from './source.js';
import { RrTarget, type TargetReport } from './target.js';

/** The two ends of the byte stream between source and target. */
export interface RrTransport {
  readonly sourceEnd: Writable;
  readonly targetEnd: Readable;
}

export interface RrMigrationOptions {
  readonly machine: RrMachine;
  /** Working directory: source/ and target/ go in it. */
  readonly dir: string;
  readonly checkpoint: CheckpointChoice;
  /** The migration starts when the source's console passes this (the guest booted, say). */
  readonly startWhen: (console: string) => boolean;
  /** Bound on the wait for startWhen. */
  readonly startTimeoutMs: number;
  /** The follow phase lasts at least followMsMin, then ends once the target is within lagMsMax, or at followMsMax. */
  readonly followMsMin: number;
  readonly followMsMax: number;
  readonly lagMsMax: number;
  /** The stream (default: an in-process PassThrough of 4 MiB). */
  readonly transport?: () => RrTransport;
  readonly sliceBytesMax?: number;
  readonly pollMs?: number;
  readonly sampleMs?: number;
  /** Pause between the commands that wake the replayer during a step (target.ts; default 1 ms, 0 for none). */
  readonly kickMs?: number;
}

export interface RrMigrationReport {
  readonly checkpoint: CheckpointChoice;
  /** From the source QEMU's start to the migration's start (its boot, recorded). */
  readonly startMs: number;
  readonly source: SourceReport;
  readonly target: TargetReport;
  /** Whether the target came within lagMsMax before followMsMax. */
  readonly converged: boolean;
  /** The source's icount when it stopped, and the icount handed to the live QEMU. */
  readonly stopIcount: number;
  readonly lags: readonly Lag[];
  /** The lags from the first step that ended within lagMsMax on (the backlog replayed). */
  readonly lagsCaughtUp: readonly Lag[];
  /** Replay against recording: every step, the steps of instructions recorded before the migration started, those after. */
  readonly speed: { readonly all: ReplaySpeed; readonly backlog: ReplaySpeed; readonly following: ReplaySpeed };
  /** Log bytes written before the migration started (the boot, mostly). */
  readonly logBytesAtStart: number;
  /** Log bytes per second while the migration ran (wall time of the recorder, which shift=auto keeps near guest time). */
  readonly followLogBytesPerSec: number;
  /** The whole log's bytes per second of guest time (the live snapshot's virtual clock). */
  readonly logBytesPerGuestSec: number;
  /** From stop of the source to the live QEMU running, its parts, and from the migration's start to then. */
  readonly downtimeMs: number;
  readonly downtimeParts: { readonly lastSlice: number; readonly replayed: number; readonly savevm: number; readonly replayerEnded: number; readonly live: number };
  readonly totalMs: number;
}

export interface RrMigration {
  readonly report: RrMigrationReport;
  readonly source: RrSource;
  readonly target: RrTarget;
  /** Ends the live guest's QEMU (every other one has ended already). */
  close(): Promise<void>;
}

/** Defaults of the pipeline's tuning: slice bound, log poll, recorder samples, replayer wake-ups. */
export const RR_DEFAULTS = { sliceBytesMax: 256 * 1024, pollMs: 20, sampleMs: 50, kickMs: 1 } as const;

const TIMINGS = { connectTimeoutMs: 30_000, commandTimeoutMs: 30_000, stopGraceMs: 5_000, stepTimeoutMs: 600_000 };

/** Waits until the console passes `accept`; rejects after `timeoutMs` with its tail. */
function waitConsole(serial: SerialTail, accept: (text: string) => boolean, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!accept(serial.text())) return;
      stop();
      clearTimeout(timer);
      resolve();
    };
    const stop = serial.onData(check);
    const timer = setTimeout(() => {
      stop();
      reject(new DeadlineExceededError(`the source's console did not show what the migration waits for within ${timeoutMs} ms; its tail: ${serial.text().slice(-300)}`));
    }, timeoutMs);
    check();
  });
}

/** Waits for the switchover's moment; returns whether the target came within the lag bound. */
async function awaitSwitchover(source: RrSource, target: RrTarget, options: RrMigrationOptions, startMs: number, now: () => number, failed: Promise<never>): Promise<boolean> {
  for (;;) {
    const elapsed = now() - startMs;
    const step = target.steps.at(-1);
    const lag = step === undefined ? null : lags(source.samples, [step])[0];
    if (elapsed >= options.followMsMin && lag !== undefined && lag !== null && lag.ms <= options.lagMsMax) return true;
    if (elapsed >= options.followMsMax) return false;
    await Promise.race([failed, new Promise((resolve) => setTimeout(resolve, 100))]);
  }
}

function makeReport(options: RrMigrationOptions, parts: { startMs: number; stop: { ms: number; icount: number }; logBytesAtStart: number; converged: boolean; source: RrSource; sourceReport: SourceReport; targetReport: TargetReport }): RrMigrationReport {
  const { source, sourceReport, targetReport, stop, startMs } = parts;
  const switchover = targetReport.switchover;
  const steps = targetReport.steps;
  const guestSec = (targetReport.liveSnapshot?.vmClockNs ?? 0) / 1e9;
  const allLags = lags(source.samples, steps);
  const caughtUp = allLags.findIndex((lag) => lag.ms <= options.lagMsMax);
  return {
    checkpoint: options.checkpoint,
    startMs: startMs - source.startedMs,
    source: sourceReport,
    target: targetReport,
    converged: parts.converged,
    stopIcount: stop.icount,
    lags: allLags,
    lagsCaughtUp: caughtUp < 0 ? [] : allLags.slice(caughtUp),
    logBytesAtStart: parts.logBytesAtStart,
    speed: {
      all: replaySpeed(source.samples, steps),
      backlog: replaySpeed(source.samples, steps, (_, recordedMs) => recordedMs < startMs),
      following: replaySpeed(source.samples, steps, (_, recordedMs) => recordedMs >= startMs),
    },
    followLogBytesPerSec: ((sourceReport.logBytes - parts.logBytesAtStart) * 1000) / Math.max(1, stop.ms - startMs),
    logBytesPerGuestSec: guestSec > 0 ? sourceReport.logBytes / guestSec : 0,
    downtimeMs: switchover.liveMs - stop.ms,
    downtimeParts: { lastSlice: switchover.lastSliceMs - stop.ms, replayed: switchover.replayedMs - stop.ms, savevm: switchover.savevmMs - stop.ms, replayerEnded: switchover.replayerEndedMs - stop.ms, live: switchover.liveMs - stop.ms },
    totalMs: switchover.liveMs - startMs,
  };
}

/**
 * Boots the guest recording, waits for startWhen, migrates it to a replaying target over the
 * stream and switches over: the guest then runs live on the target (close() ends it). Every
 * QEMU started is ended on failure.
 */
export async function runRrMigration(options: RrMigrationOptions): Promise<RrMigration> {
  const now = () => performance.now();
  const [sourceDir, targetDir] = [join(options.dir, 'source'), join(options.dir, 'target')];
  mkdirSync(sourceDir, { recursive: true });
  mkdirSync(targetDir, { recursive: true });
  const source = await RrSource.start({ machine: options.machine, dir: sourceDir, now, sliceBytesMax: options.sliceBytesMax ?? RR_DEFAULTS.sliceBytesMax, pollMs: options.pollMs ?? RR_DEFAULTS.pollMs, sampleMs: options.sampleMs ?? RR_DEFAULTS.sampleMs, ...TIMINGS });
  const target = new RrTarget({ machine: options.machine, dir: targetDir, now, kickMs: options.kickMs ?? RR_DEFAULTS.kickMs, liveKickMs: options.sampleMs ?? RR_DEFAULTS.sampleMs, ...TIMINGS });
  try {
    await waitConsole(source.qemu.process.serial, options.startWhen, options.startTimeoutMs);
    const startMs = now();
    const logBytesAtStart = statSync(source.logFile).size;
    const { sourceEnd, targetEnd } = options.transport?.() ?? ((pass) => ({ sourceEnd: pass, targetEnd: pass }))(new PassThrough({ highWaterMark: 4 * 2 ** 20 }));
    const sending = source.send(sourceEnd, options.checkpoint);
    const receiving = target.run(targetEnd);
    // A failure of either end ends the stream, so that the other end fails too, and the wait.
    const failed = Promise.race([sending, receiving]).then(
      () => new Promise<never>(() => undefined),
      (error: unknown) => {
        sourceEnd.destroy(error as Error);
        targetEnd.destroy(error as Error);
        throw error;
      },
    );
    failed.catch(() => undefined);
    const converged = await awaitSwitchover(source, target, options, startMs, now, failed);
    const stop = await source.stop();
    const [sourceReport, targetReport] = await Promise.all([sending, receiving]);
    const report = makeReport(options, { startMs, stop, logBytesAtStart, converged, source, sourceReport, targetReport });
    return { report, source, target, close: () => target.discard() };
  } catch (error) {
    await target.discard();
    await source.discard();
    throw error;
  }
}
