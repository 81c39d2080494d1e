// CR/TR (checkpoint/recovery + trace/replay): the live checkpoint streams while the log's units
// stream alongside; the target restores, replays and asks to stop when its remaining replay fits
// the downtime limit; we agree if our unsent log fits too (shared/convergence.ts decideStop).
// After the suspend the last units go, and the replica is complete once it replayed the final one.

import type { Timer } from '../../shared/clock.js';
import { decideStop, expectedDowntimeMs, stopUnitsFloor, SWITCHOVER_DEADLINE_SHARE } from '../../shared/convergence.js';
import type { GuestOutput, LogRecorder } from '../../shared/driver/types.js';
import type { MigrationPhase } from '../../shared/stats.js';
import type { StopRequest } from '../channel.js';
import { CheckpointStream } from '../streams/checkpoint.js';
import { checkpointThroughputBytesPerSec } from '../streams/counters.js';
import { LogStream } from '../streams/log.js';
import { recorderOf } from './capabilities.js';
import { ConvergenceMonitor } from './convergence-monitor.js';
import { FinalApproach } from './final-approach.js';
import { HybridCatchUp } from './hybrid.js';
import { RpoMonitor } from './rpo-monitor.js';
import type { MethodContext, TransferMethod } from './method.js';
import { startTicker } from './ticker.js';

export const CRTR_PHASES: readonly MigrationPhase[] = ['pre-migration', 'reservation', 'checkpoint', 'log-transfer', 'stop-and-copy', 'commitment', 'activation'];

/** Stop requests denied at most this often for a burst of units in flight (decideStop's floor). */
const FLOOR_WAITS_MAX = 3;

export class CrtrMethod implements TransferMethod {
  readonly name = 'crtr' as const;
  readonly needs = { source: ['log-recording'], target: ['checkpoint-replay'] } as const;
  readonly phases = CRTR_PHASES;
  readonly activatesBeforeCommit = false;
  private stopGranted = false;
  /** Stop requests denied so far to wait for fewer units in flight. */
  private floorWaits = 0;
  private checkpointDone = false;
  private monitor: ConvergenceMonitor | null = null;
  private approach: FinalApproach | null = null;
  private ticker: Timer | null = null;
  private logStream: LogStream | null = null;
  private hybrid: HybridCatchUp | null = null;
  private checkpointStream: CheckpointStream | null = null;
  private unitPump: Promise<void> = Promise.resolve();
  /** A protection: its lag and objective while the log streams without end. */
  private rpo: RpoMonitor | null = null;
  /** A protection's planned switchover was asked for: from here it is a migration. */
  private switchoverAtMs: number | null = null;

  async catchUp(ctx: MethodContext): Promise<void> {
    const recorder = recorderOf(ctx.guest);
    // Phase 3: checkpoint, with units streaming alongside (phase 4 overlaps it).
    ctx.setPhase('checkpoint');
    const start = recorder.startRecording();
    // A protection's units go to the standby in batches (fewer wake-ups of this agent per guest second).
    const batchMs = ctx.request.protection?.logBatchMs ?? 0; // a migration: none
    if (batchMs > 0) recorder.setLogBatch?.(batchMs);
    ctx.open({ firstSequence: start.firstSequence });
    const channel = ctx.channel;
    const output = ctx.request.protection?.mode === 'sync' ? ctx.guest.output : undefined;
    if (output !== undefined) this.gateOutputs(ctx, output, start.firstSequence);
    channel.onStopRequest = (request) => this.onStopRequest(ctx, recorder, request);
    const protecting = ctx.request.protection !== undefined;
    // A protection's catch-up never ends on its own: its convergence is judged from a switchover on.
    const approach = (this.approach = new FinalApproach(ctx, () => this.unitsNotReplayed(ctx)));
    const monitor = (this.monitor = new ConvergenceMonitor(ctx, () => (protecting ? this.switchoverAtMs : 0), approach));
    this.rpo = protecting ? new RpoMonitor(ctx, () => this.unitsRecordedToSend(ctx)) : null;
    const rate = ctx.request.maxBandwidthBytesPerSec;
    const logStream = (this.logStream = new LogStream(channel, ctx.stats, ctx.windows, rate, () => ctx.suspended));
    const checkpointStream = (this.checkpointStream = new CheckpointStream(channel, ctx.stats, ctx.clock, ctx.log, ctx.windows.chunks, rate));
    const hybrid = (this.hybrid = this.makeHybrid(ctx, logStream));
    this.ticker = startTicker(ctx, () => {
      const settled = this.stopGranted || monitor.forced;
      // The catch-up first: a delta that pays is the answer to a backlog that does not shrink.
      // While one is sent and applied the target replays nothing: no trend to judge.
      hybrid?.tick(settled);
      monitor.tick(settled || hybrid?.busy === true);
      if (this.switchoverAtMs === null) this.rpo?.tick();
    }, () => !protecting || this.switchoverAtMs !== null);
    this.unitPump = logStream.run(recorder, ctx.signal, () => ctx.stats.phase === 'stop-and-copy' || ctx.stats.phase === 'commitment');
    this.unitPump.catch(() => {}); // Observed in finish; failures also surface through the waits.
    const checkpointStartMs = ctx.clock.now();
    await checkpointStream.run(recorder, ctx.windows.base);
    // The base's hashes are of no more use: a guest's size in memory, not kept.
    ctx.windows.base = null;
    ctx.throughputBytesPerSec = checkpointThroughputBytesPerSec(ctx.stats, ctx.clock.now() - checkpointStartMs, rate);
    this.checkpointDone = true;

    // Phase 4 goes on until the target asks to stop and we agree (or the policy forces it).
    ctx.setPhase('log-transfer');
    // A delta in flight when the policy forces the stop is finished first: its instant is where the log goes on from.
    await channel.until(() => (this.stopGranted || monitor.forced || this.approachReached(ctx)) && hybrid?.busy !== true);
  }

  /**
   * The final approach drained the backlog to what a steady log has, and ran long enough for those
   * units to be throttled ones: the source stops the guest now, without waiting for the target's
   * next request (which its window would delay), as when it grants one. Checked at each of the
   * target's progress reports.
   */
  private approachReached(ctx: MethodContext): boolean {
    if (this.approach?.active !== true || !this.approach.settled || this.stopGranted || this.hybrid?.busy === true || ctx.stats.phase !== 'log-transfer') return false;
    const backlog = this.unitsNotReplayed(ctx);
    const floor = stopUnitsFloor(ctx.channel.rttMs, ctx.stats.unitMs);
    if (backlog > floor) return false;
    ctx.round(`final approach: ${backlog} units not replayed (a steady log has ${floor}): stop-and-copy`);
    this.agreeToStop(ctx, { remainingUnits: backlog });
    return true;
  }

  /** The hybrid catch-up, where both drivers make deltas and the request did not turn it off. */
  private makeHybrid(ctx: MethodContext, logStream: LogStream): HybridCatchUp | null {
    const deltas = ctx.guest.deltas;
    // Not for a protection: a standby must replay every unit, for the outputs they produce.
    const on = deltas !== undefined && ctx.targetCapabilities.includes('delta-checkpoint') && ctx.request.logOnlyCatchUp !== true && ctx.request.protection === undefined;
    ctx.stats.hybrid = on;
    if (!on) return null;
    return new HybridCatchUp(ctx, deltas, logStream, () => this.unitsNotReplayed(ctx), () => this.checkpointStream?.chunksSent ?? 0);
  }

  /**
   * A protection's planned switchover: the target is told, and asks to stop as a migration's
   * target does; the convergence policy and the maximum duration count from now.
   */
  requestSwitchover(ctx: MethodContext, reason: string): void {
    if (this.switchoverAtMs !== null) return;
    this.switchoverAtMs = ctx.elapsedMs();
    // From here a migration: its last units go one by one, as the stop waits for them.
    recorderOf(ctx.guest).setLogBatch?.(0);
    ctx.channel.send({ switchover: { reason } });
    ctx.round(`planned switchover: ${reason}`);
    ctx.log.info({ reason }, 'protection: planned switchover to the standby');
  }

  get switchingOver(): boolean {
    return this.switchoverAtMs !== null;
  }

  /**
   * A sync protection: each output of the guest waits for the standby's receipt of the unit that
   * produced it (units arrive in order, so `unitsReceived` names the last one). Past the held
   * bound the gate opens: the protection falls back to async, and says so.
   */
  private gateOutputs(ctx: MethodContext, output: GuestOutput, firstSequence: number): void {
    output.hold();
    output.onOverflow = (held) => {
      ctx.log.error({ held }, 'sync protection: too many outputs held for the standby; released, and the protection goes on as async');
      ctx.round(`${held} outputs held past the bound: released; the protection goes on as async`);
    };
    ctx.channel.onProgress = () => {
      const received = ctx.channel.progress.unitsReceived;
      // With an arbiter, nothing leaves once this primary's term is not known held.
      if (received > 0 && output.holding && ctx.request.protection?.held?.() !== false) output.releaseThrough(firstSequence + received - 1);
    };
  }

  /** Units recorded that are to reach the target: superseded ones excluded. */
  private unitsRecordedToSend(ctx: MethodContext): number {
    const rec = recorderOf(ctx.guest).recordingStats();
    return rec.unitsRecorded + (rec.unitsUnsent ?? 0) - this.unitsSupersededHere(rec.unitsDropped);
  }

  /** Units recorded and not yet replayed by the target, sent or not: superseded units excluded. */
  private unitsNotReplayed(ctx: MethodContext): number {
    const rec = recorderOf(ctx.guest).recordingStats();
    return rec.unitsRecorded - this.unitsSupersededHere(rec.unitsDropped) - ctx.channel.progress.unitsReplayed;
  }

  /** Units superseded by a delta before they were sent: dropped by the recorder, or skipped by the log stream. */
  private unitsSupersededHere(dropped: number | undefined): number {
    return (dropped ?? 0) + (this.logStream?.unitsSkipped ?? 0);
  }

  async finish(ctx: MethodContext): Promise<void> {
    const channel = ctx.channel;
    ctx.stats.stopUnitsToReplay = this.unitsNotReplayed(ctx);
    const suspendedMs = ctx.clock.now() - ctx.suspendedAtMs;
    await this.unitPump;
    ctx.stats.stopLogBytesUnsent = this.logStream?.wireBytesAfterSuspend ?? 0;
    const sentMs = ctx.clock.now() - ctx.suspendedAtMs;
    // A target that takes an early commit holds it until it replayed the final unit: the commit
    // goes now, behind the final unit, a round trip sooner.
    if (ctx.windows.earlyCommit === true) {
      this.dispose();
      ctx.log.debug({ suspendedMs, sentMs }, 'stop-and-copy timing (early commit)');
      return;
    }
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
    if (rec !== undefined && rec.unitsRecorded > 0 && this.logStream !== null) {
      // Recorded units a delta superseded never replay: neither remaining nor replayed.
      const here = this.unitsSupersededHere(rec.unitsDropped);
      s.unitsSuperseded = here + ctx.channel.progress.unitsSuperseded;
      s.remainingUnits = Math.max(0, s.unitsRecorded - s.unitsSuperseded - s.unitsReplayed);
    }
    const output = ctx.guest.output;
    if (ctx.request.protection !== undefined && output !== undefined) [s.outputsHeld, s.outputsReleased, s.outputOverflows] = [output.heldCount, output.released, output.overflowed];
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
    // The protection ends with the guest running here: what it held goes out now.
    if (ctx.request.protection !== undefined && ctx.guest.output !== undefined) {
      ctx.guest.output.onOverflow = null;
      ctx.guest.output.openGate();
    }
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
    const protecting = ctx.request.protection !== undefined && this.switchoverAtMs === null;
    if (!this.checkpointDone || stats.phase !== 'log-transfer' || this.hybrid?.busy === true || protecting) {
      const why = protecting ? 'a protection switches over only when asked to' : this.hybrid?.busy === true ? 'a delta checkpoint is in flight' : `source is in phase ${stats.phase}`;
      channel.send({ stopDecision: { granted: false, reason: why } });
      stats.stopRequestsDenied++;
      ctx.round(`round ${stats.rounds}: stop request denied: ${why}`);
      return;
    }
    const rec = recorder.recordingStats();
    const unsent = rec.bytesQueued + (this.logStream?.heldUnitBytes ?? 0);
    // Units the target has not replayed include those still in flight, which its queue does not
    // show yet: count from what we recorded.
    const decision = decideStop({
      unsentLogBytes: unsent,
      unitsNotReplayed: this.unitsNotReplayed(ctx),
      unitsAllowed: request.remainingUnitsAllowed,
      downtimeLimitMs: ctx.request.downtimeLimitMs,
      throughputBytesPerSec: ctx.throughputBytesPerSec,
      rttMs: channel.rttMs,
      // A burst in flight: a few requests later the guest stops with fewer units to replay. During
      // the final approach the backlog drains: the stop waits for the floor until it runs out.
      unitsFloor: stopUnitsFloor(channel.rttMs, stats.unitMs),
      mayWaitForFloor: (this.floorWaits < FLOOR_WAITS_MAX || this.approach?.active === true) && ctx.elapsedMs() < SWITCHOVER_DEADLINE_SHARE * ctx.request.maxDurationMs,
    });
    if (decision.waitForFloor === true) this.floorWaits++;
    // A stop that would replay a backlog no waiting shrinks: the final approach first.
    const { granted, reason } = decision.granted && this.approach?.begin('stop request') === true ? { granted: false, reason: 'the final approach drains the backlog first' } : decision;
    channel.send({ stopDecision: { granted, reason, unsentLogBytes: unsent, unsentLogBytesAllowed: decision.allowedBytes } });
    if (granted) this.agreeToStop(ctx, { remainingUnits: request.remainingUnits, unsentLogBytes: unsent, rounds: stats.rounds });
    else stats.stopRequestsDenied++;
    ctx.round(`round ${stats.rounds}: the target has ${request.remainingUnits} units to replay; stop ${granted ? 'granted' : `denied: ${reason}`}`);
  }

  /** The stop-and-copy is agreed (a request granted, or the final approach's end): the catch-up ends. */
  private agreeToStop(ctx: MethodContext, fields: Record<string, number>): void {
    // The digest at commitment is inside the downtime: bring the incremental one up to date now.
    ctx.guest.digest();
    this.stopGranted = true;
    ctx.channel.notify();
    ctx.log.info(fields, 'stop-and-copy agreed');
  }
}
