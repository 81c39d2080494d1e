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
// and the guest runs here (resumed if it was suspended); the switchover has deadlines of its own
// (shared/switchover.ts), so a stalled link cannot keep the guest suspended past them. Once the
// commit is sent the guest is resumed here only if the target says it did not commit: if the
// answer is lost, the job is in doubt and asks the target (in-doubt.ts) until it knows.

import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { type Clock, systemClock } from '../shared/clock.js';
import type { SourceGuest } from '../shared/driver/types.js';
import { AbortedError, DeadlineExceededError, FailedOverError, InvalidStateError, UnavailableError, VmMigrateError } from '../shared/errors.js';
import { openJournal } from '../shared/journal.js';
import { switchoverDeadlines } from '../shared/switchover.js';
import { WINDOW_DEFAULTS } from '../shared/protocol.js';
import { emptyStats, type MigrationPhase, type MigrationStats } from '../shared/stats.js';
import type { StreamByteCounter } from '../shared/transport/grpc.js';
import type { SourceOptions } from './source-options.js';
import type { TransferChannel } from './channel.js';
import { DisruptionMeter } from './disruption-meter.js';
import { Commitment } from './commitment.js';
import type { ResolveAction } from './in-doubt.js';
import { SourceDecisions } from './decisions.js';
import { recordError, refreshMigrationStats } from './migration-stats.js';
import { raceDeadline } from './wait.js';
import { retryLostLink } from './retry.js';
import type { MigrationHooks } from './faults.js';
import type { MethodContext, MigrationRequest, TargetWindows, TransferMethod } from './methods/method.js';
import { createMethod } from './methods/registry.js';
import { CrtrMethod } from './methods/crtr.js';
import { GrpcTargetPeer, type TargetPeer } from './peer.js';
import { checkTarget, reserveOnTarget } from './prepare.js';
import { stopForGood } from './fence.js';
import { abortAtTarget } from './abort-target.js';
import { openTransfer } from './open-transfer.js';
import type { MigrationDependencies, MigrationEvents } from './migration-types.js';
import { methodContext } from './method-context.js';
import { openNativeRelay } from './native-relay.js';

export type { MigrationRequest } from './methods/method.js';
export { SOURCE_DEFAULTS, type SourceOptions } from './source-options.js';

export type { MigrationDependencies, MigrationEvents } from './migration-types.js';

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
  private guestDiscarded = false; // the source copy was discarded (completion): its counters are gone
  /** Set by fence(): the job ends fenced, whatever error its last call failed with. */
  private fencedBy: FailedOverError | null = null;
  private suspended = false;
  /** What the target's driver can do, as its Capacity said (empty: an agent that predates capabilities). */
  private targetCapabilities: readonly string[] = [];
  private suspendedAtMs = 0;
  /** The downtime expected when the guest was suspended: the switchover's deadlines follow from it. */
  private expectedAtSuspendMs = 0;
  private readonly decisions: SourceDecisions;
  private readonly commitment: Commitment; // phases 6 and 7, and a lost answer's resolution

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
    this.method = createMethod(request.method, request);
    const description = guest.describe();
    this.stats = emptyStats(request.method, description.memoryBytes);
    this.stats.unitMs = description.unitMs;
    // The job id is also the migrationId the target receives in Reserve; both agents log it as
    // jobId, so that one id greps across both logs.
    this.log = log.child({ jobId: this.id, guestId: guest.id, target: request.targetAddress });
    this.peer = dependencies.peer ?? new GrpcTargetPeer(request.targetAddress, { credentials: options.credentials, callTimeoutMs: options.callTimeoutMs, clock: this.clock });
    this.ctx = this.makeContext();
    this.disruption = new DisruptionMeter(guest, this.clock, this.startMs);
    this.decisions = new SourceDecisions(options.journal ?? openJournal(undefined), this.id, guest.id, request.targetAddress);
    this.commitment = this.makeCommitment();
  }

  /**
   * An operator's decision on an in-doubt job (ResolveJob): ask the target again now, or resume
   * or drop the copy here, refused while the target may have decided otherwise unless forced.
   */
  resolve(action: ResolveAction, force: boolean): void {
    this.commitment.act(action, force);
  }

  /** The agent stops: an in-doubt job stops asking and ends with its guest left suspended here. */
  abandon(reason: string): void {
    this.commitment.abandon(reason);
  }

  /** A protection's planned switchover: the guest moves to the standby, as a CR/TR migration with no second checkpoint. */
  switchover(reason: string): void {
    if (!(this.method instanceof CrtrMethod) || this.request.protection === undefined || this.isOver()) throw new InvalidStateError(`job ${this.id} is not a running protection`, { reason: 'PROTOCOL_VIOLATION', metadata: { jobId: this.id } });
    this.method.requestSwitchover(this.ctx, reason);
  }

  /** A protection whose primary lost its term (the arbiter): the copy stops, as when failed over. */
  fence(message: string): void {
    if (this.isOver()) return;
    const error = new FailedOverError(message, { reason: 'FAILED_OVER', metadata: { jobId: this.id } });
    // Whatever error the job then ends with (a call in progress failing its own way), it ends fenced.
    this.fencedBy = error;
    this.cancelController.abort(error);
    this.channel?.fail(error);
  }

  /** A protection whose planned switchover was asked for. */
  get switchingOver(): boolean {
    return this.method instanceof CrtrMethod && this.method.switchingOver;
  }

  /** Cancels the migration if it has not committed; the guest stays (or resumes) here. */
  cancel(reason = 'cancelled by request'): void {
    if (this.commitment.sent) {
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

  /** The job ended (an in-doubt job has not: it waits for the target's outcome). */
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
    // Before the transfer opens, a lost link is retried within the resume window (retry.ts).
    const retried = <T>(call: () => Promise<T>) => retryLostLink(call, this.options.resumeWindowMs ?? 0, this.clock, this.cancelController.signal, () => this.peer.redial());
    this.targetCapabilities = await retried(() => checkTarget(this.peer, this.method, description, this.options.agentInstanceId));
    this.setPhase('reservation');
    const reserveStartMs = this.clock.now();
    ({ reservationId: this.reservationId, windows: this.windows } = await retried(() => reserveOnTarget(this.peer, this.id, description, this.request, this.guest.recorder !== undefined)));
    this.stats.reservationMs = this.clock.now() - reserveStartMs;
    this.stats.setupTimeMs = this.elapsedMs();
    this.stats.status = 'active';
    // Backs each method's own bound on its catch-up (a wedged link stalls a pre-copy round), a tenth
    // later; a protection's has none (it streams until it ends).
    const catchUp = this.method.catchUp(this.ctx);
    if (this.request.protection !== undefined) await catchUp;
    else await raceDeadline(this.clock, 1.1 * this.request.maxDurationMs + 5_000 - this.elapsedMs(), catchUp, () => this.failChannel(new DeadlineExceededError(`migration ran ${Math.round(this.elapsedMs())} ms before its switchover, its maximum is ${this.request.maxDurationMs} ms`, { reason: 'MAX_DURATION_EXCEEDED' })));
    await this.suspend();
    await this.withinStopAndCopyDeadline(this.method.finish(this.ctx));
    await this.commitment.commit();
    if (!this.method.activatesBeforeCommit) await this.commitment.activation();
    else this.discardSource();
  }

  /** The switchover's first step, for every method: the guest stops here; the downtime starts. */
  private async suspend(): Promise<void> {
    if (this.stats.phase !== 'stop-and-copy') this.setPhase('stop-and-copy');
    this.stats.status = 'stop-and-copy';
    this.suspendedAtMs = this.clock.now();
    this.expectedAtSuspendMs = this.refreshStats().expectedDowntimeMs;
    this.suspended = true;
    // A vCPU on its own thread finishes its unit first: the downtime starts when it stopped. A
    // hypervisor that stops the guest itself at its switchover does it (qemu-native).
    if (this.method.hypervisorStopsGuest === true) this.disruption.suspending();
    else this.suspendedAtMs += await this.disruption.suspend();
  }

  /**
   * Bounds the switchover until the commit is sent: past the deadline the stream fails, and the
   * failure path resumes the guest here. Once the commit (or post-copy's machine state) went, it
   * no longer applies.
   */
  private async withinStopAndCopyDeadline(work: Promise<void>): Promise<void> {
    const { stopAndCopyMs } = this.deadlines();
    const message = `stop-and-copy took more than ${Math.round(stopAndCopyMs)} ms (its deadline, from the downtime limit of ${this.request.downtimeLimitMs} ms): the guest resumes here`;
    await raceDeadline(this.clock, stopAndCopyMs, work, () => this.failChannel(new DeadlineExceededError(message, { reason: 'SWITCHOVER_DEADLINE_EXCEEDED', metadata: { jobId: this.id, deadlineMs: Math.round(stopAndCopyMs) } })));
  }

  /** Fails the transfer with `error` unless past the commit point; returns it, or null. */
  private failChannel(error: DeadlineExceededError): DeadlineExceededError | null {
    if (this.commitment.sent) return null;
    this.channel?.fail(error);
    return error;
  }

  private deadlines() {
    return switchoverDeadlines({ downtimeLimitMs: this.request.downtimeLimitMs, expectedDowntimeMs: this.expectedAtSuspendMs, rttMs: this.channel?.rttMs ?? 0 });
  }

  /** The guest runs on the target, which committed: our copy goes. */
  private discardSource(): void {
    this.refreshStats();
    this.guest.output?.openGate(); // a protection switched over: the standby had every unit
    this.guestDiscarded = true;
    this.guest.discard();
    this.decisions.handedOver();
  }

  private async onFailure(error: unknown): Promise<void> {
    const cancelled = this.fencedBy === null && this.cancelController.signal.aborted && !(error instanceof VmMigrateError && !(error instanceof AbortedError));
    const e = this.fencedBy ?? (error instanceof VmMigrateError ? error : new UnavailableError(error instanceof Error ? error.message : String(error), { cause: error, reason: 'INTERNAL_ERROR' }));
    if (!(error instanceof VmMigrateError)) this.log.error({ err: error }, 'unexpected error in a migration');
    recordError(this.stats, e, error instanceof VmMigrateError);
    if (this.commitment.sent) {
      // The stream is no longer relied on (nor pinged): the target's journal answers from here.
      this.channel?.close();
      return this.commitment.resolveInDoubt(e);
    }
    this.refreshStats();
    // A protected guest failed over to its standby: this copy stops, and never runs again.
    if (e.reason === 'FAILED_OVER') return this.stopFenced();
    // Abort before the commit: the target drops its replica, the guest runs here.
    const { channel, peer, reservationId, log } = this;
    await abortAtTarget({ channel, peer, jobId: this.id, reservationId, inReservation: this.stats.phase === 'reservation', protection: this.request.protection !== undefined, cancelled, reason: e.message, log });
    this.resumeHere();
    this.stats.status = cancelled ? 'cancelled' : 'failed';
    this.log.warn({ err: e.message, code: this.stats.errorCode, reason: e.reason, phase: this.stats.phase }, cancelled ? 'migration cancelled: guest runs on the source' : 'migration failed: guest runs on the source');
  }

  private stopFenced(): void {
    // Outputs the standby may not have are never released (dropped at once): it answers for the guest now.
    stopForGood(this.guest).catch((error: unknown) => this.log.warn({ err: String(error) }, 'could not stop the fenced copy for good'));
    this.method.cleanUp(this.ctx);
    this.decisions.handedOver();
    this.stats.status = 'failed';
    this.log.error({ err: this.stats.error }, 'protection: the guest was failed over to its standby; this copy is stopped and does not run again');
  }

  /** The guest runs here again (a failure before the commit, or a commit the target never made). */
  private resumeHere(): void {
    this.method.cleanUp(this.ctx);
    if (this.guest.describe().state === 'suspended') {
      this.guest.resume();
      // What the guest saw: suspended here until now.
      this.stats.downtimeMs = this.clock.now() - this.suspendedAtMs;
    }
    this.disruption.resumedHere();
    this.guest.setThrottle(1);
    this.decisions.resumed();
  }

  refreshStats(): MigrationStats {
    const recording = this.guestDiscarded ? undefined : this.guest.recorder?.recordingStats();
    refreshMigrationStats(this.stats, { recording, channel: this.channel, wire: this.peer.wireBytes, elapsedMs: this.elapsedMs(), committed: this.commitment.committed });
    this.disruption.refresh(this.stats, this.channel?.progress ?? null);
    this.commitment.refreshDoubt(this.stats);
    // The method's own figures (remainingBytes, CR/TR's unsent log in the expected downtime).
    this.method.refreshStats(this.ctx);
    return this.stats;
  }

  private makeCommitment(): Commitment {
    const self = this;
    return new Commitment({
      id: this.id,
      stats: this.stats,
      get log() {
        return self.log;
      },
      clock: this.clock,
      peer: this.peer,
      method: this.method,
      ctx: this.ctx,
      decisions: this.decisions,
      startedAtMs: this.startedAtMs,
      activationTimeoutMs: this.options.activationTimeoutMs,
      deadlines: () => this.deadlines(),
      setPhase: (phase) => this.setPhase(phase),
      checkCancelled: () => this.checkCancelled(),
      elapsedMs: () => this.elapsedMs(),
      discardSource: () => this.discardSource(),
      resumeHere: () => this.resumeHere(),
      announce: (message) => {
        this.emit('round', message);
        this.emit('progress');
      },
    });
  }

  // --- what the lifecycle lends the method ---------------------------------------------

  private makeContext(): MethodContext {
    const { guest, clock, request, stats, options } = this;
    return methodContext({
      guest,
      clock,
      request,
      stats,
      signal: this.cancelController.signal,
      timings: { convergenceWindowMs: options.convergenceWindowMs, monitorIntervalMs: options.monitorIntervalMs, activationTimeoutMs: options.activationTimeoutMs, resumeWindowMs: options.resumeWindowMs ?? 0 },
      log: () => this.log,
      windows: () => this.windows,
      channel: () => this.channel,
      suspended: () => this.suspended,
      suspendedAtMs: () => this.suspendedAtMs,
      targetCapabilities: () => this.targetCapabilities,
      open: (firstSequence) => this.openTransfer(firstSequence),
      setPhase: (phase) => this.setPhase(phase),
      round: (message) => this.emit('round', message),
      progress: () => {
        this.refreshStats();
        this.emit('progress');
      },
      elapsedMs: () => this.elapsedMs(),
      downtimeTo: (resumedAtTargetMs, resumeToReplyMs) => this.commitment.downtimeTo(resumedAtTargetMs, resumeToReplyMs),
      markPointOfNoReturn: () => {
        this.commitment.markSent();
        this.ctx.channel.markPointOfNoReturn();
      },
      openNativeRelay: (postcopy) => openNativeRelay(this.peer, { reservationId: this.reservationId, migrationId: this.id, postcopy }),
    });
  }

  /** Opens the transfer stream and sends Open: the target takes the reservation then. */
  private openTransfer(firstSequence: number): void {
    if (this.channel !== null) throw new InvalidStateError('the transfer stream is already open');
    const open = { reservationId: this.reservationId, migrationId: this.id, firstSequence, method: this.method.name };
    const { peer, request, windows, hooks, log, options } = this;
    this.channel = openTransfer({ peer, signal: this.cancelController.signal, options, request, windows, hooks, log, announce: (message) => this.emit('round', message), urgent: () => this.suspended, open });
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
