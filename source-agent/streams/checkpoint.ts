// The checkpoint stream (CR/TR): the live checkpoint's chunks, in order, within the target's chunk
// window (chunks sent and not yet applied), then a wait until the target restored the whole image.
//
// A pipeline: while compression workers pack (lz4, xxh64) up to PACKING_MAX chunks, this thread
// makes the next chunks and writes the packed ones to the stream, oldest first. Without workers
// (see PackPool) every chunk is packed here and the pipeline holds one chunk at a time.

import type { Logger } from 'pino';
import type { Clock } from '../../shared/clock.js';
import type { LogRecorder } from '../../shared/driver/types.js';
import type { PackedMessage } from '../../shared/protocol.js';
import type { MigrationStats } from '../../shared/stats.js';
import type { TransferChannel } from '../channel.js';
import type { TargetWindows } from '../methods/method.js';
import { countCheckpoint } from './counters.js';

/**
 * Chunks being packed at once: enough to keep two workers busy while the oldest is written (each
 * holds one it compresses and one queued). Each holds a copy of a chunk.
 */
export const PACKING_MAX = 4;

/**
 * Guest pages per chunk: 4 MiB. Against 1 MiB chunks, the target spends 5 to 25% less CPU per GiB
 * (fewer messages, progress reports and promises; measured with the dataplane benchmark); the
 * chunk window then holds up to 64 MiB of chunks.
 */
export const CHUNK_PAGES = 1024;

/** A chunk handed to the packer, waiting to be written in its turn. */
interface Packing {
  message: Promise<PackedMessage>;
  settled: boolean;
  rawBytes: number;
  memoryBytesCovered: number;
}

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

  /**
   * Streams every chunk of `recorder`'s live checkpoint; resolves once the target restored it.
   * Over `base` (the target's image of the guest), only the pages that differ go.
   */
  async run(recorder: LogRecorder, base: TargetWindows['base'] = null): Promise<void> {
    // Where the checkpoint's time goes (logged at debug level): making chunks, waiting for the
    // target's window, waiting for a chunk's packing to end, handing them to the stream, waiting
    // for the restore.
    const ms = { chunk: 0, window: 0, pack: 0, write: 0, restore: 0 };
    let lapStartMs = this.clock.now();
    const lap = (key: keyof typeof ms) => {
      const now = this.clock.now();
      ms[key] += now - lapStartMs;
      lapStartMs = now;
    };
    const packing: Packing[] = [];
    const writeOldest = async () => {
      const next = packing.shift()!;
      const message = await next.message;
      lap('pack');
      countCheckpoint(this.stats, next.rawBytes, message.dataBytes, next.memoryBytesCovered);
      await this.channel.write(message, this.rateBytesPerSec);
      lap('write');
    };
    const windowOpen = () => this.chunksSent - this.channel.progress.chunksApplied < this.chunkWindow;
    // The chunk's buffer is reused for the next one: packAsync copies it before it returns.
    if (base) this.stats.baseKind = base.kind;
    for await (const chunk of recorder.liveCheckpoint({ reuseBuffer: true, chunkPages: CHUNK_PAGES, base: base?.pageHashes })) {
      lap('chunk');
      this.stats.basePagesSkipped += chunk.pagesSkipped ?? 0;
      this.stats.checkpointBytesSaved += chunk.bytesSaved ?? 0;
      // Chunks packed meanwhile go out now; and a full window waits for the target, which can only
      // apply what was written: then everything packed goes out first.
      while (packing.length > 0 && (packing[0].settled || !windowOpen())) await writeOldest();
      await this.channel.until(windowOpen);
      lap('window');
      const entry: Packing = {
        message: this.channel.packAsync({ kind: 'chunk', index: chunk.index, final: chunk.final, memoryBytesCovered: chunk.memoryBytesCovered }, chunk.bytes),
        settled: false,
        rawBytes: chunk.bytes.length,
        memoryBytesCovered: chunk.memoryBytesCovered,
      };
      // Awaited in order by writeOldest; until then a failure must not count as unhandled.
      entry.message.then(
        () => (entry.settled = true),
        () => (entry.settled = true),
      );
      packing.push(entry);
      this.chunksSent++;
      while (packing.length >= PACKING_MAX) await writeOldest();
    }
    while (packing.length > 0) await writeOldest();
    // The target applies chunks as they arrive: wait until it has the whole image.
    await this.channel.until(() => this.channel.progress.checkpointRestored);
    lap('restore');
    const timing = Object.fromEntries(Object.entries(ms).map(([k, v]) => [`${k}Ms`, Math.round(v)]));
    this.log.debug({ chunks: this.chunksSent, ...timing }, 'checkpoint streamed');
  }
}
