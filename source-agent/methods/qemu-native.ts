// qemu-native: the hypervisor's own migration stream (QEMU's), relayed by the agents. The guest's
// QEMU migrates into a private unix socket of this agent (native-relay.ts), whose bytes go to the
// target agent on a NativeStream beside the transfer's Transfer stream; the target agent feeds its
// QEMU, started with `-incoming defer -S` at the reservation. The Transfer stream carries what it
// carries for every method: Open, the target's progress, the commit and the activation.
//
// Pre-copy (QEMU's iterative passes, under the request's downtime limit and bandwidth; the
// throttle policy is QEMU's auto-converge): catch-up lasts until QEMU stops the guest for its
// switchover; finish waits for the stream's end and the target QEMU's `completed` (it holds the
// guest, -S). The commit compares the hash of the stream as written here with the hash of what
// the target's QEMU was given; the target then runs the guest (activation, hooks).
//
// Post-copy (nativePostcopy): catch-up lasts until the stream runs and then QEMU acted on
// migrate-start-postcopy, the point of no return: it stopped the guest here and sent its device
// state. The target
// runs the guest as soon as its QEMU has it (activation), QEMU sends the rest (page push, pages on
// demand first), and the commit comes once the stream completed on both ends. In both, QEMU stops
// the guest itself: the lifecycle's suspend only marks the downtime's start.
//
// Any failure before the commitment point ends QEMU's migration (migrate_cancel; resumed if QEMU
// had stopped the guest): the guest runs here only. QEMU's figures become the job's (qemu-native-stats.ts).

import type { Timer } from '../../shared/clock.js';
import type { BacklogSample } from '../../shared/convergence.js';
import type { NativeMigrationInfo, NativeStreamSource } from '../../shared/driver/native-types.js';
import { DeadlineExceededError, InvalidStateError, UnimplementedError, type VmMigrateError } from '../../shared/errors.js';
import type { MigrationPhase } from '../../shared/stats.js';
import type { NativeRelay } from '../native-relay.js';
import type { MethodContext, TransferMethod } from './method.js';
import { POSTCOPY_PHASES } from './postcopy.js';
import { PRECOPY_PHASES } from './precopy.js';
import { applyNativeInfo, nativeConvergence, PASS_SAMPLES_MAX, passMessage } from './qemu-native-stats.js';

/** How long the target may take to make its QEMU listen. */
const READY_TIMEOUT_MS = 30_000;
/** QEMU stopped the guest for its pre-copy switchover, or finished. */
const SWITCHING = new Set(['device', 'pre-switchover', 'completed']);
/** QEMU gave the migration up. */
const GIVEN_UP = new Set(['failed', 'cancelled']);

function nativeOf(ctx: MethodContext): NativeStreamSource {
  const native = ctx.guest.nativeStream;
  if (native === undefined) throw new UnimplementedError(`guest '${ctx.guest.id}' has no native-stream capability`, { reason: 'CAPABILITY_MISSING', metadata: { capability: 'native-stream', side: 'source', guestId: ctx.guest.id } });
  return native;
}

export class QemuNativeMethod implements TransferMethod {
  readonly name = 'qemu-native' as const;
  readonly needs = { source: ['native-stream'], target: ['native-stream'] } as const;
  readonly phases: readonly MigrationPhase[];
  readonly activatesBeforeCommit: boolean;
  /** QEMU stops the guest for its switchover: pre-copy's last pass, or migrate-start-postcopy. */
  readonly hypervisorStopsGuest = true;
  commitDigest: string | undefined = undefined;
  private relay: NativeRelay | null = null;
  /** QEMU's status, as its MIGRATION events say it. */
  private status = '';
  private info: NativeMigrationInfo | null = null;
  private stopListening: (() => void) | null = null;
  /** QEMU stopped the guest for its switchover. */
  private guestStopped = false;
  private ticker: Timer | null = null;
  private polling = false;
  private readonly passes: BacklogSample[] = [];
  private forced = false;
  /** QEMU was told to migrate: a failure must end its migration. */
  private started = false;
  readonly noResumeAfterCommit?: string;

  constructor(readonly postcopy: boolean) {
    this.phases = postcopy ? POSTCOPY_PHASES : PRECOPY_PHASES;
    this.activatesBeforeCommit = postcopy;
    if (postcopy) this.noResumeAfterCommit = "QEMU's post-copy has switched: the source QEMU sent its devices and cannot run the guest again (it refuses 'cont' and cannot cancel), so the guest runs on the target or nowhere";
  }

  async catchUp(ctx: MethodContext): Promise<void> {
    const native = nativeOf(ctx);
    ctx.setPhase(this.postcopy ? 'stop-and-copy' : 'checkpoint');
    ctx.stats.nativePostcopy = this.postcopy;
    ctx.open();
    await ctx.channel.until(() => ctx.channel.acknowledged);
    const { request } = ctx;
    await this.settle(ctx, native.configure({ downtimeLimitMs: request.downtimeLimitMs, maxBandwidthBytesPerSec: request.maxBandwidthBytesPerSec, autoConverge: request.policy === 'throttle', postcopy: this.postcopy }));
    const stopStatus = native.onStatus((status) => this.onStatus(ctx, native, status));
    const stopStop = native.onGuestStop(() => {
      this.guestStopped = true;
      ctx.channel.notify();
    });
    this.stopListening = () => {
      stopStatus();
      stopStop();
    };
    const relay = (this.relay = ctx.openNativeRelay(this.postcopy));
    relay.onChange(() => {
      if (relay.error !== null) ctx.channel.fail(relay.error);
      ctx.channel.notify();
    });
    relay.expectReadyWithin(READY_TIMEOUT_MS);
    await ctx.channel.until(() => relay.ready);
    this.started = true;
    await this.settle(ctx, native.start(relay.endpoint));
    this.ticker = ctx.clock.interval(ctx.timings.monitorIntervalMs, () => this.tick(ctx, native));
    if (this.postcopy) return this.switchToPostcopy(ctx, native);
    // QEMU stops the guest, then sends what is left: the downtime starts at its STOP.
    await this.untilStatus(ctx, (s) => this.guestStopped || SWITCHING.has(s));
    ctx.log.info({ status: this.status, rounds: ctx.stats.rounds, forced: this.forced }, 'qemu-native: QEMU stopped the guest for its switchover');
  }

  async finish(ctx: MethodContext): Promise<void> {
    if (this.postcopy) return this.finishPostcopy(ctx, nativeOf(ctx));
    const { channel } = ctx;
    await this.untilStatus(ctx, (s) => s === 'completed');
    // The target's QEMU loaded the whole stream and holds the guest.
    await channel.until(() => channel.progress.finalReplayed);
    this.takeDigest(ctx);
    this.refreshInfo(ctx, nativeOf(ctx));
  }

  /**
   * Post-copy's switch, once the stream runs: QEMU stops the guest when it acts on
   * migrate-start-postcopy (at the end of its current pass's slice, up to 50 ms later), so catch-up
   * ends when it did, and the lifecycle's suspend marks the downtime's start there.
   */
  private async switchToPostcopy(ctx: MethodContext, native: NativeStreamSource): Promise<void> {
    await this.untilStatus(ctx, (s) => s === 'active');
    await ctx.channel.until(() => true); // a cancellation or a failed stream still stops us here
    ctx.markPointOfNoReturn(); // from here the guest's memory is split between the hosts
    // A stream that completed before the switch (a small, quiet guest) needs none: the target runs the guest all the same.
    await native.startPostcopy().catch(async (error: unknown) => {
      if ((await native.info()).status !== 'completed') throw error;
    });
    await this.untilStatus(ctx, (s) => this.guestStopped || s === 'postcopy-active' || s === 'completed', true);
  }

  private async finishPostcopy(ctx: MethodContext, native: NativeStreamSource): Promise<void> {
    const { channel, stats } = ctx;
    ctx.setPhase('activation');
    await channel.until(() => channel.activated !== null, { pastCommit: true, timeoutMs: ctx.timings.activationTimeoutMs, what: 'activation' });
    const { resumeToReplyMs, resumedAtMs } = channel.activated!;
    stats.downtimeMs = ctx.downtimeTo(resumedAtMs ?? 0, resumeToReplyMs);
    ctx.setPhase('page-push');
    await this.untilStatus(ctx, (s) => s === 'completed', true);
    await channel.until(() => channel.progress.finalReplayed, { pastCommit: true });
    this.takeDigest(ctx);
    this.refreshInfo(ctx, native);
  }

  commitTimeoutMs(ctx: MethodContext): number | undefined {
    return this.postcopy ? ctx.timings.activationTimeoutMs : undefined;
  }

  refreshStats(ctx: MethodContext): void {
    if (this.info !== null) applyNativeInfo(ctx.stats, this.info);
    ctx.stats.forced = this.forced;
    if (this.postcopy) ctx.stats.expectedDowntimeMs = ctx.stats.rttMs;
  }

  /** A failure before the commitment point: QEMU ends its migration, and the guest runs here. */
  cleanUp(ctx: MethodContext): void {
    const native = ctx.guest.nativeStream;
    if (native !== undefined && this.started) native.cancel().catch((error: unknown) => ctx.log.error({ err: String(error) }, 'qemu-native: could not cancel QEMU\'s migration'));
    this.dispose();
  }

  dispose(): void {
    this.ticker?.cancel();
    this.ticker = null;
    this.stopListening?.();
    this.stopListening = null;
    this.relay?.close();
  }

  private takeDigest(ctx: MethodContext): void {
    this.commitDigest = this.relay!.digest();
    ctx.stats.sourceDigest = this.commitDigest;
  }

  /** Waits for QEMU's status to pass `accept`, failing early as every wait does. */
  private untilStatus(ctx: MethodContext, accept: (status: string) => boolean, pastCommit = false): Promise<void> {
    return ctx.channel.until(() => accept(this.status), { pastCommit });
  }

  /** Awaits `work` (a QMP call), failing early as every wait does. */
  private async settle(ctx: MethodContext, work: Promise<void>): Promise<void> {
    let done = false;
    let failure: unknown = null;
    work.then(
      () => (done = true),
      (error: unknown) => (failure = error ?? new Error('failed')),
    ).finally(() => ctx.channel.notify());
    await ctx.channel.until(() => {
      if (failure !== null) throw failure;
      return done;
    });
  }

  private onStatus(ctx: MethodContext, native: NativeStreamSource, status: string): void {
    this.status = status;
    ctx.stats.nativeStatus = status;
    // Completed: nothing is left, whatever the last figures said.
    if (this.info !== null) this.info = { ...this.info, status, remainingBytes: status === 'completed' ? 0 : this.info.remainingBytes };
    ctx.channel.notify();
    // The figures follow each change of status, not only the monitor's tick.
    if (!GIVEN_UP.has(status)) return this.refreshInfo(ctx, native);
    // QEMU gave up: the relay's error says why when the stream broke; else QEMU's own words.
    void native.info().then(
      (info) => ctx.channel.fail(this.givenUp(status, info.error)),
      () => ctx.channel.fail(this.givenUp(status, '')),
    );
  }

  private givenUp(status: string, error: string): VmMigrateError {
    if (this.relay?.error) return this.relay.error;
    return new InvalidStateError(`QEMU's migration ${status}${error ? `: ${error}` : ''}`, { reason: 'HYPERVISOR_FAILED', metadata: { status } });
  }

  /** Fetches QEMU's figures into the statistics, without waiting for them. */
  private refreshInfo(ctx: MethodContext, native: NativeStreamSource): void {
    void native.info().then(
      (info) => {
        this.info = info;
        applyNativeInfo(ctx.stats, info);
      },
      () => undefined,
    );
  }

  /** The monitor's tick: QEMU's figures, a round event per pass, the non-convergence policy. */
  private tick(ctx: MethodContext, native: NativeStreamSource): void {
    if (this.polling) return;
    this.polling = true;
    native
      .info()
      .then((info) => {
        const newPass = info.passes > (this.info?.passes ?? 0);
        this.info = info;
        if (newPass && info.status === 'active') {
          ctx.round(passMessage(info));
          this.passes.push({ atMs: ctx.elapsedMs(), backlogUnits: info.remainingBytes });
          if (this.passes.length > PASS_SAMPLES_MAX) this.passes.shift();
        }
        if (!this.postcopy && info.status === 'active') this.applyPolicy(ctx, native, info);
        ctx.progress();
      })
      .catch((error: unknown) => ctx.log.warn({ err: String(error) }, 'qemu-native: query-migrate failed'))
      .finally(() => (this.polling = false));
  }

  private applyPolicy(ctx: MethodContext, native: NativeStreamSource, info: NativeMigrationInfo): void {
    const { request } = ctx;
    const elapsedMs = ctx.elapsedMs();
    const decision = nativeConvergence({ policy: request.policy, elapsedMs, maxDurationMs: request.maxDurationMs, downtimeLimitMs: request.downtimeLimitMs, convergenceWindowMs: ctx.timings.convergenceWindowMs, passes: this.passes, info });
    if (decision.action === 'abort') {
      const reason = decision.trigger === 'max-duration' ? 'MAX_DURATION_EXCEEDED' : 'NON_CONVERGENCE';
      ctx.channel.fail(new DeadlineExceededError(decision.reason, { reason, metadata: { policy: request.policy, maxDurationMs: request.maxDurationMs, elapsedMs: elapsedMs.toFixed(0), remainingBytes: info.remainingBytes } }));
    } else if (decision.action === 'force' && !this.forced) {
      this.forced = true;
      ctx.stats.forced = true;
      ctx.log.warn({ reason: decision.reason }, 'qemu-native: forcing the switchover (QEMU\'s downtime limit raised)');
      ctx.round(`forcing the switchover: ${decision.reason}`);
      native.forceSwitchover().catch((error: unknown) => ctx.log.error({ err: String(error) }, 'qemu-native: could not raise QEMU\'s downtime limit'));
    }
  }
}
