// The post-copy baseline (Hines et al., VEE 2009): suspend at once, send the machine state; the
// target resumes the guest immediately and asks for the pages it touches before they have
// arrived, while we push the rest in order. The commitment comes last: the target checks the
// pages as received against our digest at the suspend. Once the state is sent there is no way
// back: the guest runs on the target.

import { PAGE_BYTES, type PageAccess } from '../../shared/driver/types.js';
import { CorruptDataError } from '../../shared/errors.js';
import type { MigrationPhase } from '../../shared/stats.js';
import { PAGE_BATCH_PAGES, PageStream } from '../streams/pages.js';
import { pagesOf } from './capabilities.js';
import type { MethodContext, TransferMethod } from './method.js';

export const POSTCOPY_PHASES: readonly MigrationPhase[] = ['pre-migration', 'reservation', 'stop-and-copy', 'activation', 'page-push', 'commitment'];

export class PostcopyMethod implements TransferMethod {
  readonly name = 'postcopy' as const;
  readonly needs = { source: ['page-access'], target: ['postcopy-resume'] } as const;
  readonly phases = POSTCOPY_PHASES;
  readonly activatesBeforeCommit = true;
  commitDigest: string | undefined = undefined;
  /** Pages the target asked for, not yet sent, in the order asked; each page queued at most once. */
  private readonly demand: number[] = [];
  private demandRead = 0;
  private demandQueued: Uint8Array | null = null;
  private opened = false;

  /** Opens the transfer; suspends only once the target accepted it, so a refusal finds the guest running. */
  async catchUp(ctx: MethodContext): Promise<void> {
    const pages = pagesOf(ctx.guest);
    ctx.setPhase('stop-and-copy');
    ctx.stats.status = 'stop-and-copy';
    ctx.open();
    this.opened = true;
    ctx.channel.onPageRequest = (requested) => this.onPageRequest(ctx, pages, requested);
    await ctx.channel.until(() => ctx.channel.acknowledged);
  }

  async finish(ctx: MethodContext): Promise<void> {
    const { channel, stats } = ctx;
    const state = channel.pack({ kind: 'machineState' }, ctx.guest.machineState());
    await channel.until(() => true); // a cancellation or a failed stream still stops us here
    ctx.markPointOfNoReturn(); // the target resumes on receiving the state
    await channel.write(state, ctx.request.maxBandwidthBytesPerSec);
    const stateSentAtMs = ctx.clock.now();
    // The digest at the suspend, for the commitment; taken while the target already runs the guest.
    this.commitDigest = ctx.guest.digest();
    stats.sourceDigest = this.commitDigest;

    ctx.setPhase('activation');
    await channel.until(() => channel.activated !== null, { pastCommit: true, timeoutMs: ctx.timings.activationTimeoutMs });
    const { resumeToReplyMs, resumedAtMs } = channel.activated!;
    stats.downtimeMs = ctx.downtimeTo(resumedAtMs ?? 0, resumeToReplyMs);
    ctx.log.debug({ stateSentMs: stateSentAtMs - ctx.suspendedAtMs, downtimeMs: stats.downtimeMs, resumeToReplyMs }, 'post-copy switch timing');

    ctx.setPhase('page-push');
    const stream = new PageStream(channel, pagesOf(ctx.guest), stats, ctx.windows.chunks);
    await this.pushPages(ctx, stream);
    await channel.until(() => channel.progress.missingPages === 0 && channel.progress.pageBatchesApplied >= stream.batchesSent, { pastCommit: true });
  }

  /** Pushes every page once, the ones the target asks for first. No cancellation stops it. */
  private async pushPages(ctx: MethodContext, stream: PageStream): Promise<void> {
    const pages = pagesOf(ctx.guest);
    const sent = new Uint8Array(pages.pageCount);
    const rate = ctx.request.maxBandwidthBytesPerSec > 0 ? ctx.request.maxBandwidthBytesPerSec : Infinity;
    let cursor = 0;
    for (;;) {
      const batch: number[] = [];
      while (this.demandRead < this.demand.length && batch.length < PAGE_BATCH_PAGES) {
        const p = this.demand[this.demandRead++];
        if (sent[p] === 0) {
          sent[p] = 1;
          batch.push(p);
          ctx.stats.demandPages++;
        }
      }
      for (; batch.length < PAGE_BATCH_PAGES && cursor < pages.pageCount; cursor++) {
        if (sent[cursor] === 0) {
          sent[cursor] = 1;
          batch.push(cursor);
        }
      }
      if (batch.length === 0) return;
      ctx.stats.remainingBytes = (pages.pageCount - cursor) * PAGE_BYTES;
      await stream.sendBatch(Uint32Array.from(batch), 0, rate, true);
    }
  }

  commitTimeoutMs(ctx: MethodContext): number | undefined {
    return ctx.timings.activationTimeoutMs;
  }

  refreshStats(ctx: MethodContext): void {
    // remainingBytes is the pages not pushed yet, set as they go.
    if (this.opened) ctx.stats.missingPages = ctx.channel.progress.missingPages;
  }

  cleanUp(): void {}

  dispose(): void {}

  /**
   * Queues the pages the target's guest waits for. Each page is queued at most once (a bitmap), so
   * the queue never holds more than the guest's page count.
   */
  private onPageRequest(ctx: MethodContext, pages: PageAccess, requested: number[]): void {
    const pageCount = pages.pageCount;
    this.demandQueued ??= new Uint8Array(pageCount);
    for (const p of requested) {
      if (!Number.isInteger(p) || p < 0 || p >= pageCount) {
        ctx.channel.fail(new CorruptDataError(`the target asked for page ${p} of a ${pageCount}-page guest`, { reason: 'CORRUPT_DATA', metadata: { page: p, pageCount } }));
        return;
      }
      if (this.demandQueued[p] === 0) {
        this.demandQueued[p] = 1;
        this.demand.push(p);
      }
    }
  }
}
