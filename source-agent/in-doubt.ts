// A migration in doubt: the commit was sent and its answer lost (the stream broke, the target
// went silent past the commitment's deadline, or the activation's confirmation never came). The
// guest stays suspended here: it may run on the target already. We ask the target what it decided
// (Migration.QueryOutcome, idempotent; a migration it had not committed is fenced by the question)
// with backoff until it answers, and an operator may step in (vmmigrate resolve): ask again now,
// or decide by hand, which is refused while the target may have decided otherwise, unless forced.

import type { Logger } from 'pino';
import type { Clock } from '../shared/clock.js';
import { bounded, type ErrorReason, InvalidStateError, MESSAGE_CHARS_MAX, VmMigrateError } from '../shared/errors.js';
import type { MigrationStatus } from '../shared/stats.js';
import { pb } from '../shared/transport/grpc.js';
import type { OutcomeResponse, TargetPeer } from './peer.js';

const { Outcome } = pb.OutcomeResponse;

/** Between outcome queries: from the first to the longest, doubling. */
export const OUTCOME_BACKOFF = { firstMs: 200, maxMs: 5_000 } as const;
/** Deadline of one outcome query: short, so that one stuck on a dead or stalled connection does not hold the next. */
const QUERY_TIMEOUT_MS = 3_000;

/** How an in-doubt migration ended, and who said so. */
export type Resolution =
  /** The target committed: the guest is its own (post-copy: it may still lack pages we hold). */
  | { kind: 'committed'; by: 'target' | 'operator'; resumedAtMs: number; agentInstanceId: string; missingPages: number; detail: string }
  /** The target never committed (or, forced, the operator says resume): the guest may resume here. */
  | { kind: 'not-committed'; by: 'target' | 'operator'; detail: string }
  /** The agent is stopping: nothing was decided here. */
  | { kind: 'abandoned'; detail: string };

export type ResolveAction = 'query' | 'resume-here' | 'discard-here';

export class InDoubt {
  /** Outcome queries sent so far. */
  queries = 0;
  /** The target's last answer, if any. */
  lastAnswer: OutcomeResponse | null = null;
  /** Why the last query failed, if it did. */
  lastError = '';
  /** Told of every answer: what makes it a matter for an operator (the target cannot tell, or lost the guest), or null. */
  onAnswer: ((operatorNeeded: string | null) => void) | null = null;
  private readonly stop = new AbortController();
  private wake: (() => void) | null = null;
  private operator: ((resolution: Resolution) => void) | null = null;

  constructor(
    private readonly peer: TargetPeer,
    private readonly migrationId: string,
    private readonly startedAtUnixMs: number,
    private readonly clock: Clock,
    private readonly log: Logger,
    /** Why the copy here cannot run again (the method's noResumeAfterCommit): resume-here is refused, forced or not. */
    private readonly noResume?: string,
  ) {}

  /** Until the target answers for certain, an operator decides, or the agent stops. */
  resolve(): Promise<Resolution> {
    const byOperator = new Promise<Resolution>((resolve) => (this.operator = resolve));
    return Promise.race([this.ask(), byOperator]).finally(() => {
      this.stop.abort();
      this.wake?.();
    });
  }

  /** An operator's action (ResolveJob). Throws when the known outcome forbids it and it is not forced. */
  act(action: ResolveAction, force: boolean): void {
    if (action === 'query') {
      this.wake?.();
      return;
    }
    if (action === 'resume-here' && this.noResume !== undefined) {
      throw new InvalidStateError(`migration ${this.migrationId} is in doubt, and the guest cannot resume here: ${this.noResume}. Ask again (action query), or discard the copy here`, {
        reason: 'MIGRATION_IN_DOUBT',
        metadata: { jobId: this.migrationId, action },
      });
    }
    const answer = this.lastAnswer;
    const lost = answer?.outcome === Outcome.COMMITTED;
    const unknown = lost ? `the target committed but lost the guest (${answer!.detail}); the copy here, suspended at the switchover, is the only one left` : answer?.outcome === Outcome.UNKNOWN ? `the target cannot tell (${answer.detail})` : `the target has not answered yet${this.lastError ? ` (${this.lastError})` : ''}`;
    // The target committed: dropping the copy here is what it said; resuming it runs the copy of the switchover again.
    if (lost && action === 'discard-here') force = true;
    if (!force) {
      const risk = action === 'resume-here' ? 'resuming here could leave the guest running twice, if the target committed' : 'dropping the copy here could leave the guest running nowhere, if the target did not commit';
      throw new InvalidStateError(`migration ${this.migrationId} is in doubt: ${unknown}; ${risk}. Ask again (action query), or force it`, {
        reason: 'MIGRATION_IN_DOUBT',
        metadata: { jobId: this.migrationId, action },
      });
    }
    const detail = `forced by an operator while in doubt (${unknown})`;
    this.log.warn({ action, detail }, 'in-doubt migration resolved by an operator');
    this.operator?.(action === 'resume-here' ? { kind: 'not-committed', by: 'operator', detail } : { kind: 'committed', by: 'operator', resumedAtMs: 0, agentInstanceId: '', missingPages: 0, detail });
  }

  /** The agent stops: the wait ends, nothing decided. */
  abandon(reason: string): void {
    this.operator?.({ kind: 'abandoned', detail: reason });
  }

  private async ask(): Promise<Resolution> {
    let backoffMs: number = OUTCOME_BACKOFF.firstMs;
    while (!this.stop.signal.aborted) {
      const resolution = await this.askOnce();
      if (resolution !== null) return resolution;
      await this.pause(backoffMs);
      backoffMs = Math.min(OUTCOME_BACKOFF.maxMs, backoffMs * 2);
    }
    return { kind: 'abandoned', detail: 'stopped' };
  }

  /** One query: a resolution when the answer is certain, null to ask again (UNKNOWN waits for an operator, asked slowly). */
  private async askOnce(): Promise<Resolution | null> {
    this.queries++;
    try {
      const answer = await this.peer.queryOutcome(this.migrationId, this.startedAtUnixMs, QUERY_TIMEOUT_MS);
      this.lastAnswer = answer;
      this.lastError = '';
      const detail = bounded(answer.detail ?? '', MESSAGE_CHARS_MAX);
      this.log.info({ outcome: Outcome[answer.outcome] ?? answer.outcome, detail, queries: this.queries }, 'outcome of the in-doubt migration');
      const lost = answer.outcome === Outcome.COMMITTED && answer.guestPresent !== true && (answer.missingPages ?? 0) === 0;
      this.onAnswer?.(lost ? `the target committed but lost the guest (${detail}): the copy here, suspended at the switchover, is the only one left` : answer.outcome === Outcome.UNKNOWN ? `the target cannot tell (${detail})` : null);
      // Committed, and the guest lost there since: our copy is the last one. Kept for an operator.
      if (answer.outcome === Outcome.COMMITTED && answer.guestPresent !== true && (answer.missingPages ?? 0) === 0) return null;
      if (answer.outcome === Outcome.COMMITTED) {
        return { kind: 'committed', by: 'target', resumedAtMs: answer.resumedAtMs ?? 0, agentInstanceId: answer.agentInstanceId ?? '', missingPages: answer.missingPages ?? 0, detail };
      }
      if (answer.outcome === Outcome.NOT_COMMITTED) return { kind: 'not-committed', by: 'target', detail };
      return null;
    } catch (error) {
      this.lastError = bounded(error instanceof VmMigrateError || error instanceof Error ? error.message : String(error), MESSAGE_CHARS_MAX);
      this.log.warn({ err: this.lastError, queries: this.queries }, 'outcome query failed; asking again');
      // A query that timed out may be stuck on a stalled connection: the next one goes on a new one.
      if (error instanceof VmMigrateError && error.code === 'DEADLINE_EXCEEDED') this.peer.redial();
      return null;
    }
  }

  /** Sleeps `ms`, or less when an operator asks to query now or the wait ends. */
  private async pause(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = this.clock.timeout(ms, () => resolve());
      this.wake = () => {
        timer.cancel();
        resolve();
      };
    });
    this.wake = null;
  }
}

/** What a resolution means for the job: what to do with the copy here, and how the job ends. */
export interface Verdict {
  /** discard: the guest is the target's; resume: it runs here again; keep: left suspended here. */
  action: 'discard' | 'resume' | 'keep';
  status: MigrationStatus;
  error: string;
  /** undefined: the reason the job had stays; '' clears it. */
  errorReason: ErrorReason | '' | undefined;
  /** For the log line. */
  summary: string;
}

/**
 * The job's end after `resolution` of a doubt that `cause` (the lost answer's error) began;
 * `noResume` says why the copy here cannot run again, if it cannot (the method's noResumeAfterCommit).
 */
export function verdictOf(resolution: Resolution, cause: string, noResume?: string): Verdict {
  if (resolution.kind === 'abandoned') {
    const error = `still in doubt when the agent stopped (${resolution.detail}): the guest was left suspended here; the target's outcome decides (${cause})`;
    return { action: 'keep', status: 'failed', error, errorReason: 'MIGRATION_IN_DOUBT', summary: 'abandoned' };
  }
  const by = resolution.by === 'operator' ? 'an operator (forced)' : 'the target';
  if (resolution.kind === 'not-committed' && noResume !== undefined) {
    // The target did not commit, and the copy here cannot run again: say so, never "resumed".
    const error = `the commit's answer was lost (${cause}), and ${by} says the target did not commit (${resolution.detail}); the guest cannot resume here either (${noResume}): it runs nowhere`;
    return { action: 'keep', status: 'failed', error, errorReason: 'MIGRATION_IN_DOUBT', summary: 'not committed, and the copy here cannot run: the guest is lost' };
  }
  if (resolution.kind === 'not-committed') {
    const error = `the commit's answer was lost (${cause}), and ${by} says the target did not commit (${resolution.detail}): the guest resumed on the source`;
    return { action: 'resume', status: 'failed', error, errorReason: undefined, summary: 'not committed; the guest resumed here' };
  }
  if (resolution.missingPages > 0) {
    // Post-copy: the guest runs there and still needs pages only this copy has.
    const error = `post-copy interrupted (${cause}): the guest runs on the target and lacks ${resolution.missingPages} pages; the source keeps its suspended copy, which holds them`;
    return { action: 'keep', status: 'failed', error, errorReason: undefined, summary: 'committed with pages missing; the copy here is kept' };
  }
  if (resolution.by === 'operator') {
    const error = `completed by ${by}: the copy here was dropped without the target's word (${resolution.detail})`;
    return { action: 'discard', status: 'completed', error, errorReason: 'MIGRATION_IN_DOUBT', summary: 'dropped here by an operator' };
  }
  return { action: 'discard', status: 'completed', error: '', errorReason: '', summary: 'committed on the target; migration completed' };
}
