// One incoming migration on the target, on one Transfer stream. The session takes the reservation
// the Open names, starts the method's receivers (target-agent/methods.ts) and routes each stream
// message to them: checkpoint chunks and units for CR/TR (phases 3 to 5), page batches and the
// machine state for pre-copy and post-copy. It owns what every method shares: the progress
// reports (feedback.ts), the commit (phase 6: digest compare, the point of no return) and the
// activation (phase 7: resume here, run the hooks).
//
// Anything that goes wrong before the commit discards the replica and its reservation: the guest
// then only exists on the source, which resumes it.

import type { Logger } from 'pino';
import { assert } from '../shared/assert.js';
import { type Clock, systemClock, type Timer } from '../shared/clock.js';
import { SWITCHOVER_DEADLINE_SHARE } from '../shared/convergence.js';
import { AbortedError, bounded, CorruptDataError, InvalidStateError, MESSAGE_CHARS_MAX, VmMigrateError } from '../shared/errors.js';
import type { MigrationMethod } from '../shared/stats.js';
import { pb, statusOf } from '../shared/transport/grpc.js';
import { detailsOf } from '../shared/transport/status.js';
import type { PostcopyTarget } from '../shared/driver/types.js';
import { Feedback, type ProgressCounters } from './feedback.js';
import { type HookResult, runActivationHooks } from './hooks.js';
import { checkCapabilities, type MethodContext, type MethodTransfer, type StreamMessageKind, type StreamMessages, type TargetMethod, targetMethod } from './methods.js';
import type { TargetMessageBody, TransferPhase } from './receivers/context.js';
import type { TransferView } from './incoming-jobs.js';
import type { Reservation } from './reservation.js';
import type { SessionHost, TransferStream } from './session-host.js';

type SourceMessage = InstanceType<typeof pb.SourceMessage>;

export type { SessionHost, TransferStream } from './session-host.js';

const SESSION = {
  /** How long a new transfer stream may go without its Open message. */
  openTimeoutMs: 30_000,
} as const;

/** An opened transfer: its reservation, its method and the method's receivers. */
interface OpenTransfer {
  readonly reservation: Reservation;
  readonly method: TargetMethod;
  readonly receivers: MethodTransfer;
}

/** How a stream message is named in errors. */
const DESCRIBE: { [K in StreamMessageKind]: (message: StreamMessages[K]) => string } = {
  chunk: (chunk) => `checkpoint chunk ${chunk.index}`,
  unit: (unit) => `log unit ${unit.sequence}`,
  pages: (batch) => `page batch of round ${batch.round}`,
  machineState: () => 'machine state',
  rebase: (rebase) => `rebase to delta ${rebase.generation}`,
};

export class TargetSession {
  private currentPhase: TransferPhase = 'open';
  private endReason = '';
  /** An early commit, held until the final unit is replayed (ReserveResponse.early_commit). */
  private heldCommit: InstanceType<typeof pb.Commit> | null = null;
  /** The source ended the transfer by cancelling the migration (not a failure). */
  private cancelledBySource = false;
  private reservation: Reservation | null = null;
  /** Set at Open, once the replica proved it has what the method needs. */
  private transfer: OpenTransfer | null = null;
  private feedback: Feedback | null = null;
  private bytesReceived = 0;
  private readonly openTimer: Timer;
  private resolveDone!: () => void;
  readonly done = new Promise<void>((resolve) => (this.resolveDone = resolve));

  constructor(
    private readonly call: TransferStream,
    private readonly host: SessionHost,
    private log: Logger,
    private readonly clock: Clock = systemClock,
  ) {
    call.on('data', (message: SourceMessage) => this.onMessage(message));
    // A stream that never says which reservation it is for holds resources for nothing.
    this.openTimer = clock.timeout(SESSION.openTimeoutMs, () => {
      if (this.phase === 'open') this.fail(new InvalidStateError(`no Open within ${SESSION.openTimeoutMs} ms of the transfer stream's start`, { reason: 'PROTOCOL_VIOLATION', metadata: { timeoutMs: SESSION.openTimeoutMs } }));
    });
    call.on('end', () => this.onEnd('the source closed the stream'));
    call.on('cancelled', () => this.onEnd('the source cancelled the stream'));
    call.on('error', (error) => this.onEnd(`stream error: ${error.message}`));
  }

  /** Ends the session from outside (agent shutdown): before the commit, the replica is dropped. */
  abort(reason: string): void {
    this.fail(new AbortedError(`target agent: ${reason}`, { reason: 'CANCELLED', metadata: { side: 'target' } }));
  }

  /** This transfer as the Control API shows it (an incoming job). */
  view(): TransferView {
    return { phase: this.phase, method: this.transfer?.method.name ?? null, counters: this.counters(), cancelled: this.cancelledBySource };
  }

  /** Why it ended, once ended before the commit. */
  get reasonEnded(): string {
    return this.endReason;
  }

  /** Post-copy: pages the guest running here still lacks (null: no guest runs here by this transfer). */
  get missingPages(): number | null {
    if (this.phase !== 'postcopy' && this.phase !== 'activated') return null;
    return this.transfer?.receivers.running?.()?.missingPages ?? null;
  }

  /** The source's job id, once the Open named the reservation. */
  get jobId(): string | null {
    return this.reservation?.migrationId ?? null;
  }

  private get phase(): TransferPhase {
    return this.currentPhase;
  }

  private setPhase(phase: TransferPhase): void {
    this.currentPhase = phase;
    const jobId = this.reservation?.migrationId;
    if (jobId !== undefined) this.host.phaseChanged?.(jobId, phase, this.transfer?.method.name ?? null, () => this.view());
  }

  /** Holds its reservation: the transfer opened and has not ended. */
  get opened(): boolean {
    return this.reservation !== null && this.phase !== 'ended';
  }

  private onMessage(message: SourceMessage): void {
    if (this.phase === 'ended') return;
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
          return this.onStreamMessage(message.body, message[message.body] as StreamMessages[typeof message.body]);
        case 'stopDecision':
          return this.onStopDecision(message.stopDecision as InstanceType<typeof pb.StopDecision>);
        case 'commit':
          return this.onCommit(message.commit as InstanceType<typeof pb.Commit>);
        case 'abort':
          this.cancelledBySource = message.abort?.cancelled ?? false;
          return this.end(`${this.cancelledBySource ? 'cancelled' : 'aborted'} by the source: ${message.abort?.reason ?? ''}`);
        case 'ping':
          return this.send({ pong: { sentMs: message.ping?.sentMs ?? 0 } });
        default:
          throw new CorruptDataError(`unknown message on the transfer stream (${String(message.body)})`);
      }
    } catch (error) {
      this.fail(error);
    }
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
    this.feedback = new Feedback(
      options,
      {
        reportable: () => this.reportable(),
        counters: () => this.counters(),
        send: (report) => this.send({ progress: report }),
        afterReport: (nowMs, report) => {
          this.transfer?.receivers.afterReport?.(nowMs, report);
          if (report.finalReplayed) this.releaseHeldCommit();
        },
      },
      this.clock,
    );
    this.transfer = { reservation: r, method, receivers: method.start(r.replica, this.methodContext(r)) };
    this.setPhase('restoring');
    this.log.info({ firstSequence: open.firstSequence, method: method.name }, 'transfer opened');
    // The first progress report acknowledges the Open: post-copy waits for it before suspending.
    this.progress(true);
  }

  private methodContext(r: Reservation): MethodContext {
    const { unitWindow, unitWindowBytes } = this.host.options;
    const switchoverDeadlineMs = r.maxDurationMs > 0 ? r.reservedAtMs + SWITCHOVER_DEADLINE_SHARE * r.maxDurationMs : Number.POSITIVE_INFINITY;
    return {
      clock: this.clock,
      defer: this.host.options.defer,
      log: this.log,
      windows: { unitWindow, unitWindowBytes, switchoverDeadlineMs },
      phase: () => this.phase,
      restored: () => this.setPhase('replaying'),
      resuming: () => this.host.decisions?.committed(r.migrationId, r.replica.id),
      resumedHere: (resumedAtMs) => this.resumedHere(r, resumedAtMs),
      progress: (force) => this.progress(force),
      send: (body) => this.send(body),
      fail: (error) => this.fail(error),
      unitReplayed: () => this.host.metrics?.unitsReplayed(),
    };
  }

  /** Routes a message of the method's data to its receiver, if the method accepts it. */
  private onStreamMessage<K extends StreamMessageKind>(kind: K, message: StreamMessages[K]): void {
    const transfer = this.transfer;
    if (transfer === null) throw new InvalidStateError(`${DESCRIBE[kind](message)} before Open`, { reason: 'PROTOCOL_VIOLATION' });
    const { method, receivers } = transfer;
    if (!method.accepts.includes(kind)) throw new InvalidStateError(`${DESCRIBE[kind](message)} in a ${method.name} transfer`, { reason: 'PROTOCOL_VIOLATION', metadata: { method: method.name } });
    const receive = receivers.receive[kind];
    assert(receive !== undefined, () => `method '${method.name}' accepts ${kind} messages but has no receiver for them`);
    receive(message);
  }

  private requireTransfer(what: string): OpenTransfer {
    if (this.transfer === null) throw new InvalidStateError(`${what} before Open`, { reason: 'PROTOCOL_VIOLATION' });
    return this.transfer;
  }

  private onStopDecision(decision: InstanceType<typeof pb.StopDecision>): void {
    this.transfer?.receivers.stopDecided?.(decision.granted);
    if (!decision.granted) this.log.debug({ reason: decision.reason }, 'stop-and-copy not granted yet');
    else this.log.info({ unsentLogBytes: decision.unsentLogBytes }, 'stop-and-copy granted');
  }

  private onCommit(commit: InstanceType<typeof pb.Commit>): void {
    const { reservation: r, method, receivers } = this.requireTransfer('commit');
    const running = receivers.running?.() ?? null;
    if (running !== null) return this.commitRunningGuest(method.name, running, commit, r);
    const { finalReplayed = false, remainingUnits = 0 } = receivers.counters();
    if (this.heldCommit !== null) throw new InvalidStateError('commit received twice: the first one is held until the final unit is replayed');
    if (this.phase === 'replaying' && !finalReplayed && receivers.finalReceived?.() === true) {
      // An early commit (ReserveResponse.early_commit): the final unit is here, its replay not
      // done yet. Held until it is (releaseHeldCommit), answered matched=false if it fails.
      this.heldCommit = commit;
      return;
    }
    if (this.phase !== 'replaying' || !finalReplayed || remainingUnits > 0) {
      throw new InvalidStateError(`commit received before the final unit was replayed (${remainingUnits} units queued, state ${this.phase})`, { reason: 'PROTOCOL_VIOLATION', metadata: { remainingUnits } });
    }
    const commitStartMs = this.clock.now();
    const targetDigest = r.replica.digest();
    const digestMs = this.clock.now() - commitStartMs;
    if (targetDigest !== commit.digest) {
      this.log.error({ sourceDigest: commit.digest, targetDigest }, 'commit refused: digests differ');
      this.send({ commitResult: { matched: false, targetDigest } });
      this.end(`digest mismatch: source ${commit.digest}, replica ${targetDigest}`);
      return;
    }
    // The commit point: recorded in the journal first (the single point of truth a source that
    // lost our answer asks), then the guest is this host's. It resumes here even if the stream
    // breaks now; the source never resumes its copy after sending the commit, unless we say (to
    // its outcome query) that we did not commit.
    if (!this.recordCommit(r, targetDigest)) return;
    this.setPhase('committed');
    this.host.metrics?.incomingEnded(method.name, 'committed');
    this.send({ commitResult: { matched: true, targetDigest } });
    const resumedAtMs = this.clock.now();
    r.replica.activate();
    this.host.decisions?.resumed(r.migrationId, resumedAtMs);
    this.host.forget(r.id);
    this.setPhase('activated');
    this.log.info({ digest: targetDigest, digestMs, commitToResumeMs: this.clock.now() - commitStartMs }, 'committed and resumed the guest here');
    void this.runHooks(r).then((hooks) => {
      this.send({ activated: { resumeToReplyMs: this.clock.now() - resumedAtMs, resumedAtMs, hooks } });
      this.finish();
    });
  }

  /** Records the commit; when the journal cannot, refuses it (matched=false with the reason: the source resumes). */
  private recordCommit(r: Reservation, targetDigest: string): boolean {
    try {
      this.host.decisions?.committed(r.migrationId, r.replica.id);
      return true;
    } catch (error) {
      const message = bounded((error as Error).message, MESSAGE_CHARS_MAX);
      this.log.error({ err: message }, 'commit refused: the decision could not be recorded');
      this.send({ commitResult: { matched: false, targetDigest, refusedReason: message } });
      this.end(message);
      return false;
    }
  }

  /** The final unit was replayed: a commit held since it arrived early goes on now. */
  private releaseHeldCommit(): void {
    const commit = this.heldCommit;
    if (commit === null) return;
    this.heldCommit = null;
    try {
      this.onCommit(commit);
    } catch (error) {
      this.fail(error);
    }
  }

  /** Post-copy: the guest runs here already; its pages as received must match the source's state. */
  private commitRunningGuest(method: MigrationMethod, running: PostcopyTarget, commit: InstanceType<typeof pb.Commit>, r: Reservation): void {
    if (running.missingPages > 0) throw new InvalidStateError(`post-copy commit received with ${running.missingPages} pages still missing`, { reason: 'PROTOCOL_VIOLATION', metadata: { missingPages: running.missingPages } });
    const targetDigest = running.receivedDigest();
    if (targetDigest !== commit.digest) {
      // The guest running here started from a state the source never had: drop it, so that the
      // source (told so by matched=false) can resume its suspended copy.
      this.log.error({ sourceDigest: commit.digest, targetDigest }, 'post-copy commit refused: digests differ; discarding the guest here');
      this.host.discardGuest(r.replica.id);
      this.host.decisions?.dropped(r.migrationId, r.replica.id, true, 'post-copy commit refused: digests differ');
      this.host.metrics?.incomingEnded(method, 'discarded');
      this.send({ commitResult: { matched: false, targetDigest } });
      this.endReason = `post-copy commit refused: the pages received hash to ${targetDigest}, the source had ${commit.digest}`;
      this.setPhase('ended');
      this.finish();
      return;
    }
    this.host.metrics?.incomingEnded(method, 'committed');
    this.send({ commitResult: { matched: true, targetDigest } });
    this.setPhase('activated');
    this.log.info({ digest: targetDigest }, 'post-copy complete: every page here, digests match');
    this.finish();
  }

  /** Post-copy: the guest resumed here; confirmed at once, since the source must serve page requests while the hooks run. */
  private resumedHere(r: Reservation, resumedAtMs: number): void {
    this.host.decisions?.resumed(r.migrationId, resumedAtMs);
    this.host.forget(r.id);
    this.setPhase('postcopy');
    this.send({ activated: { resumeToReplyMs: this.clock.now() - resumedAtMs, resumedAtMs, hooks: [] } });
    void this.runHooks(r);
  }

  private runHooks(r: Reservation): Promise<HookResult[]> {
    const { activationHooks, hookTimeoutMs } = this.host.options;
    return runActivationHooks(activationHooks, hookTimeoutMs, { VMMIGRATE_GUEST_ID: r.replica.id, VMMIGRATE_MIGRATION_ID: r.migrationId }, this.clock, this.log);
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
      ...this.transfer?.receivers.counters(),
    };
  }

  private send(body: TargetMessageBody): void {
    if (this.phase === 'ended') return;
    try {
      this.call.write(pb.TargetMessage.create(body as never));
    } catch (error) {
      this.log.warn({ err: error }, 'could not write to the transfer stream');
    }
  }

  private fail(error: unknown): void {
    if (this.phase === 'ended') return;
    const code = statusOf(error);
    const message = bounded(error instanceof Error ? error.message : String(error), MESSAGE_CHARS_MAX);
    if (!(error instanceof VmMigrateError)) this.log.error({ err: error }, 'unexpected error in a transfer');
    if (this.heldCommit !== null) {
      // The source sent its commit early and waits for its answer: nothing was committed here.
      this.heldCommit = null;
      this.send({ commitResult: { matched: false, targetDigest: '', refusedReason: message } });
    }
    this.send({ error: { code, message, reason: detailsOf(error).reason } });
    this.end(message);
  }

  private onEnd(reason: string): void {
    if (this.phase === 'activated') return this.finish();
    if (this.phase === 'postcopy') {
      // Post-copy's known weakness: the guest runs here, but part of its memory is still on the
      // source. It waits (stalled on its next missing page) for an operator's decision.
      const missingPages = this.transfer?.receivers.running?.()?.missingPages;
      this.log.error({ reason, missingPages }, 'post-copy interrupted: the guest here lacks pages and cannot go on');
      this.endReason = `post-copy interrupted with ${missingPages ?? 0} pages missing: ${reason}`;
      return this.finish();
    }
    this.end(reason);
  }

  /** Ends the session; before the commit, the replica and its reservation are discarded. */
  private end(reason: string): void {
    if (this.phase === 'ended') return;
    this.endReason = reason;
    const before = this.phase;
    if (before !== 'committed' && before !== 'activated' && before !== 'postcopy' && this.reservation !== null) {
      this.host.release(this.reservation.id, reason);
      this.log.warn({ reason, phase: before }, 'incoming migration ended before commit: replica discarded');
    }
    this.setPhase('ended');
    this.finish();
  }

  private finish(): void {
    this.openTimer.cancel();
    this.feedback?.close();
    try {
      this.call.end();
    } catch {
      // Already closed.
    }
    this.resolveDone();
  }
}
