// CR/TR's non-convergence policy while the log streams: samples the target's backlog at every
// monitor tick, judges whether it shrinks over the convergence window (shared/convergence.ts),
// and applies the policy: abort, force the stop-and-copy, or throttle the guest. The maximum
// duration applies here too, including while the checkpoint still streams. Under `force`, CR/TR's
// final approach (final-approach.ts) comes first: the stop is forced when it runs out.

import { type BacklogSample, judgeConvergence, nextThrottle, nonConvergenceAction } from '../../shared/convergence.js';
import { DeadlineExceededError } from '../../shared/errors.js';
import type { FinalApproach } from './final-approach.js';
import type { MethodContext } from './method.js';

/** Backlog samples kept: at the default 250 ms tick, 50 s of history. */
const BACKLOG_SAMPLES_MAX = 200;

export class ConvergenceMonitor {
  private readonly backlog: BacklogSample[] = [];
  /** The policy forced the stop-and-copy. */
  forced = false;

  constructor(
    private readonly ctx: MethodContext,
    /** When the judging starts (the migration's elapsed ms); null: not yet (a protection before its switchover). */
    private readonly fromMs: () => number | null = () => 0,
    private readonly approach: FinalApproach | null = null,
  ) {}

  /** One tick; `settled`: the stop-and-copy was already agreed or forced (nothing to judge). */
  tick(settled: boolean): void {
    const { ctx } = this;
    const fromMs = this.fromMs();
    if (fromMs === null) return;
    const elapsedMs = ctx.elapsedMs() - fromMs;
    const phase = ctx.stats.phase;
    if (phase === 'checkpoint' && elapsedMs >= ctx.request.maxDurationMs) {
      ctx.channel.fail(
        new DeadlineExceededError(`migration ran ${elapsedMs.toFixed(0)} ms, its maximum is ${ctx.request.maxDurationMs} ms (still in the checkpoint phase)`, {
          reason: 'MAX_DURATION_EXCEEDED',
          metadata: { maxDurationMs: ctx.request.maxDurationMs, elapsedMs: elapsedMs.toFixed(0), phase },
        }),
      );
      return;
    }
    if (phase !== 'log-transfer' || settled) return;
    if (this.approach?.expired === true) {
      if (this.approach.trigger === 'non-convergence') {
        const why = `the final approach ran out with ${ctx.stats.remainingUnits} units to replay`;
        ctx.round(`stop-and-copy forced: ${why}`);
        this.force(why);
        return;
      }
      this.approach.endIfExpired();
    }
    // The backlog's trend means something only once the target replays: before its first
    // replayed unit the backlog grows by construction.
    if (ctx.channel.progress.unitsReplayed === 0 && elapsedMs < ctx.request.maxDurationMs) return;
    this.backlog.push({ atMs: elapsedMs, backlogUnits: ctx.stats.remainingUnits });
    if (this.backlog.length > BACKLOG_SAMPLES_MAX) this.backlog.shift();
    this.apply(elapsedMs);
    ctx.channel.notify();
  }

  private apply(elapsedMs: number): void {
    const { ctx } = this;
    const verdict = judgeConvergence(this.backlog, ctx.timings.convergenceWindowMs, ctx.channel.progress.remainingUnitsAllowed || 1);
    const throttle = ctx.stats.throttle;
    const decision = nonConvergenceAction(ctx.request.policy, verdict, elapsedMs, ctx.request.maxDurationMs, throttle);
    switch (decision.action) {
      case 'abort':
        ctx.channel.fail(
          new DeadlineExceededError(decision.reason, {
            reason: decision.trigger === 'max-duration' ? 'MAX_DURATION_EXCEEDED' : 'NON_CONVERGENCE',
            metadata: { policy: ctx.request.policy, maxDurationMs: ctx.request.maxDurationMs, elapsedMs: elapsedMs.toFixed(0), remainingUnits: ctx.stats.remainingUnits },
          }),
        );
        break;
      case 'force':
        // The approach's drain is a trend of its own: judged afresh from its start.
        if (this.approach?.begin('non-convergence') === true) this.backlog.length = 0;
        else this.force(decision.reason);
        break;
      case 'throttle': {
        const next = nextThrottle(throttle);
        ctx.guest.setThrottle(next);
        ctx.stats.throttle = next;
        this.backlog.length = 0;
        ctx.log.warn({ throttle: next, reason: decision.reason }, 'throttling the guest to converge');
        break;
      }
      case 'continue':
        break;
    }
  }

  private force(reason: string): void {
    this.forced = true;
    this.ctx.stats.forced = true;
    this.ctx.log.warn({ reason }, 'forcing stop-and-copy');
  }
}
