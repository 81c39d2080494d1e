// The checkpoint stream (CR/TR): the live checkpoint's chunks, in order, within the target's chunk
// window (chunks sent and not yet applied), then a wait until the target restored the whole image.

import type { Logger } from 'pino';
import type { Clock } from '../../shared/clock.js';
import type { LogRecorder } from '../../shared/driver/types.js';
import type { MigrationStats } from '../../shared/stats.js';
import type { TransferChannel } from '../channel.js';
import { countCheckpoint } from './counters.js';

export class CheckpointStream {
  chunksSent = 0;

  constructor(
    private readonly channel: TransferChannel,
    private readonly stats: MigrationStats,
    private readonly clock: Clock,
    private readonly log: Logger,
    /** Chunks the target lets us have outstanding. */
    private readonly chunkWindow: number,
    private readonly rateBytesPerSec: number,
  ) {}

  /** Streams every chunk of `recorder`'s live checkpoint; resolves once the target restored it. */
  async run(recorder: LogRecorder): Promise<void> {
    // Where the checkpoint's time goes (logged at debug level): making chunks, waiting for the
    // target's window, packing them, handing them to the stream, waiting for the restore.
    const ms = { chunk: 0, window: 0, pack: 0, write: 0, restore: 0 };
    let lapStartMs = this.clock.now();
    const lap = (key: keyof typeof ms) => {
      const now = this.clock.now();
      ms[key] += now - lapStartMs;
      lapStartMs = now;
    };
    // The chunk's buffer is reused for the next one: pack compresses or copies it first.
    for await (const chunk of recorder.liveCheckpoint({ reuseBuffer: true })) {
      lap('chunk');
      await this.channel.until(() => this.chunksSent - this.channel.progress.chunksApplied < this.chunkWindow);
      lap('window');
      const message = this.channel.pack({ kind: 'chunk', index: chunk.index, final: chunk.final, memoryBytesCovered: chunk.memoryBytesCovered }, chunk.bytes);
      lap('pack');
      countCheckpoint(this.stats, chunk.bytes.length, message.dataBytes, chunk.memoryBytesCovered);
      this.chunksSent++;
      await this.channel.write(message, this.rateBytesPerSec);
      lap('write');
    }
    // The target applies chunks as they arrive: wait until it has the whole image.
    await this.channel.until(() => this.channel.progress.checkpointRestored);
    lap('restore');
    const timing = Object.fromEntries(Object.entries(ms).map(([k, v]) => [`${k}Ms`, Math.round(v)]));
    this.log.debug({ chunks: this.chunksSent, ...timing }, 'checkpoint streamed');
  }
}
