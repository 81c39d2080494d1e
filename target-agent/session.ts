// One incoming migration on the target, on one Transfer stream. The session takes the reservation
// the Open names, starts the method's receivers (target-agent/methods.ts) and routes each stream
// message to them: checkpoint chunks and units for CR/TR (phases 3 to 5), page batches and the
// machine state for pre-copy and post-copy. It owns what every method shares: the progress
// reports (feedback.ts), the commit (phase 6: digest compare, the point of no return) and the
// activation (phase 7: resume here, run the hooks).
//
// Anything that goes wrong before the commit discards the replica and its reservation: the guest
// then only exists on the source, which resumes it.

import type { TargetReplica } from '../shared/driver/types.js';
import type { Logger } from 'pino';
import { type Clock, systemClock } from '../shared/clock.js';
import { AbortedError, bounded, CorruptDataError, InvalidStateError, MESSAGE_CHARS_MAX, VmMigrateError } from '../shared/errors.js';
import { damagedInTransit, Detached } from './detached.js';
import type { FailoverResult } from './standby.js';
import { SessionStandby, type SessionStandbyPort } from './session-standby.js';
import { pb, statusOf, toServiceError } from '../shared/transport/grpc.js';
import { detailsOf } from '../shared/transport/status.js';
import { Feedback, type ProgressCounters, type ProgressReport } from './feedback.js';
import { guardedClock } from './guarded-clock.js';
import { IdleWatchdog, idleError, transferDeadlineMs } from './idle-watchdog.js';
import { SessionStream } from './session-stream.js';
import { SessionCommit, type SessionCommitPort } from './session-commit.js';
import { transferContext } from './transfer-context.js';
import { checkCapabilities, type OpenTransfer, routeStreamMessage, type StreamMessages, targetMethod } from './methods.js';
import type { TargetMessageBody, TransferPhase } from './receivers/context.js';
import type { TransferView } from './incoming-jobs.js';
import type { Reservation } from './reservation.js';
import type { SessionHost, TransferStream } from './session-host.js';

type SourceMessage = InstanceType<typeof pb.SourceMessage>;

export type { SessionHost, TransferStream } from './session-host.js';

export class TargetSession {
  private phase: TransferPhase = 'open';
  reasonEnded = ''; // why it ended, once ended before the commit
  /** The commit and activation (session-commit.ts): an early commit is held there. */
  private readonly commit: SessionCommit;
  /** The source ended the transfer by cancelling the migration (not a failure). */
  private cancelledBySource = false;
  private reservation: Reservation | null = null;
  /** Set at Open, once the replica proved it has what the method needs. */
  private transfer: OpenTransfer | null = null;
  private feedback: Feedback | null = null;
  /** What the commit, the standby and the receivers may do to this session (port()). */
  private readonly parts: SessionCommitPort & SessionStandbyPort;
  /** A protection's standby, from its Open on (session-standby.ts). */
  private readonly protection: SessionStandby;
  private bytesReceived = 0;
  /** Messages of the transfer received, on every stream of it (Progress.messages_received). */
  private messagesReceived = 0;
  private resumeAttempt = 0; // the last Resume taken (its attempt number)
  private readonly stream: SessionStream;
  /** The stream broke and the transfer waits for the source to resume it. */
  private readonly detached: Detached;
  /** Bounds the source's silence at every stage before the commit (idle-watchdog.ts). */
  private readonly idle: IdleWatchdog;
  /** Set by fail(): the stream ends with this error's status (after the in-band TargetError). */
  private failure: unknown = null;
  private finished = false;
  /** Set by supersede(): the replica outlives the session, as a new reservation's base. */
  private keepReplica = false;
  private resolveDone!: () => void;
  readonly done = new Promise<void>((resolve) => (this.resolveDone = resolve));

  constructor(
    call: TransferStream,
    private readonly host: SessionHost,
    private log: Logger,
    private readonly clock: Clock = systemClock,
  ) {
    // Whatever this session schedules fails this session if it throws, not the process.
    this.clock = guardedClock(clock, (error) => this.fail(error));
    this.parts = this.port();
    this.commit = new SessionCommit(this.parts);
    this.protection = new SessionStandby(this.parts);
    // Post-copy's guest runs here on pages only the source has: never ended for the source's silence.
    this.idle = new IdleWatchdog(this.clock, host.options.transferIdleTimeoutMs, {
      // Units queued while the checkpoint is still restoring wait for the source's chunks, not for us.
      // Nor a standby: its primary's silence is what a failover is for.
      busy: () => this.phase === 'committed' || this.phase === 'activated' || this.phase === 'postcopy' || this.protection.active || this.commit.holding || (this.phase === 'replaying' && (this.transfer?.receivers.counters().remainingUnits ?? 0) > 0) || this.transfer?.receivers.streaming?.() === true,
      deadlineMs: () => transferDeadlineMs(this.reservation, this.phase),
      expired: (idleMs, pastDeadline) => this.fail(idleError(this.phase, idleMs, this.idle.timeoutMs, pastDeadline ? this.reservation : null)),
    });
    const port = { phase: () => this.phase, log: () => this.log, missingPages: () => this.missingPages, standby: () => this.protection.active, expired: (reason: string) => this.end(reason) };
    this.detached = new Detached(this.clock, host.options.resumeWindowMs ?? 0, port);
    this.stream = new SessionStream(call, this.clock, {
      message: (message) => this.onMessage(message),
      ended: (reason, resumable) => this.onEnd(reason, resumable),
      failed: (error) => this.fail(error),
      overflow: (error) => this.fail(error),
      drained: () => this.progress(true),
    });
  }

  /** What the commit (session-commit.ts) and the standby (session-standby.ts) may do to this session. */
  private port(): SessionCommitPort & SessionStandbyPort {
    const session = this;
    return {
      host: this.host,
      clock: this.clock,
      get log() {
        return session.log;
      },
      phase: () => this.phase,
      setPhase: (phase) => this.setPhase(phase),
      transfer: () => this.transfer,
      reservation: () => this.reservation,
      send: (body) => this.send(body),
      fail: (error) => this.fail(error),
      end: (reason) => this.end(reason),
      endedAs: (reason) => {
        this.reasonEnded = reason;
        this.setPhase('ended');
        this.finish();
      },
      finish: (reason?: string) => {
        if (reason !== undefined) this.reasonEnded = reason;
        this.finish();
      },
      endKeepingReplica: (reason) => {
        this.keepReplica = true;
        this.end(reason);
      },
      detached: () => this.detached.waiting,
      streamAttached: () => this.stream.attached,
      silentMs: () => this.idle.silentMs(),
      drain: () => this.transfer?.receivers.drain?.() ?? 0,
      dropStream: (error) => {
        // In band, then the stream's status; the stream is no longer this session's to read.
        this.send({ error: { code: statusOf(error), message: error.message, reason: error.reason } });
        this.stream.release()?.emit('error', toServiceError(error));
      },
      progress: () => this.progress(true),
    };
  }

  /**
   * The transfer of this reservation, which the source may resume on a new stream: one whose stream
   * broke, or one whose stream has not broken here yet (a stalled link: the source gave up on it
   * first, and the reservation's ids are its proof).
   */
  waitingForResume(reservationId: string, migrationId: string, attempt: number): boolean {
    const r = this.reservation;
    // A Resume the source sent before one already taken, held up on the way: the source gave up on its stream.
    if (attempt !== 0 && attempt <= this.resumeAttempt) return false;
    const phase = this.phase;
    const inTransfer = phase === 'restoring' || phase === 'replaying' || phase === 'postcopy';
    return (this.detached.waiting || (inTransfer && !this.commit.holding && !this.finished)) && r !== null && r.id === reservationId && r.migrationId === migrationId;
  }

  /** Continues the transfer on `call`, a new stream whose first message was Resume: tells the source where to go on from. */
  attach(call: TransferStream, attempt: number): void {
    this.resumeAttempt = Math.max(this.resumeAttempt, attempt);
    this.detached.resumed();
    // A stream the source gave up on while it had not broken here: nothing more is read from it.
    this.stream.release()?.end();
    this.stream.use(call);
    this.idle.touch();
    this.log.info({ messagesReceived: this.messagesReceived, phase: this.phase }, 'transfer resumed on a new stream');
    this.send({ resumed: { messagesReceived: this.messagesReceived } });
    this.transfer?.receivers.resumed?.();
    this.progress(true);
  }

  /** Post-copy: pages the guest running here still lacks (null: no guest runs here by this transfer). */
  get missingPages(): number | null {
    if (this.phase !== 'postcopy' && this.phase !== 'activated') return null;
    return this.transfer?.receivers.running?.()?.missingPages ?? null;
  }

  /** The source gave the migration up (Release by its id): a transfer not yet committed ends, its replica dropped. */
  giveUp(reason: string): void {
    if (this.phase === 'restoring' || this.phase === 'replaying' || this.phase === 'open') this.end(`given up by the source: ${reason}`);
  }

  /** A standby its primary abandoned ends, its replica the base of the primary's new reservation (session-standby.ts). */
  supersede(reason: string): TargetReplica | null {
    return this.protection.supersede(reason);
  }

  /** Ends the session from outside (agent shutdown): before the commit, the replica is dropped. */
  abort(reason: string): void {
    this.fail(new AbortedError(`target agent: ${reason}`, { reason: 'CANCELLED', metadata: { side: 'target' } }));
  }

  /** This transfer as the Control API shows it (an incoming job). */
  view(): TransferView {
    return { phase: this.phase, method: this.transfer?.method.name ?? null, counters: this.counters(), cancelled: this.cancelledBySource, standby: this.protection.view() };
  }

  /** A protection's standby resumes here (session-standby.ts, standby.ts). */
  failover(force: boolean): FailoverResult {
    return this.protection.failover(force);
  }

  /** The guest the transfer brings, once the Open named the reservation. */
  get guestId(): string | null {
    return this.reservation?.replica.id ?? null;
  }

  /** The source's job id, once the Open named the reservation. */
  get jobId(): string | null {
    return this.reservation?.migrationId ?? null;
  }

  private setPhase(phase: TransferPhase): void {
    this.phase = phase;
    const jobId = this.reservation?.migrationId;
    if (jobId !== undefined) this.host.phaseChanged?.(jobId, phase, this.transfer?.method.name ?? null, () => this.view());
  }

  /** Holds its reservation: the transfer opened and has not ended. */
  get opened(): boolean {
    return this.reservation !== null && this.phase !== 'ended';
  }

  private onMessage(message: SourceMessage): void {
    // Once the stream is ended, nothing more is read nor written: a write after the end would
    // destroy the stream, dropping what it still held and its status.
    if (this.phase === 'ended' || this.finished) return;
    this.idle.touch();
    // Numbered as the source numbers them: every message but Open, Resume and Ping.
    if (message.body !== 'open' && message.body !== 'resume' && message.body !== 'ping') this.messagesReceived++;
    try {
      const payload = message.chunk?.payload ?? message.unit?.payload;
      if (payload?.data) this.bytesReceived += payload.data.length;
      switch (message.body) {
        // Decoded sub-messages are instances: absent scalars read as their proto3 defaults.
        case 'open':
          return this.onOpen(message.open as InstanceType<typeof pb.Open>);
        case 'chunk':
        case 'unit':
        case 'pages':
        case 'machineState':
        case 'rebase':
          return routeStreamMessage(this.transfer, message.body, message[message.body] as StreamMessages[typeof message.body]);
        case 'stopDecision':
          return this.onStopDecision(message.stopDecision as InstanceType<typeof pb.StopDecision>);
        case 'commit':
          return this.commit.receive(message.commit as InstanceType<typeof pb.Commit>);
        case 'abort':
          this.cancelledBySource = message.abort?.cancelled ?? false;
          return this.end(`${this.cancelledBySource ? 'cancelled' : 'aborted'} by the source: ${message.abort?.reason ?? ''}`);
        case 'ping':
          return this.send({ pong: { sentMs: message.ping?.sentMs ?? 0 } });
        case 'resume':
          return this.onResume(message.resume as InstanceType<typeof pb.Resume>);
        case 'switchover':
          return this.protection.switchover(message.switchover?.reason ?? '');
        default:
          throw new CorruptDataError(`unknown message on the transfer stream (${String(message.body)})`);
      }
    } catch (error) {
      this.fail(error);
    }
  }

  /** A new stream for a transfer whose stream broke: handed to the session that waits for it (this one was only its first reader). */
  private onResume(resume: InstanceType<typeof pb.Resume>): void {
    const open = resume.open;
    if (open != null && this.phase === 'open' && !this.host.waitingForResume?.(resume.reservationId, resume.migrationId, resume.attempt ?? 0) && open.reservationId === resume.reservationId && open.migrationId === resume.migrationId) {
      // The Open never arrived here (the link broke on its way): this stream opens the transfer
      // (host.open refuses a reservation that is gone or taken), and nothing else was counted.
      this.onOpen(open as InstanceType<typeof pb.Open>);
      this.resumeAttempt = resume.attempt ?? 0;
      return this.send({ resumed: { messagesReceived: 0 } });
    }
    const waiting = Detached.waitingFor(this.phase, resume, this.host);
    const call = this.stream.release()!;
    [this.phase, this.reasonEnded, this.finished] = ['ended', 'handed over to the transfer it resumed', true];
    this.idle.stop();
    this.resolveDone();
    waiting.attach(call, resume.attempt ?? 0);
  }

  private onOpen(open: InstanceType<typeof pb.Open>): void {
    if (this.phase !== 'open') throw new InvalidStateError(`Open received twice (session is ${this.phase})`, { reason: 'PROTOCOL_VIOLATION' });
    const method = targetMethod(open.method);
    const r = this.host.open(open.reservationId, method.name);
    this.reservation = r;
    // The source's job id, under the name the source logs it: one id greps across both agents.
    this.log = this.log.child({ jobId: r.migrationId, guestId: r.replica.id });
    // A replica that cannot carry the method is refused by name; ending the session releases it.
    checkCapabilities(method, r.replica);
    const options = { progressIntervalMs: this.host.options.progressIntervalMs, downtimeLimitMs: r.downtimeLimitMs, unitMs: r.unitMs };
    const afterReport = (nowMs: number, report: ProgressReport) => {
      this.transfer?.receivers.afterReport?.(nowMs, report);
      if (report.finalReplayed) this.commit.releaseHeld();
    };
    this.feedback = new Feedback(options, { reportable: () => this.reportable(), counters: () => this.counters(), send: (report) => this.send({ progress: report }), afterReport }, this.clock);
    this.protection.open(r.protection);
    this.transfer = { reservation: r, method, receivers: method.start(r.replica, transferContext(r, this.parts, { commit: this.commit, standby: this.protection, progress: (force) => this.progress(force) })) };
    this.setPhase('restoring');
    this.log.info({ firstSequence: open.firstSequence, method: method.name }, 'transfer opened');
    // The first progress report acknowledges the Open: post-copy waits for it before suspending.
    this.progress(true);
  }

  private onStopDecision(decision: InstanceType<typeof pb.StopDecision>): void {
    this.transfer?.receivers.stopDecided?.(decision.granted);
    // Counted: a report says so soon, so that the source need not keep it.
    this.progress(false);
    if (!decision.granted) this.log.debug({ reason: decision.reason }, 'stop-and-copy not granted yet');
    else this.log.info({ unsentLogBytes: decision.unsentLogBytes }, 'stop-and-copy granted');
  }

  /** Sends progress (at most every progressIntervalMs unless `force`), and a stop request when due. */
  private progress(force: boolean): void {
    this.feedback?.progress(force);
  }

  private reportable(): boolean {
    if (this.phase === 'ended' || this.reservation === null) return false;
    // Post-copy reports only while its pages arrive.
    const running = this.transfer?.receivers.running?.() ?? null;
    return running === null || this.phase === 'postcopy';
  }

  private counters(): ProgressCounters {
    return {
      checkpointRestored: this.phase !== 'restoring' && this.phase !== 'open',
      bytesReceived: this.bytesReceived,
      messagesReceived: this.messagesReceived,
      ...this.transfer?.receivers.counters(),
    };
  }

  private send(body: TargetMessageBody): void {
    if (this.phase === 'ended' || this.finished || !this.stream.attached) return;
    try {
      this.stream.send(body);
    } catch (error) {
      this.log.warn({ err: error }, 'could not write to the transfer stream');
    }
  }

  private fail(error: unknown): void {
    if (this.phase === 'ended') return;
    const code = statusOf(error);
    const message = bounded(error instanceof Error ? error.message : String(error), MESSAGE_CHARS_MAX);
    if (!(error instanceof VmMigrateError)) this.log.error({ err: error }, 'unexpected error in a transfer');
    // The source sent its commit early and waits for its answer: nothing was committed here.
    this.commit.refuseHeld(message);
    if (this.phase === 'postcopy' && damagedInTransit(error) && this.detached.detach(message, this.messagesReceived)) {
      this.stream.end(new AbortedError(`transfer stream dropped, resume it: ${message}`, { reason: 'PEER_UNAVAILABLE' }));
      return void this.stream.release();
    }
    // In band first, as sources that predate the status read it; then the stream's own status.
    this.send({ error: { code, message, reason: detailsOf(error).reason } });
    this.failure = error;
    this.end(message);
  }

  private onEnd(reason: string, resumable: boolean): void {
    if (this.phase === 'activated') return this.finish();
    // Post-copy's guest runs here: even a stream this agent could not decode is resumed, not ended.
    if ((resumable || this.phase === 'postcopy') && !this.commit.holding && this.detached.detach(reason, this.messagesReceived)) {
      // The stream is gone; the transfer waits for the source on a new one.
      this.stream.release();
      return;
    }
    if (this.phase === 'postcopy') {
      // Post-copy's known weakness: the guest runs here, but part of its memory is still on the
      // source. It waits (stalled on its next missing page) for an operator's decision.
      const missingPages = this.transfer?.receivers.running?.()?.missingPages;
      this.log.error({ reason, missingPages }, 'post-copy interrupted: the guest here lacks pages and cannot go on');
      this.reasonEnded = `post-copy interrupted with ${missingPages ?? 0} pages missing: ${reason}`;
      return this.finish();
    }
    this.end(reason);
  }

  /** Ends the session; before the commit, the replica and its reservation are discarded. */
  private end(reason: string): void {
    if (this.phase === 'ended') return;
    this.reasonEnded = reason;
    const before = this.phase;
    if (before !== 'committed' && before !== 'activated' && before !== 'postcopy' && this.reservation !== null) {
      this.host.release(this.reservation.id, reason, this.keepReplica);
      this.log.warn({ reason, phase: before }, this.keepReplica ? 'standby superseded: its replica is the base of a new one' : 'incoming migration ended before commit: replica discarded');
    }
    this.setPhase('ended');
    this.finish();
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.idle.stop();
    this.detached.stop();
    this.feedback?.close();
    this.stream.end(this.failure);
    this.resolveDone();
  }
}
