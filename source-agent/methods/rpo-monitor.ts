// A protection's lag while the log streams without end: the units the guest recorded that the
// standby has not received (or replayed) yet, in units and in guest time, sampled at every
// monitor tick; past the recovery point objective, or past the bound on the replay lag, the guest
// is slowed (shared/rpo.ts).
//
// While the link to the standby is down (the channel resumes its stream), slowing the guest would
// not bring the standby closer: the guest runs at full speed and its log is kept, within the
// guest's log buffer, for the resume. Once the buffer is full (the guest stalled on it), the
// protection gives the stream up rather than stall the guest: it resyncs when the standby is back,
// sending only the pages that differ from the standby's (target-agent/base-image.ts).

import { UnavailableError } from '../../shared/errors.js';
import { rpoThrottle } from '../../shared/rpo.js';
import type { MethodContext } from './method.js';

export class RpoMonitor {
  /** The guest's stall time when the link went down (null: the link is up). */
  private stallAtLinkDownMs: number | null = null;
  /** The gate was opened for the link loss (policy `release`): held again once the link is back. */
  private releasedForLinkLoss = false;

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
    if (ctx.channel.linkDown === true) return this.whileLinkDown();
    if (this.stallAtLinkDownMs !== null) this.linkBack();
    this.stallAtLinkDownMs = null;
    const lag = { receivedMs: s.lagUnitsReceived * s.unitMs, replayedMs: s.lagUnitsReplayed * s.unitMs };
    const decision = rpoThrottle(lag, protection, s.throttle);
    if (decision.throttle === s.throttle) return;
    ctx.guest.setThrottle(decision.throttle);
    s.throttle = decision.throttle;
    ctx.log.warn({ throttle: decision.throttle, lagUnits: s.lagUnitsReceived }, decision.reason);
    ctx.round(decision.reason);
  }

  private whileLinkDown(): void {
    const { ctx } = this;
    const s = ctx.stats;
    const recording = ctx.guest.recorder?.recordingStats();
    const stallMs = recording?.stallMs ?? 0;
    if (this.stallAtLinkDownMs === null) {
      this.stallAtLinkDownMs = stallMs;
      const reason = 'the standby is unreachable: its log is kept for the resume, within the log buffer';
      if (s.throttle < 1) {
        ctx.guest.setThrottle(1);
        s.throttle = 1;
      }
      ctx.log.warn({ lagUnits: s.lagUnitsReceived }, reason);
      ctx.round(reason);
      this.releaseOnLinkLoss();
      return;
    }
    // The buffer is full: the guest stalls (or stalled since) on it.
    if (recording?.queueFull !== true && stallMs <= this.stallAtLinkDownMs) return;
    const message = `the standby has been unreachable longer than the guest's log buffer holds (${s.lagUnitsReceived} units): the protection resyncs when it is back, sending only the pages that differ`;
    ctx.channel.fail(new UnavailableError(message, { reason: 'PEER_UNAVAILABLE' }));
  }

  /** Sync mode, policy `release`: outputs go at once while the link is down (async), and are held again once it is back. */
  private releaseOnLinkLoss(): void {
    const { ctx } = this;
    const output = ctx.guest.output;
    const protection = ctx.request.protection;
    if (protection?.mode !== 'sync' || protection.onLinkLoss !== 'release' || output === undefined || !output.holding) return;
    const held = output.heldCount;
    output.openGate();
    this.releasedForLinkLoss = true;
    const reason = `the standby is unreachable: sync falls back to async until it is back (${held} held outputs released)`;
    ctx.log.error({ held }, reason);
    ctx.round(reason);
  }

  private linkBack(): void {
    const output = this.ctx.guest.output;
    if (!this.releasedForLinkLoss || output === undefined) return;
    this.releasedForLinkLoss = false;
    output.hold();
    this.ctx.log.warn('the standby is reachable again: outputs are held for it again (sync)');
    this.ctx.round('the standby is reachable again: sync again');
  }
}
