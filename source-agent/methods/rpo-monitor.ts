// A protection's lag while the log streams without end: the units the guest recorded that the
// standby has not received (or replayed) yet, in units and in guest time, sampled at every
// monitor tick; past the recovery point objective the guest is slowed (shared/rpo.ts).

import { rpoThrottle } from '../../shared/rpo.js';
import type { MethodContext } from './method.js';

export class RpoMonitor {
  constructor(
    private readonly ctx: MethodContext,
    /** Units recorded and superseded here (never sent): not lag. */
    private readonly unitsRecordedToSend: () => number,
  ) {}

  /** Refreshes the lag figures and applies the objective. */
  tick(): void {
    const { ctx } = this;
    const protection = ctx.request.protection;
    if (protection === undefined) return;
    const s = ctx.stats;
    const recorded = this.unitsRecordedToSend();
    const progress = ctx.channel.progress;
    s.lagUnitsReceived = Math.max(0, recorded - progress.unitsReceived);
    s.lagUnitsReplayed = Math.max(0, recorded - progress.unitsReplayed);
    // Before the checkpoint is restored nothing replays: the lag then is the checkpoint's, not the log's.
    if (s.phase !== 'log-transfer') return;
    const decision = rpoThrottle(s.lagUnitsReceived * s.unitMs, protection.rpoMsMax, s.throttle);
    if (decision.throttle === s.throttle) return;
    ctx.guest.setThrottle(decision.throttle);
    s.throttle = decision.throttle;
    ctx.log.warn({ throttle: decision.throttle, lagUnits: s.lagUnitsReceived }, decision.reason);
    ctx.round(decision.reason);
  }
}
