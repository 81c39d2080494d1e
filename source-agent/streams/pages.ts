// The page stream (pre-copy, post-copy): batches of guest pages in the driver's page encoding,
// within the target's chunk window (batches sent and not yet applied). Pre-copy's first round
// counts as the checkpoint.

import { PAGE_BYTES, type PageAccess } from '../../shared/driver/types.js';
import type { MigrationStats } from '../../shared/stats.js';
import type { TransferChannel } from '../channel.js';
import { countCheckpoint } from './counters.js';

/** Pages per batch: 1 MiB of raw pages, well under the message limit. */
export const PAGE_BATCH_PAGES = 256;

export class PageStream {
  batchesSent = 0;

  constructor(
    private readonly channel: TransferChannel,
    private readonly pages: PageAccess,
    private readonly stats: MigrationStats,
    private readonly chunkWindow: number,
  ) {}

  /** Sends `list` in batches; returns the raw page bytes sent. */
  async sendAll(list: Uint32Array, round: number, rateBytesPerSec: number): Promise<number> {
    let bytes = 0;
    for (let i = 0; i < list.length; i += PAGE_BATCH_PAGES) {
      bytes += await this.sendBatch(list.subarray(i, Math.min(list.length, i + PAGE_BATCH_PAGES)), round, rateBytesPerSec);
    }
    return bytes;
  }

  /** Batches the target applied, or dropped for a failed check (post-copy: it asks for their pages again). */
  batchesHandled(): number {
    const progress = this.channel.progress;
    return progress.pageBatchesApplied + (progress.pageBatchesDropped ?? 0);
  }

  /** Resolves once the target's window has room for one more batch. */
  room(pastCommit = false): Promise<void> {
    return this.channel.until(() => this.batchesSent - this.batchesHandled() < this.chunkWindow, { pastCommit });
  }

  /**
   * Sends one batch once the target's window has room; round 0 counts as the checkpoint.
   * `pastCommit`: post-copy's push, which no cancellation stops. Returns the raw page bytes.
   */
  async sendBatch(batch: Uint32Array, round: number, rateBytesPerSec: number, pastCommit = false): Promise<number> {
    await this.room(pastCommit);
    const bytes = this.pages.encodePages(batch);
    const message = this.channel.pack({ kind: 'pages', round, pageCount: batch.length }, bytes);
    this.batchesSent++;
    this.stats.pagesSent += batch.length;
    if (round === 0) countCheckpoint(this.stats, bytes.length, message.dataBytes, batch.length * PAGE_BYTES);
    await this.channel.write(message, rateBytesPerSec);
    return batch.length * PAGE_BYTES;
  }
}
