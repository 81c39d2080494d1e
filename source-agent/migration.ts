// One outgoing migration, driven from the source: the lifecycle every method shares.
//
//   pre-migration  GetCapacity: does the target have room, the driver and the capabilities?
//   reservation    Reserve: the target sets room aside (or refuses: the guest is untouched)
//   catch-up       the method's own phases while the guest runs (methods/: CR/TR checkpoint and
//                  log transfer, pre-copy rounds, post-copy's open)
//   switchover     suspend here, then the method finishes (last units, last pages, or post-copy's
//                  hand-over and page push)
//   commitment     send our digest; the target compares and commits (or refuses: we resume)
//   activation     the target resumes the guest; on its confirmation we discard our copy
//
// Until the commit is sent, any failure or cancellation aborts: the target discards its replica
// and the guest runs here (resumed if it was suspended). Once the commit is sent the guest is
// never resumed here: if the answer is lost, it stays suspended and the job says so.

import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { type Clock, systemClock } from '../shared/clock.js';
import { expectedDowntimeMs } from '../shared/convergence.js';
import type { SourceGuest } from '../shared/driver/types.js';
import { AbortedError, bounded, CorruptDataError, InvalidStateError, MESSAGE_CHARS_MAX, UnavailableError, VmMigrateError } from '../shared/errors.js';
import { WINDOW_DEFAULTS } from '../shared/protocol.js';
import { emptyStats, type MigrationPhase, type MigrationStats } from '../shared/stats.js';
import { grpc, statusName, type StreamByteCounter } from '../shared/transport/grpc.js';
import type { PayloadPacker } from '../shared/pack-pool.js';
import type { TransferChannel } from './channel.js';
import { DisruptionMeter } from './disruption-meter.js';
import type { MigrationHooks } from './faults.js';
import type { MethodContext, MigrationRequest, TargetWindows, TransferMethod } from './methods/method.js';
import { createMethod } from './methods/registry.js';
import { GrpcTargetPeer, type TargetPeer } from './peer.js';
import { checkTarget, reserveOnTarget } from './prepare.js';

export type { MigrationRequest } from './methods/method.js';

export interface SourceOptions {
  /** Deadline of the unary calls (capacity, reservation, release). */
  callTimeoutMs: number;
  /** Wait for the target's activation confirmation after the commit. */
  activationTimeoutMs: number;
  /** Window over which the backlog must shrink to count as converging. */
  convergenceWindowMs: number;
  /** How often the monitor samples the backlog and the clock. */
  monitorIntervalMs: number;
  /** Round-trip pings on the transfer stream. */
  pingIntervalMs: number;
  credentials: grpc.ChannelCredentials;
  /** This agent's id for this run: a target answering with it is this agent itself ('' : not checked). */
  agentInstanceId?: string;
  /** Where checkpoint chunks are packed (lz4, xxh64): the agent's compression workers (default: the event loop). */
  packer?: PayloadPacker;
}

export const SOURCE_DEFAULTS: SourceOptions = {
  callTimeoutMs: 10_000,
  activationTimeoutMs: 60_000,
  convergenceWindowMs: 2_000,
  monitorIntervalMs: 250,
  pingIntervalMs: 500,
  credentials: grpc.credentials.createInsecure(),
};

/** What a migration can be given instead of the real thing (tests, fault injection). */
export interface MigrationDependencies {
  peer?: TargetPeer;
  clock?: Clock;
  hooks?: MigrationHooks;
}

/**
 * Events a job emits: `phase` (a phase began), `round` (a pre-copy round ended, or CR/TR answered
 * a stop request: the message says what happened), `progress` (periodic), `end` (final status).
 */
export interface MigrationEvents {
  phase: [MigrationPhase];
  round: [string];
  progress: [];
  end: [];
}

export class SourceMigration extends EventEmitter<MigrationEvents> {
  readonly id = randomUUID();
  readonly stats: MigrationStats;
  readonly startedAtMs: number;
  private readonly clock: Clock;
  private readonly startMs: number;
  private readonly peer: TargetPeer;
  private readonly hooks: MigrationHooks;
  private readonly method: TransferMethod;
  private readonly ctx: MethodContext;
  private readonly disruption: DisruptionMeter;
  private readonly cancelController = new AbortController();
  private log: Logger;
  private channel: TransferChannel | null = null;
  private reservationId = '';
  private windows: TargetWindows = { ...WINDOW_DEFAULTS };
  private commitSent = false;
  private committed = false;
  /** Set when we discarded the source copy (completion): its counters are gone. */
  private guestDiscarded = false;
  private suspended = false;
  /** What the target's driver can do, as its Capacity said (empty: an agent that predates capabilities). */
  private targetCapabilities: readonly string[] = [];
  private suspendedAtMs = 0;

  constructor(
    private readonly guest: SourceGuest,
    readonly request: MigrationRequest,
    private readonly options: SourceOptions,
    log: Logger,
    dependencies: MigrationDependencies = {},
  ) {
    super();
    this.clock = dependencies.clock ?? systemClock;
    this.startMs = this.clock.now();
    this.startedAtMs = this.clock.epochMs();
    this.hooks = dependencies.hooks ?? {};
    this.method = createMethod(request.method);
    const description = guest.describe();
    this.stats = emptyStats(request.method, description.memoryBytes);
    this.stats.unitMs = description.unitMs;
    // The job id is also the migrationId the target receives in Reserve; both agents log it as
    // jobId, so that one id greps across both logs.
    this.log = log.child({ jobId: this.id, guestId: guest.id, target: request.targetAddress });
    this.peer = dependencies.peer ?? new GrpcTargetPeer(request.targetAddress, { credentials: options.credentials, callTimeoutMs: options.callTimeoutMs, clock: this.clock });
    this.ctx = this.makeContext();
    this.disruption = new DisruptionMeter(guest, this.clock, this.startMs);
  }

  /** Cancels the migration if it has not committed; the guest stays (or resumes) here. */
  cancel(reason = 'cancelled by request'): void {
    if (this.commitSent) {
      throw new InvalidStateError(`migration ${this.id} is past its commit point (${this.stats.phase}); it can no longer be cancelled`, {
        reason: 'PAST_COMMIT_POINT',
        metadata: { jobId: this.id, phase: this.stats.phase },
      });
    }
    if (this.isOver()) return;
    this.stats.status = 'cancelling';
    this.cancelController.abort(new AbortedError(reason));
  }

  /** Bytes on the wire so far: `sent` to the target, `received` from it (transferredBytes is their sum). */
  get wireBytes(): Readonly<StreamByteCounter> {
    return this.peer.wireBytes;
  }

  isOver(): boolean {
    return this.stats.status === 'completed' || this.stats.status === 'failed' || this.stats.status === 'cancelled';
  }

  /** Runs the migration to its end; never throws (the outcome is in `stats`). */
  async run(): Promise<MigrationStats> {
    try {
      await this.phases();
      this.stats.status = 'completed';
      this.log.info({ downtimeMs: this.stats.downtimeMs, totalTimeMs: this.stats.totalTimeMs, transferredBytes: this.stats.transferredBytes }, 'migration completed');
    } catch (error) {
      await this.onFailure(error);
    } finally {
      this.method.dispose();
      this.refreshStats();
      this.setPhase('done');
      this.channel?.close();
      this.peer.close();
      this.emit('end');
    }
    return this.stats;
  }

  private async phases(): Promise<void> {
    const description = this.guest.describe();
    this.setPhase('pre-migration');
    this.targetCapabilities = await checkTarget(this.peer, this.method, description, this.options.agentInstanceId);
    this.setPhase('reservation');
    const reserveStartMs = this.clock.now();
    ({ reservationId: this.reservationId, windows: this.windows } = await reserveOnTarget(this.peer, this.id, description, this.request));
    this.stats.reservationMs = this.clock.now() - reserveStartMs;
    this.stats.setupTimeMs = this.elapsedMs();
    this.stats.status = 'active';
    await this.method.catchUp(this.ctx);
    await this.suspend();
    await this.method.finish(this.ctx);
    await this.commit();
    if (!this.method.activatesBeforeCommit) await this.activation();
    else this.discardSource();
  }

  /** The switchover's first step, for every method: the guest stops here; the downtime starts. */
  private async suspend(): Promise<void> {
    if (this.stats.phase !== 'stop-and-copy') this.setPhase('stop-and-copy');
    this.stats.status = 'stop-and-copy';
    this.suspendedAtMs = this.clock.now();
    this.suspended = true;
    this.disruption.suspending();
    await this.guest.suspend();
  }

  /** Phase 6: our digest against the replica's; a refusal means the target dropped its copy. */
  private async commit(): Promise<void> {
    this.setPhase('commitment');
    this.stats.status = 'committing';
    const digestStartMs = this.clock.now();
    const digest = this.method.commitDigest ?? this.guest.digest();
    this.log.debug({ digestMs: this.clock.now() - digestStartMs, sinceSuspendMs: this.clock.now() - this.suspendedAtMs }, 'source digest at commitment');
    this.stats.sourceDigest = digest;
    this.checkCancelled();
    this.commitSent = true;
    const channel = this.ctx.channel;
    channel.send({ commit: { digest } });
    await channel.until(() => channel.commitResult !== null, { pastCommit: true, timeoutMs: this.method.commitTimeoutMs(this.ctx), what: 'commit' });
    const result = channel.commitResult!;
    this.stats.targetDigest = result.targetDigest;
    if (!result.matched) {
      // The target refused the commit and discarded its copy (see CommitResult): ours is the only one.
      this.commitSent = false;
      if (result.refusedReason) {
        throw new InvalidStateError(`the target refused the commit and discarded its replica: ${bounded(result.refusedReason, MESSAGE_CHARS_MAX)}`, { reason: 'TARGET_REFUSED_COMMIT', metadata: { jobId: this.id } });
      }
      throw new CorruptDataError(
        this.method.activatesBeforeCommit
          ? `post-copy commit refused: the pages the target received hash to ${result.targetDigest}, the source had ${channel.commitDigestSent}`
          : `commit refused: the target's replica digest ${result.targetDigest} differs from the digest sent, ${channel.commitDigestSent}`,
        { reason: 'DIGEST_MISMATCH', metadata: { jobId: this.id, sourceDigest: channel.commitDigestSent, targetDigest: result.targetDigest } },
      );
    }
    this.committed = true;
    this.stats.totalTimeMs = this.elapsedMs();
  }

  /** Phase 7: the target resumed the guest; its confirmation ends the downtime. */
  private async activation(): Promise<void> {
    this.setPhase('activation');
    const channel = this.ctx.channel;
    await channel.until(() => channel.activated !== null, { pastCommit: true, timeoutMs: this.options.activationTimeoutMs, what: 'activation' });
    const activated = channel.activated!;
    this.log.debug({ commitMs: this.clock.now() - this.suspendedAtMs, resumeToReplyMs: activated.resumeToReplyMs }, 'activation timing');
    this.stats.downtimeMs = this.clock.now() - this.suspendedAtMs - activated.resumeToReplyMs;
    for (const hook of activated.hooks) if (hook.exitCode !== 0) this.log.warn({ hook: hook.command, exitCode: hook.exitCode, error: hook.error }, 'activation hook failed on the target');
    this.discardSource();
  }

  /** The guest runs on the target, which committed: our copy goes. */
  private discardSource(): void {
    this.refreshStats();
    this.guestDiscarded = true;
    this.guest.discard();
  }

  private async onFailure(error: unknown): Promise<void> {
    const cancelled = this.cancelController.signal.aborted && !(error instanceof VmMigrateError && !(error instanceof AbortedError));
    const e = error instanceof VmMigrateError ? error : new UnavailableError(error instanceof Error ? error.message : String(error), { cause: error, reason: 'INTERNAL_ERROR' });
    if (!(error instanceof VmMigrateError)) this.log.error({ err: error }, 'unexpected error in a migration');
    this.stats.error = e.message;
    // A bug is INTERNAL, as toServiceError reports it to a caller.
    this.stats.errorCode = error instanceof VmMigrateError ? statusName(grpc.status[e.code]) : statusName(grpc.status.INTERNAL);
    this.stats.errorReason = e.reason;
    if (this.committed || this.commitSent) {
      this.stats.status = 'failed';
      this.stats.error = this.committed
        ? `committed, but the target's activation was not confirmed (${e.message}); the source copy is kept suspended, not discarded`
        : `commit outcome unknown (${e.message}): the guest is kept suspended on the source; check the target before resuming it`;
      this.log.error({ err: e.message, code: this.stats.errorCode, reason: e.reason }, this.stats.error);
      return;
    }
    // Abort before the commit: the target drops its replica, the guest runs here.
    this.refreshStats();
    if (this.channel !== null) this.channel.abort(e.message, cancelled);
    else if (this.reservationId !== '') {
      await this.peer.release(this.reservationId, e.message).catch((releaseError: unknown) => this.log.warn({ err: String(releaseError) }, 'could not release the reservation (it expires on its own)'));
    }
    this.method.cleanUp(this.ctx);
    if (this.guest.describe().state === 'suspended') this.guest.resume();
    this.disruption.resumedHere();
    this.guest.setThrottle(1);
    this.stats.status = cancelled ? 'cancelled' : 'failed';
    this.log.warn({ err: e.message, code: this.stats.errorCode, reason: e.reason, phase: this.stats.phase }, cancelled ? 'migration cancelled: guest runs on the source' : 'migration failed: guest runs on the source');
  }

  refreshStats(): MigrationStats {
    const s = this.stats;
    const rec = this.guestDiscarded ? undefined : this.guest.recorder?.recordingStats();
    // Recording counters are monotonic while the recording lasts, and read as zero once it was
    // stopped (abort) or the guest discarded (completion): keep the last real values then.
    if (rec !== undefined && rec.unitsRecorded >= s.unitsRecorded) {
      s.unitsRecorded = rec.unitsRecorded;
      s.logBytes = rec.logBytes;
    }
    if (this.channel !== null) {
      // Units the target is done with include those a delta superseded: only the others replayed.
      s.unitsReplayed = Math.max(0, this.channel.progress.unitsReplayed - this.channel.progress.unitsSuperseded);
      s.replayRate = this.channel.progress.replayRate;
      s.stopReplayRate = this.channel.progress.stopReplayRate;
      s.rttMs = this.channel.rttMs;
    }
    const wire = this.peer.wireBytes;
    s.transferredBytes = wire.sent + wire.received;
    // Superseded units (CR/TR's deltas) are neither replayed nor remaining; the method keeps the count.
    s.remainingUnits = Math.max(0, s.unitsRecorded - s.unitsReplayed - s.unitsSuperseded);
    if (!this.committed) s.totalTimeMs = this.elapsedMs();
    s.mbps = (s.transferredBytes * 8) / 1e6 / Math.max(0.001, this.elapsedMs() / 1000);
    const guestSeconds = (s.unitsRecorded * s.unitMs) / 1000;
    s.logRateBytesPerSec = guestSeconds > 0 ? s.logBytes / guestSeconds : 0;
    s.expectedDowntimeMs = expectedDowntimeMs({
      unsentLogBytes: 0,
      unitsToReplay: s.remainingUnits,
      unitMs: s.unitMs,
      replayRate: s.replayRate,
      throughputBytesPerSec: this.ctx.throughputBytesPerSec,
      rttMs: s.rttMs,
    });
    this.disruption.refresh(s, this.channel?.progress ?? null);
    // The method's own figures (remainingBytes, CR/TR's unsent log in the expected downtime).
    this.method.refreshStats(this.ctx);
    return s;
  }

  // --- what the lifecycle lends the method ---------------------------------------------

  private makeContext(): MethodContext {
    const self = this;
    return {
      guest: this.guest,
      clock: this.clock,
      request: this.request,
      stats: this.stats,
      signal: this.cancelController.signal,
      timings: { convergenceWindowMs: this.options.convergenceWindowMs, monitorIntervalMs: this.options.monitorIntervalMs, activationTimeoutMs: this.options.activationTimeoutMs },
      throughputBytesPerSec: 0,
      get log() {
        return self.log;
      },
      get windows() {
        return self.windows;
      },
      get channel() {
        if (self.channel === null) throw new InvalidStateError('the transfer stream is not open yet');
        return self.channel;
      },
      get suspended() {
        return self.suspended;
      },
      get suspendedAtMs() {
        return self.suspendedAtMs;
      },
      get targetCapabilities() {
        return self.targetCapabilities;
      },
      open: (fields = {}) => this.openTransfer(fields.firstSequence ?? 0),
      setPhase: (phase) => this.setPhase(phase),
      round: (message) => this.emit('round', message),
      progress: () => {
        this.refreshStats();
        this.emit('progress');
      },
      elapsedMs: () => this.elapsedMs(),
      markPointOfNoReturn: () => {
        this.commitSent = true;
        this.ctx.channel.markPointOfNoReturn();
      },
    };
  }

  /** Opens the transfer stream and sends Open: the target takes the reservation then. */
  private openTransfer(firstSequence: number): void {
    if (this.channel !== null) throw new InvalidStateError('the transfer stream is already open');
    const channel = this.peer.openTransfer(this.cancelController.signal, { compress: !this.request.disableCompression, pingIntervalMs: this.options.pingIntervalMs, packer: this.options.packer });
    this.channel = this.hooks.wrapChannel?.(channel) ?? channel;
    this.channel.send({ open: { reservationId: this.reservationId, migrationId: this.id, firstSequence, method: this.method.name } });
  }

  private setPhase(phase: MigrationPhase): void {
    this.stats.phase = phase;
    if (phase !== 'done') {
      this.log.info({ phase }, 'phase');
      this.hooks.onPhase?.(phase, (reason) => this.cancel(reason));
      this.checkCancelled();
    }
    this.emit('phase', phase);
  }

  private elapsedMs(): number {
    return this.clock.now() - this.startMs;
  }

  private checkCancelled(): void {
    const signal = this.cancelController.signal;
    if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : new AbortedError('cancelled');
  }
}
