// CR/TR (checkpoint/recovery + trace/replay): the live checkpoint streams while the log's units
// stream alongside; the target restores, replays and asks to stop when its remaining replay fits
// the downtime limit; we agree if our unsent log fits too (shared/convergence.ts decideStop).
// After the suspend the last units go, and the replica is complete once it replayed the final one.

import type { Timer } from '../../shared/clock.js';
import { decideStop, expectedDowntimeMs } from '../../shared/convergence.js';
import type { LogRecorder } from '../../shared/driver/types.js';
import type { MigrationPhase } from '../../shared/stats.js';
import type { StopRequest } from '../channel.js';
import { CheckpointStream } from '../streams/checkpoint.js';
import { checkpointThroughputBytesPerSec } from '../streams/counters.js';
import { LogStream } from '../streams/log.js';
import { recorderOf } from './capabilities.js';
import { ConvergenceMonitor } from './convergence-monitor.js';
import type { MethodContext, TransferMethod } from './method.js';
import { startTicker } from './ticker.js';

export const CRTR_PHASES: readonly MigrationPhase[] = ['pre-migration', 'reservation', 'checkpoint', 'log-transfer', 'stop-and-copy', 'commitment', 'activation'];

export class CrtrMethod implements TransferMethod {
  readonly name = 'crtr' as const;
  readonly needs = { source: ['log-recording'], target: ['checkpoint-replay'] } as const;
  readonly phases = CRTR_PHASES;
  readonly activatesBeforeCommit = false;
  private stopGranted = false;
  private checkpointDone = false;
  private monitor: ConvergenceMonitor | null = null;
  private ticker: Timer | null = null;
  private logStream: LogStream | null = null;
  private unitPump: Promise<void> = Promise.resolve();

  async catchUp(ctx: MethodContext): Promise<void> {
    const recorder = recorderOf(ctx.guest);
    // Phase 3: checkpoint, with units streaming alongside (phase 4 overlaps it).
    ctx.setPhase('checkpoint');
    const start = recorder.startRecording();
    ctx.open({ firstSequence: start.firstSequence });
    const channel = ctx.channel;
    channel.onStopRequest = (request) => this.onStopRequest(ctx, recorder, request);
    const monitor = (this.monitor = new ConvergenceMonitor(ctx));
    this.ticker = startTicker(ctx, () => monitor.tick(this.stopGranted || monitor.forced));
    const rate = ctx.request.maxBandwidthBytesPerSec;
    const logStream = (this.logStream = new LogStream(channel, ctx.stats, ctx.windows, rate, () => ctx.suspended));
    this.unitPump = logStream.run(recorder, ctx.signal, () => ctx.stats.phase === 'stop-and-copy' || ctx.stats.phase === 'commitment');
    this.unitPump.catch(() => {}); // Observed in finish; failures also surface through the waits.
    const checkpointStartMs = ctx.clock.now();
    await new CheckpointStream(channel, ctx.stats, ctx.clock, ctx.log, ctx.windows.chunks, rate).run(recorder);
    ctx.throughputBytesPerSec = checkpointThroughputBytesPerSec(ctx.stats, ctx.clock.now() - checkpointStartMs, rate);
    this.checkpointDone = true;

    // Phase 4 goes on until the target asks to stop and we agree (or the policy forces it).
    ctx.setPhase('log-transfer');
    await channel.until(() => this.stopGranted || monitor.forced);
  }

  async finish(ctx: MethodContext): Promise<void> {
    const recorder = recorderOf(ctx.guest);
    const channel = ctx.channel;
    const rec = recorder.recordingStats();
    ctx.stats.stopUnitsToReplay = rec.unitsRecorded - channel.progress.unitsReplayed;
    const suspendedMs = ctx.clock.now() - ctx.suspendedAtMs;
    await this.unitPump;
    ctx.stats.stopLogBytesUnsent = this.logStream?.wireBytesAfterSuspend ?? 0;
    const sentMs = ctx.clock.now() - ctx.suspendedAtMs;
    await channel.until(() => channel.progress.finalReplayed);
    this.dispose();
    ctx.log.debug({ suspendedMs, sentMs, replayedMs: ctx.clock.now() - ctx.suspendedAtMs }, 'stop-and-copy timing');
  }

  commitTimeoutMs(): number | undefined {
    return undefined;
  }

  refreshStats(ctx: MethodContext): void {
    const s = ctx.stats;
    const rec = ctx.guest.recorder?.recordingStats();
    const unsent = (rec?.bytesQueued ?? 0) + (this.logStream?.heldUnitBytes ?? 0);
    s.remainingBytes = Math.max(0, s.memoryBytes - s.checkpointMemoryBytesCovered) + unsent;
    s.expectedDowntimeMs = expectedDowntimeMs({
      unsentLogBytes: unsent,
      unitsToReplay: s.remainingUnits,
      unitMs: s.unitMs,
      replayRate: s.replayRate,
      throughputBytesPerSec: ctx.throughputBytesPerSec,
      rttMs: s.rttMs,
    });
  }

  cleanUp(ctx: MethodContext): void {
    this.dispose();
    ctx.guest.recorder?.stopRecording();
  }

  dispose(): void {
    this.ticker?.cancel();
    this.ticker = null;
  }

  /** Phase 5's wait-and-ack: agree to stop if our unsent log fits the downtime limit too. */
  private onStopRequest(ctx: MethodContext, recorder: LogRecorder, request: StopRequest): void {
    if (this.stopGranted || this.monitor?.forced) return;
    const { stats, channel } = ctx;
    stats.rounds++;
    if (!this.checkpointDone || stats.phase !== 'log-transfer') {
      channel.send({ stopDecision: { granted: false, reason: `source is in phase ${stats.phase}` } });
      stats.stopRequestsDenied++;
      ctx.round(`round ${stats.rounds}: stop request denied: source is in phase ${stats.phase}`);
      return;
    }
    const rec = recorder.recordingStats();
    const unsent = rec.bytesQueued + (this.logStream?.heldUnitBytes ?? 0);
    // Units the target has not replayed include those still in flight, which its queue does not
    // show yet: count from what we recorded.
    const decision = decideStop({
      unsentLogBytes: unsent,
      unitsNotReplayed: rec.unitsRecorded - channel.progress.unitsReplayed,
      unitsAllowed: request.remainingUnitsAllowed,
      downtimeLimitMs: ctx.request.downtimeLimitMs,
      throughputBytesPerSec: ctx.throughputBytesPerSec,
      rttMs: channel.rttMs,
    });
    channel.send({ stopDecision: { granted: decision.granted, reason: decision.reason, unsentLogBytes: unsent, unsentLogBytesAllowed: decision.allowedBytes } });
    if (decision.granted) {
      // The digest at commitment is inside the downtime: bring the incremental one up to date now.
      ctx.guest.digest();
      this.stopGranted = true;
      channel.notify();
      ctx.log.info({ remainingUnits: request.remainingUnits, unsentLogBytes: unsent, rounds: stats.rounds }, 'stop-and-copy agreed');
    } else {
      stats.stopRequestsDenied++;
    }
    ctx.round(`round ${stats.rounds}: the target has ${request.remainingUnits} units to replay; stop ${decision.granted ? 'granted' : `denied: ${decision.reason}`}`);
  }
}
