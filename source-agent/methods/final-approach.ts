// CR/TR's final approach on the source (shared/approach.ts): when the stop would cost the replay
// of a backlog that no waiting shrinks, the guest is slowed for a bounded time first, so that the
// replica drains to the units in flight and the stop costs about one unit's replay. Two ways in:
// - the target asks to stop and the source would agree, but more units wait than a steady log
//   has (the stop request's answer waits for the approach);
// - the `force` policy would stop a guest whose backlog does not shrink (the approach comes first;
//   the stop is forced when it runs out).
// Once per migration. Off with the request's noFinalApproach, and where the guest cannot be
// throttled. A migration that fails resumes its guest unthrottled (migration.ts resumeHere).

import { planApproach } from '../../shared/approach.js';
import { stopUnitsFloor } from '../../shared/convergence.js';
import type { MethodContext } from './method.js';

export type ApproachTrigger = 'stop request' | 'non-convergence';

export class FinalApproach {
  private startedAtMs: number | null = null;
  private boundMs = 0;
  private settleMs = 0;
  private throttleBefore = 1;
  /** What started it (null: not started). */
  trigger: ApproachTrigger | null = null;
  /** An approach was considered: whatever the answer, never again. */
  private considered = false;
  /** It ran out and the guest was given its speed back. */
  private ended = false;

  constructor(
    private readonly ctx: MethodContext,
    /** Units recorded and not yet replayed, in flight included. */
    private readonly backlogUnits: () => number,
  ) {}

  /** The approach runs now (started, not run out). */
  get active(): boolean {
    return this.startedAtMs !== null && !this.ended && !this.expired;
  }

  /** It ran long enough for the units in flight to be throttled ones. */
  get settled(): boolean {
    return this.startedAtMs !== null && this.ctx.clock.now() - this.startedAtMs >= this.settleMs;
  }

  /** It started and ran past its bound. */
  get expired(): boolean {
    return this.startedAtMs !== null && this.ctx.clock.now() - this.startedAtMs >= this.boundMs;
  }

  /** Starts the approach if it pays (once per migration); true when the guest was slowed. */
  begin(trigger: ApproachTrigger): boolean {
    const { ctx } = this;
    if (this.considered || ctx.request.noFinalApproach === true) return false;
    this.considered = true;
    const plan = planApproach({
      backlogUnits: this.backlogUnits(),
      floorUnits: stopUnitsFloor(ctx.channel.rttMs, ctx.stats.unitMs),
      unitMs: ctx.stats.unitMs,
      replayRate: ctx.stats.replayRate,
      throttle: ctx.stats.throttle,
    });
    if (!plan.approach) {
      ctx.log.debug({ reason: plan.reason }, 'no final approach');
      return false;
    }
    try {
      ctx.guest.setThrottle(plan.throttle);
    } catch (error) {
      ctx.log.info({ err: error }, 'no final approach: the guest cannot be throttled');
      return false;
    }
    this.throttleBefore = ctx.stats.throttle;
    ctx.stats.throttle = plan.throttle;
    this.startedAtMs = ctx.clock.now();
    this.boundMs = plan.boundMs;
    this.settleMs = plan.settleMs;
    this.trigger = trigger;
    ctx.round(`final approach (${trigger}): ${plan.reason}`);
    ctx.log.info({ trigger, throttle: plan.throttle, predictedMs: Math.round(plan.predictedMs), boundMs: Math.round(plan.boundMs) }, 'final approach: guest slowed before the stop');
    return true;
  }

  /**
   * An approach that ran out without the stop: the guest gets its speed back (the next stop
   * request is answered as without an approach). Returns true the once it ended it.
   */
  endIfExpired(): boolean {
    if (this.ended || !this.expired) return false;
    this.ended = true;
    const { ctx } = this;
    ctx.guest.setThrottle(this.throttleBefore);
    ctx.stats.throttle = this.throttleBefore;
    ctx.round(`final approach ran out after ${Math.round(this.boundMs)} ms with ${this.backlogUnits()} units not replayed`);
    return true;
  }
}
