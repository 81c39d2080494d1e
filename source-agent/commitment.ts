// Phases 6 and 7 of an outgoing migration, and what follows a lost answer. The commit goes with
// our digest; the target compares it, records its decision and answers. From the moment the
// commit is sent, the guest is resumed here only if the target says it did not commit:
//
//   answer matched      the guest is the target's; its activation's confirmation tells when it
//                       resumed (the downtime); if the confirmation is lost, the job still
//                       completes (the target committed), the downtime asked of the target
//   answer refused      the target dropped its replica: the guest resumes here (a failure)
//   no answer           in doubt: the guest stays suspended here, and the target is asked what it
//                       decided (in-doubt.ts) until it answers or an operator decides
//
// The downtime is what the guest saw: from the suspend here to the resume there, on our clock
// (the target's resume instant converted with the pings' clock offset), however late the news.

import type { Logger } from 'pino';
import type { Clock } from '../shared/clock.js';
import { bounded, CorruptDataError, DeadlineExceededError, InvalidStateError, MESSAGE_CHARS_MAX, type VmMigrateError } from '../shared/errors.js';
import type { MigrationPhase, MigrationStats } from '../shared/stats.js';
import type { SwitchoverDeadlines } from '../shared/switchover.js';
import type { SourceDecisions } from './decisions.js';
import { InDoubt, type Resolution, type ResolveAction, verdictOf } from './in-doubt.js';
import type { MethodContext, TransferMethod } from './methods/method.js';
import type { TargetPeer } from './peer.js';

/** What the commitment needs of its migration. */
export interface CommitmentHost {
  readonly id: string;
  readonly stats: MigrationStats;
  readonly log: Logger;
  readonly clock: Clock;
  readonly peer: TargetPeer;
  readonly method: TransferMethod;
  readonly ctx: MethodContext;
  readonly decisions: SourceDecisions;
  /** When the migration started (Unix ms): an outcome query says it. */
  readonly startedAtMs: number;
  readonly activationTimeoutMs: number;
  deadlines(): SwitchoverDeadlines;
  setPhase(phase: MigrationPhase): void;
  /** Throws the cancellation, if there was one (before the commit is sent). */
  checkCancelled(): void;
  elapsedMs(): number;
  /** The guest is the target's: our copy goes. */
  discardSource(): void;
  /** The guest runs here again. */
  resumeHere(): void;
  /** Tells watchers (a round event, then fresh statistics). */
  announce(message: string): void;
}

export class Commitment {
  /** The commit (or post-copy's machine state) went: the guest may run on the target from here. */
  sent = false;
  /** The target answered matched: the guest is its own. */
  committed = false;
  private inDoubt: InDoubt | null = null;
  private inDoubtSinceMs = 0;
  /** When the message that passes the point of no return went (our clock): the guest was still down then. */
  private sentAtMs = Number.NaN;

  constructor(private readonly host: CommitmentHost) {}

  /** The point of no return, recorded before the message that passes it goes. */
  markSent(): void {
    if (!this.sent) {
      this.host.decisions.commitSent();
      this.sentAtMs = this.host.clock.now();
    }
    this.sent = true;
  }

  /** Phase 6: our digest against the replica's; a refusal means the target dropped its copy. */
  async commit(): Promise<void> {
    const { host } = this;
    const { stats, clock, method, ctx } = host;
    host.setPhase('commitment');
    stats.status = 'committing';
    const digestStartMs = clock.now();
    const digest = method.commitDigest ?? ctx.guest.digest();
    host.log.debug({ digestMs: clock.now() - digestStartMs, sinceSuspendMs: clock.now() - ctx.suspendedAtMs }, 'source digest at commitment');
    stats.sourceDigest = digest;
    host.checkCancelled();
    this.markSent();
    const channel = ctx.channel;
    channel.send({ commit: { digest } });
    // Inside the downtime, the answer has a deadline of its own; post-copy's commit comes after its page push.
    const timeoutMs = method.activatesBeforeCommit ? method.commitTimeoutMs(ctx) : host.deadlines().commitMs;
    await channel.until(() => channel.commitResult !== null, { pastCommit: true, timeoutMs, what: 'commit' }).catch((error: unknown) => {
      if (!(error instanceof DeadlineExceededError)) throw error;
      throw new DeadlineExceededError(`no answer to the commit within ${Math.round(timeoutMs ?? 0)} ms`, { reason: 'SWITCHOVER_DEADLINE_EXCEEDED', metadata: { jobId: host.id } });
    });
    const result = channel.commitResult!;
    stats.targetDigest = result.targetDigest;
    if (!result.matched) {
      // The target refused the commit and discarded its copy (see CommitResult): ours is the only one.
      this.sent = false;
      if (result.refusedReason) {
        throw new InvalidStateError(`the target refused the commit and discarded its replica: ${bounded(result.refusedReason, MESSAGE_CHARS_MAX)}`, { reason: 'TARGET_REFUSED_COMMIT', metadata: { jobId: host.id } });
      }
      throw new CorruptDataError(
        method.activatesBeforeCommit
          ? `post-copy commit refused: the pages the target received hash to ${result.targetDigest}, the source had ${channel.commitDigestSent}`
          : `commit refused: the target's replica digest ${result.targetDigest} differs from the digest sent, ${channel.commitDigestSent}`,
        { reason: 'DIGEST_MISMATCH', metadata: { jobId: host.id, sourceDigest: channel.commitDigestSent, targetDigest: result.targetDigest } },
      );
    }
    this.committed = true;
    stats.totalTimeMs = host.elapsedMs();
  }

  /**
   * Phase 7: the target resumed the guest; its confirmation carries when (downtime) and the hooks'
   * results. The guest is the target's either way: a confirmation that never comes ends the job
   * completed all the same, the downtime then asked of the target.
   */
  async activation(): Promise<void> {
    const { host } = this;
    host.setPhase('activation');
    const channel = host.ctx.channel;
    try {
      await channel.until(() => channel.activated !== null, { pastCommit: true, timeoutMs: host.activationTimeoutMs, what: 'activation' });
    } catch (error) {
      host.log.warn({ err: error instanceof Error ? error.message : String(error) }, "the target committed, but its activation's confirmation was lost; the guest is the target's");
      host.stats.downtimeMs = await this.downtimeAsked();
      host.discardSource();
      return;
    }
    const activated = channel.activated!;
    host.stats.downtimeMs = this.downtimeTo(activated.resumedAtMs ?? 0, activated.resumeToReplyMs, '', activated.commitToResumeMs ?? 0);
    host.log.debug(
      { commitMs: host.clock.now() - host.ctx.suspendedAtMs, resumeToReplyMs: activated.resumeToReplyMs, downtimeMs: host.stats.downtimeMs, clockUncertaintyMs: host.peer.clockOffset.uncertaintyMs },
      'activation timing',
    );
    for (const hook of activated.hooks) if (hook.exitCode !== 0) host.log.warn({ hook: hook.command, exitCode: hook.exitCode, error: hook.error }, 'activation hook failed on the target');
    host.discardSource();
  }

  /**
   * Suspend here to resume there, as the guest saw it: the target's resume instant on our clock
   * (the pings' clock offset), whenever the news arrived. The offset is known only to within half
   * a round trip, so the figure is kept between bounds that need no offset: at least our suspend
   * to the commit's sending plus the target's commit to resume (`commitToResumeMs`), at most the
   * time since the suspend less the target's resume to its message. Without the target's instant
   * (a target that predates it), the upper bound.
   */
  downtimeTo(resumedAtTargetMs: number, resumeToReplyMs = 0, instanceId = '', commitToResumeMs = 0): number {
    const { clock, ctx, peer } = this.host;
    const upperMs = Math.max(0, clock.now() - ctx.suspendedAtMs - resumeToReplyMs);
    const sentMs = Number.isFinite(this.sentAtMs) ? this.sentAtMs - ctx.suspendedAtMs : 0;
    const lowerMs = Math.min(upperMs, Math.max(0, sentMs) + Math.max(0, commitToResumeMs));
    const offset = peer.clockOffset;
    if (!(resumedAtTargetMs > 0 && offset.knownFor(instanceId))) return upperMs;
    return Math.min(upperMs, Math.max(lowerMs, offset.toLocal(resumedAtTargetMs) - ctx.suspendedAtMs));
  }

  /** The downtime when the activation's confirmation was lost: asked of the target once; else all the time since the suspend (an upper bound). */
  private async downtimeAsked(): Promise<number> {
    const { host } = this;
    try {
      const answer = await host.peer.queryOutcome(host.id, host.startedAtMs);
      if (answer.resumedAtMs > 0) return this.downtimeTo(answer.resumedAtMs, 0, answer.agentInstanceId);
    } catch (error) {
      host.log.warn({ err: String(error) }, 'could not ask the target when it resumed the guest');
    }
    host.log.warn('downtime reported as the time since the suspend (an upper bound): the target did not say when it resumed the guest');
    return host.clock.now() - host.ctx.suspendedAtMs;
  }

  /** The job is in doubt now (the commit went, its answer did not come). */
  get doubtful(): boolean {
    return this.inDoubt !== null && this.host.stats.status === 'in-doubt';
  }

  /**
   * The commit went and its answer did not come (or post-copy's hand-over broke): the guest stays
   * suspended here until the target says what it decided, or an operator does (in-doubt.ts).
   */
  async resolveInDoubt(e: VmMigrateError): Promise<void> {
    const { host } = this;
    host.stats.status = 'in-doubt';
    host.stats.error = `commit outcome unknown (${e.message}): the guest is kept suspended here while the target is asked what it decided`;
    host.log.error({ err: e.message, code: host.stats.errorCode, reason: e.reason }, 'migration in doubt: asking the target for its outcome');
    const inDoubt = (this.inDoubt = new InDoubt(host.peer, host.id, host.startedAtMs, host.clock, host.log, host.method.noResumeAfterCommit));
    host.announce('in doubt: the commit was sent and its answer lost; asking the target what it decided');
    this.inDoubtSinceMs = host.clock.now();
    inDoubt.onAnswer = (operatorNeeded) => {
      if (operatorNeeded === null) return;
      // Said in the job, so that an operator sees what to decide (vmmigrate resolve).
      host.stats.errorReason = 'MIGRATION_IN_DOUBT';
      const choices = host.method.noResumeAfterCommit === undefined ? `vmmigrate resolve ${host.id} --resume-here --force, or --discard-here` : `vmmigrate resolve ${host.id} --discard-here (the copy here cannot run again: ${host.method.noResumeAfterCommit})`;
      host.stats.error = `${operatorNeeded}; an operator decides: ${choices}`;
    };
    const resolution = await inDoubt.resolve();
    this.refreshDoubt(host.stats);
    this.apply(resolution, e);
  }

  /** While in doubt: its duration and the queries so far, in the job's statistics. */
  refreshDoubt(stats: MigrationStats): void {
    if (this.inDoubt === null) return;
    stats.outcomeQueries = this.inDoubt.queries;
    if (stats.status === 'in-doubt') stats.inDoubtMs = this.host.clock.now() - this.inDoubtSinceMs;
  }

  /** An operator's action on the in-doubt job (ResolveJob). */
  act(action: ResolveAction, force: boolean): void {
    const { stats, id } = this.host;
    if (this.inDoubt === null || !this.doubtful) {
      throw new InvalidStateError(`job ${id} is not in doubt (${stats.status}); only a job whose commit outcome is unknown is resolved`, { reason: 'PROTOCOL_VIOLATION', metadata: { jobId: id, status: stats.status } });
    }
    this.inDoubt.act(action, force);
  }

  /** The agent stops: an in-doubt job stops asking, its guest left suspended here. */
  abandon(reason: string): void {
    this.inDoubt?.abandon(reason);
  }

  private apply(resolution: Resolution, e: VmMigrateError): void {
    const { host } = this;
    const { stats } = host;
    const verdict = verdictOf(resolution, e.message, host.method.noResumeAfterCommit);
    if (verdict.action === 'discard') {
      if (resolution.kind === 'committed') stats.downtimeMs = this.downtimeTo(resolution.resumedAtMs, 0, resolution.agentInstanceId);
      host.discardSource();
      this.committed = true;
    } else if (verdict.action === 'resume') {
      host.resumeHere();
    }
    stats.status = verdict.status;
    stats.error = verdict.error;
    if (verdict.errorReason !== undefined) stats.errorReason = verdict.errorReason;
    if (verdict.status === 'completed' && verdict.errorReason === '') stats.errorCode = '';
    const fields = { downtimeMs: stats.downtimeMs, inDoubtMs: stats.inDoubtMs, queries: stats.outcomeQueries };
    if (verdict.status === 'completed') host.log.info(fields, `in-doubt migration resolved: ${verdict.summary}`);
    else host.log.warn({ ...fields, err: verdict.error }, `in-doubt migration resolved: ${verdict.summary}`);
  }
}
