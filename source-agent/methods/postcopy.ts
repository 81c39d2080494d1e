// The post-copy baseline (Hines et al., VEE 2009): suspend at once, send the machine state; the
// target resumes the guest immediately and asks for the pages it touches before they have
// arrived, while we push the rest in order. The commitment comes last: the target checks the
// pages as received against our digest at the suspend. Once the state is sent there is no way
// back: the guest runs on the target.

import { PAGE_BYTES, type PageAccess } from '../../shared/driver/types.js';
import { AbortedError, CorruptDataError, LimitExceededError } from '../../shared/errors.js';
import type { MigrationPhase } from '../../shared/stats.js';
import { PAGE_BATCH_PAGES, PageStream } from '../streams/pages.js';
import { STALL_MS } from '../channel.js';
import { pagesOf } from './capabilities.js';
import type { MethodContext, TransferMethod } from './method.js';

/**
 * Pages the target may ask for again (page batches it dropped for a failed check) over the
 * transfer, as a share of the guest's pages; past it the target is failing the transfer.
 */
const RESENT_PAGES_MAX_SHARE = 4;
/** Malformed page requests a transfer survives (each drops the stream and resumes the transfer). */
const BAD_REQUESTS_MAX = 16;
/** Why a page is in the queue: the target's guest waits for it, or the target lost it. */
const QUEUED_DEMAND = 1;
const QUEUED_RESEND = 2;

export const POSTCOPY_PHASES: readonly MigrationPhase[] = ['pre-migration', 'reservation', 'stop-and-copy', 'activation', 'page-push', 'commitment'];

export class PostcopyMethod implements TransferMethod {
  readonly name = 'postcopy' as const;
  readonly needs = { source: ['page-access'], target: ['postcopy-resume'] } as const;
  readonly phases = POSTCOPY_PHASES;
  readonly activatesBeforeCommit = true;
  commitDigest: string | undefined = undefined;
  /** Pages the target asked for, not yet sent, in the order asked; a page is in the queue at most once. */
  private readonly demand: number[] = [];
  private demandRead = 0;
  private demandQueued: Uint8Array | null = null;
  /** Pages sent (cleared for a page the target lost, so that it goes again). */
  private sent: Uint8Array | null = null;
  /** Pages sent again because the target lost them, bounded (RESENT_PAGES_MAX_SHARE). */
  private resentPages = 0;
  private badRequests = 0;
  /** The push's next page in order. */
  private cursor = 0;
  private opened = false;

  /** Opens the transfer; suspends only once the target accepted it, so a refusal finds the guest running. */
  async catchUp(ctx: MethodContext): Promise<void> {
    const pages = pagesOf(ctx.guest);
    ctx.setPhase('stop-and-copy');
    ctx.stats.status = 'stop-and-copy';
    ctx.open();
    this.opened = true;
    ctx.channel.onPageRequest = (requested, resend) => this.onPageRequest(ctx, pages, requested, resend);
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
    // The guest may already run there: a stalled link is resumed (channel.ts, which takes up to
    // STALL_MS to see it), and the target confirms again on the resumed stream; not given up on.
    const resumingMs = ctx.timings.resumeWindowMs > 0 ? STALL_MS + ctx.timings.resumeWindowMs : 0;
    await channel.until(() => channel.activated !== null, { pastCommit: true, timeoutMs: ctx.timings.activationTimeoutMs + resumingMs });
    const { resumeToReplyMs, resumedAtMs } = channel.activated!;
    stats.downtimeMs = ctx.downtimeTo(resumedAtMs ?? 0, resumeToReplyMs);
    ctx.log.debug({ stateSentMs: stateSentAtMs - ctx.suspendedAtMs, downtimeMs: stats.downtimeMs, resumeToReplyMs }, 'post-copy switch timing');

    ctx.setPhase('page-push');
    const stream = new PageStream(channel, pagesOf(ctx.guest), stats, ctx.windows.chunks);
    // Until the target has every page: pages it lost (a batch dropped) are asked for again.
    for (;;) {
      await this.pushPages(ctx, stream);
      await channel.until(() => this.demandRead < this.demand.length || (channel.progress.missingPages === 0 && stream.batchesHandled() >= stream.batchesSent), { pastCommit: true });
      if (this.demandRead >= this.demand.length) return;
    }
  }

  /** Pushes every page once, the ones the target asks for first. No cancellation stops it. */
  private async pushPages(ctx: MethodContext, stream: PageStream): Promise<void> {
    const pages = pagesOf(ctx.guest);
    const sent = (this.sent ??= new Uint8Array(pages.pageCount));
    const rate = ctx.request.maxBandwidthBytesPerSec > 0 ? ctx.request.maxBandwidthBytesPerSec : Infinity;
    for (;;) {
      // Pages count as sent once they go: a page the target loses meanwhile is then sent again.
      await stream.room(true);
      const batch: number[] = [];
      while (this.demandRead < this.demand.length && batch.length < PAGE_BATCH_PAGES) {
        const p = this.demand[this.demandRead++];
        const asked = this.demandQueued![p];
        this.demandQueued![p] = 0;
        if (sent[p] === 0) {
          sent[p] = 1;
          batch.push(p);
          if (asked === QUEUED_DEMAND) ctx.stats.demandPages++;
        }
      }
      if (this.demandRead === this.demand.length) this.demand.length = this.demandRead = 0;
      for (; batch.length < PAGE_BATCH_PAGES && this.cursor < pages.pageCount; this.cursor++) {
        if (sent[this.cursor] === 0) {
          sent[this.cursor] = 1;
          batch.push(this.cursor);
        }
      }
      if (batch.length === 0) return;
      ctx.stats.remainingBytes = (pages.pageCount - this.cursor) * PAGE_BYTES;
      await stream.sendBatch(Uint32Array.from(batch), 0, rate, true);
    }
  }

  commitTimeoutMs(ctx: MethodContext): number | undefined {
    return ctx.timings.activationTimeoutMs;
  }

  refreshStats(ctx: MethodContext): void {
    // remainingBytes is the pages not pushed yet, set as they go.
    if (this.opened) ctx.stats.missingPages = ctx.channel.progress.missingPages;
    // The switch sends the machine state only; the guest resumes there a round trip later.
    ctx.stats.expectedDowntimeMs = ctx.stats.rttMs;
  }

  cleanUp(): void {}

  dispose(): void {}

  /**
   * Queues the pages the target's guest waits for, or (`resend`) lost: a page lost is sent again
   * if it was sent (else the push brings it). A page is in the queue at most once (a bitmap), so
   * the queue never holds more than the guest's page count.
   */
  private onPageRequest(ctx: MethodContext, pages: PageAccess, requested: number[], resend: boolean): void {
    const pageCount = pages.pageCount;
    this.demandQueued ??= new Uint8Array(pageCount);
    for (const p of requested) {
      if (!Number.isInteger(p) || p < 0 || p >= pageCount) return this.badRequest(ctx, new CorruptDataError(`the target asked for page ${p} of a ${pageCount}-page guest`, { reason: 'CORRUPT_DATA', metadata: { page: p, pageCount } }));
      if (resend) {
        if (this.sent === null || this.sent[p] === 0) continue;
        if (++this.resentPages > RESENT_PAGES_MAX_SHARE * pageCount) {
          ctx.channel.fail(new LimitExceededError(`the target asked for ${this.resentPages} pages again, over ${RESENT_PAGES_MAX_SHARE} times the guest's ${pageCount}`, { reason: 'PEER_QUOTA_EXCEEDED', metadata: { pageCount } }));
          return;
        }
        this.sent[p] = 0;
      }
      if (this.demandQueued[p] === 0) {
        this.demandQueued[p] = resend ? QUEUED_RESEND : QUEUED_DEMAND;
        this.demand.push(p);
      }
    }
  }

  /**
   * A page request that names no page of the guest: damaged on the way (the reverse stream carries
   * no checksum), or a hostile target. The guest runs there on pages only we have, so the stream is
   * dropped and the transfer resumed (the target asks again for what it waits for), at most
   * BAD_REQUESTS_MAX times; past that, the transfer fails.
   */
  private badRequest(ctx: MethodContext, error: CorruptDataError): void {
    if (++this.badRequests > BAD_REQUESTS_MAX || ctx.channel.restart === undefined) return ctx.channel.fail(error);
    ctx.log.warn({ err: error.message, badRequests: this.badRequests }, 'post-copy: a malformed page request; the stream is dropped and the transfer resumed');
    ctx.channel.restart(new AbortedError(`${error.message}: the stream is dropped, resume it`, { reason: 'PEER_UNAVAILABLE' }));
  }
}
