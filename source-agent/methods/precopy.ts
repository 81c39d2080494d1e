// The pre-copy baseline (Clark et al., Xen): round 0 copies every page while the guest runs, each
// later round the pages dirtied meanwhile, under Xen's stop rules and adaptive rate limit
// (precopy-rules.ts); after the suspend, the last dirty set and the machine state.

import type { Timer } from '../../shared/clock.js';
import { PAGE_BYTES } from '../../shared/driver/types.js';
import type { MigrationPhase } from '../../shared/stats.js';
import { checkpointThroughputBytesPerSec } from '../streams/counters.js';
import { PageStream } from '../streams/pages.js';
import { pagesOf } from './capabilities.js';
import type { MethodContext, TransferMethod } from './method.js';
import { precopyRoundRate, precopyShouldStop } from './precopy-rules.js';
import { startTicker } from './ticker.js';

export const PRECOPY_PHASES: readonly MigrationPhase[] = ['pre-migration', 'reservation', 'checkpoint', 'stop-and-copy', 'commitment', 'activation'];

export class PrecopyMethod implements TransferMethod {
  readonly name = 'precopy' as const;
  readonly needs = { source: ['page-access'], target: ['page-restore'] } as const;
  readonly phases = PRECOPY_PHASES;
  readonly activatesBeforeCommit = false;
  private ticker: Timer | null = null;
  private stream: PageStream | null = null;
  /** The dirty set of the last round while the guest ran, and that round's number. */
  private lastDirty: Uint32Array = new Uint32Array(0);
  private roundsDone = 0;

  async catchUp(ctx: MethodContext): Promise<void> {
    const pages = pagesOf(ctx.guest);
    ctx.setPhase('checkpoint');
    ctx.open();
    this.ticker = startTicker(ctx);
    const stream = (this.stream = new PageStream(ctx.channel, pages, ctx.stats, ctx.windows.chunks));
    pages.startDirtyTracking();
    let toSend: Uint32Array = allPages(pages.pageCount);
    let sentBytes = 0;
    let dirtyBytesPerSec = 0;
    for (let round = 0; ; round++) {
      const rate = precopyRoundRate(round, dirtyBytesPerSec, ctx.request.maxBandwidthBytesPerSec);
      const roundStartMs = ctx.clock.now();
      sentBytes += await stream.sendAll(toSend, round, rate);
      if (round === 0) ctx.throughputBytesPerSec = checkpointThroughputBytesPerSec(ctx.stats, ctx.clock.now() - roundStartMs, 0);
      ctx.stats.rounds = round + 1;
      const dirty = pages.fetchAndClearDirty();
      dirtyBytesPerSec = (dirty.length * PAGE_BYTES) / Math.max(0.001, (ctx.clock.now() - roundStartMs) / 1000);
      ctx.stats.remainingBytes = dirty.length * PAGE_BYTES;
      ctx.round(
        `pre-copy round ${round + 1}: ${dirty.length} pages dirtied meanwhile (${((dirty.length * PAGE_BYTES) / 2 ** 20).toFixed(1)} MiB), ${(sentBytes / 2 ** 20).toFixed(1)} MiB of pages sent so far`,
      );
      const verdict = precopyShouldStop({ roundsDone: round + 1, dirtyPages: dirty.length, sentBytes, memoryBytes: ctx.stats.memoryBytes });
      if (verdict.stop || ctx.elapsedMs() >= ctx.request.maxDurationMs) {
        ctx.log.info({ rounds: round + 1, reason: verdict.stop ? verdict.reason : 'maximum duration', dirtyPages: dirty.length }, 'pre-copy: stop-and-copy');
        this.lastDirty = dirty;
        this.roundsDone = round + 1;
        return;
      }
      toSend = dirty;
    }
  }

  /** Phase 5: the last dirty set, at the full rate, then the machine state. */
  async finish(ctx: MethodContext): Promise<void> {
    const pages = pagesOf(ctx.guest);
    const merged = mergeSorted(this.lastDirty, pages.fetchAndClearDirty());
    ctx.stats.stopPagesSent = merged.length;
    const rate = ctx.request.maxBandwidthBytesPerSec;
    await this.stream!.sendAll(merged, this.roundsDone, rate > 0 ? rate : Infinity);
    await ctx.channel.write(ctx.channel.pack({ kind: 'machineState' }, ctx.guest.machineState()), rate);
    await ctx.channel.until(() => ctx.channel.progress.finalReplayed);
    pages.stopDirtyTracking();
    this.dispose();
  }

  commitTimeoutMs(): number | undefined {
    return undefined;
  }

  refreshStats(ctx: MethodContext): void {
    // remainingBytes is the last dirty set, set at the end of each round: the stop-and-copy sends
    // it (and what the guest dirties meanwhile) at the checkpoint's throughput. A forced stop of a
    // guest that dirties faster than the link expects seconds, and its deadline follows.
    const s = ctx.stats;
    if (ctx.throughputBytesPerSec > 0) s.expectedDowntimeMs = (s.remainingBytes / ctx.throughputBytesPerSec) * 1000 + s.rttMs;
  }

  cleanUp(ctx: MethodContext): void {
    this.dispose();
    ctx.guest.pages?.stopDirtyTracking();
  }

  dispose(): void {
    this.ticker?.cancel();
    this.ticker = null;
  }
}

function allPages(pageCount: number): Uint32Array {
  const all = new Uint32Array(pageCount);
  for (let i = 0; i < all.length; i++) all[i] = i;
  return all;
}

/** Union of two ascending page lists, ascending, without duplicates. */
export function mergeSorted(a: Uint32Array, b: Uint32Array): Uint32Array {
  const out = new Uint32Array(a.length + b.length);
  let i = 0;
  let j = 0;
  let n = 0;
  while (i < a.length || j < b.length) {
    const next = j >= b.length || (i < a.length && a[i] <= b[j]) ? a[i++] : b[j++];
    if (n === 0 || out[n - 1] !== next) out[n++] = next;
  }
  return out.subarray(0, n);
}
