// CR/TR's hybrid catch-up (the source side): while the log streams, every monitor tick weighs the
// two ways to bring the replica forward (shared/catch-up.ts chooseCatchUp, from measured rates) and,
// when a delta checkpoint is cheaper than replaying the backlog, sends one: a Rebase (the new
// instant; units before it are superseded), then the delta's chunks within the chunk window, then
// waits for the target to apply it. The log goes on from the new instant; the final switchover
// always goes through the log.
//
// The model's inputs are measured: the checkpoint's throughput and bytes per page until a delta
// was sent, then the last delta's own (its wire bytes over its time from rebase to applied, which
// includes the target's restore); the replica's catch-up rate and the guest's own speed as the
// source sees them over the last seconds (units replayed and recorded per wall time, whatever the
// target did between replays), once a backlog was there for a second; before that, the rate the
// target reports.

import { chooseCatchUp, type CatchUpDecision } from '../../shared/catch-up.js';
import type { DeltaSource } from '../../shared/driver/types.js';
import { PAGE_BYTES } from '../../shared/driver/types.js';
import { InvalidStateError, VmMigrateError } from '../../shared/errors.js';
import { CHUNK_PAGES } from '../streams/checkpoint.js';
import type { LogStream } from '../streams/log.js';
import type { MethodContext } from './method.js';

/** Units replayed and recorded at a tick. */
interface DrainSample {
  atMs: number;
  replayed: number;
  recorded: number;
  backlog: number;
}

/** A delta smaller than this says little of throughput (a round trip dominates): its rate is not kept. */
const DELTA_PAGES_FOR_RATE_MIN = 256;

/** The drain is measured over at most this much history, and only from this much on. */
const DRAIN_WINDOW_MS = 2_000;
const DRAIN_WINDOW_MIN_MS = 1_000;

export class HybridCatchUp {
  private readonly drain: DrainSample[] = [];
  /** A delta is being sent or applied. */
  busy = false;
  private chunksSent = 0;
  /** The last delta's wire bytes per page and bytes per second, rebase to applied (0: no delta yet). */
  private deltaPageWireBytes = 0;
  private deltaBytesPerSec = 0;
  private lastWay: CatchUpDecision['way'] | null = null;

  constructor(
    private readonly ctx: MethodContext,
    private readonly deltas: DeltaSource,
    private readonly logStream: LogStream,
    /** Units recorded and not yet replayed by the target (sent or not). */
    private readonly backlogUnits: () => number,
    /** Checkpoint chunks sent before the deltas: the chunk window counts them all. */
    private readonly checkpointChunksSent: () => number,
  ) {}

  /** One monitor tick: decide, and start a delta if it pays. `settled`: the switchover was agreed or forced. */
  tick(settled: boolean): void {
    const { ctx } = this;
    if (settled || this.busy || ctx.stats.phase !== 'log-transfer' || ctx.suspended) return;
    const decision = this.decide();
    ctx.log.debug({ way: decision.way, reason: decision.reason }, 'catch-up decision');
    if (decision.way === 'replay') {
      if (this.lastWay !== 'replay') ctx.round(`catch-up by replay: ${decision.reason}`);
      this.lastWay = 'replay';
      return;
    }
    this.lastWay = 'delta';
    this.busy = true;
    this.sendDelta(decision)
      .catch((error: unknown) => ctx.channel.fail(error instanceof VmMigrateError ? error : new InvalidStateError(`delta checkpoint failed: ${String(error)}`, { cause: error })))
      .finally(() => {
        this.busy = false;
        ctx.channel.notify();
      });
  }

  /** The replica's catch-up rate and the guest's speed over the recent history, if it says enough. */
  private drainRates(backlog: number): { replayRate: number; guestRate: number } | null {
    const { ctx } = this;
    const progress = ctx.channel.progress;
    const now = ctx.clock.now();
    const recorded = ctx.guest.recorder?.recordingStats().unitsRecorded ?? 0;
    this.drain.push({ atMs: now, replayed: Math.max(0, progress.unitsReplayed - progress.unitsSuperseded), recorded, backlog });
    while (this.drain.length > 2 && now - this.drain[1].atMs >= DRAIN_WINDOW_MS) this.drain.shift();
    const first = this.drain[0];
    const spanMs = now - first.atMs;
    // Only a replica that had a backlog all along shows how fast it drains.
    if (spanMs < DRAIN_WINDOW_MIN_MS || this.drain.some((d) => d.backlog < 2)) return null;
    const unitMs = ctx.stats.unitMs;
    return { replayRate: ((this.drain.at(-1)!.replayed - first.replayed) * unitMs) / spanMs, guestRate: ((recorded - first.recorded) * unitMs) / spanMs };
  }

  private decide(): CatchUpDecision {
    const { ctx } = this;
    const s = ctx.stats;
    const backlogUnits = this.backlogUnits();
    const rates = this.drainRates(backlogUnits);
    const checkpointPageWireBytes = s.checkpointBytes > 0 ? (PAGE_BYTES * s.checkpointWireBytes) / s.checkpointBytes : PAGE_BYTES;
    const pageWireBytes = this.deltaPageWireBytes || checkpointPageWireBytes;
    return chooseCatchUp({
      backlogUnits,
      unitMs: s.unitMs,
      replayRate: rates?.replayRate ?? ctx.channel.progress.replayRate,
      guestRate: rates?.guestRate ?? 1,
      deltaPages: this.deltas.pagesDirtiedSinceInstant(),
      pageWireBytes,
      restoreBytesPerSec: 0,
      logBytesPerSec: s.logRateBytesPerSec,
      throughputBytesPerSec: this.deltaBytesPerSec || ctx.throughputBytesPerSec,
      rttMs: ctx.channel.rttMs,
      roundsTaken: s.deltaRounds,
    });
  }

  private async sendDelta(decision: CatchUpDecision): Promise<void> {
    const { ctx } = this;
    const { channel, stats } = ctx;
    const startMs = ctx.clock.now();
    const start = this.deltas.rebase();
    this.logStream.skipBefore(start.firstSequence);
    stats.deltaRounds++;
    stats.deltaPages += start.pages;
    channel.send({ rebase: { generation: start.generation, firstSequence: start.firstSequence, pages: start.pages } });
    ctx.round(`delta ${start.generation} of ${start.pages} pages as of unit ${start.firstSequence}: ${decision.reason}`);
    let wireBytes = 0;
    // Packed (lz4, xxh64) by the compression workers where there are any: the guest runs on this
    // thread meanwhile. The chunk's buffer is reused for the next one: packAsync copies it first.
    for await (const chunk of this.deltas.deltaCheckpoint({ reuseBuffer: true, chunkPages: CHUNK_PAGES })) {
      await channel.until(() => this.checkpointChunksSent() + this.chunksSent - channel.progress.chunksApplied < ctx.windows.chunks);
      const message = await channel.packAsync({ kind: 'chunk', index: chunk.index, final: chunk.final, memoryBytesCovered: chunk.memoryBytesCovered, generation: start.generation }, chunk.bytes);
      this.chunksSent++;
      wireBytes += message.dataBytes;
      await channel.write(message, ctx.request.maxBandwidthBytesPerSec);
    }
    stats.deltaWireBytes += wireBytes;
    // Bounded by what is left of the maximum duration: the monitor does not judge while a delta is in flight.
    await channel.until(() => channel.progress.deltaGenerationApplied >= start.generation, {
      timeoutMs: Math.max(1, ctx.request.maxDurationMs - ctx.elapsedMs()),
      what: `delta ${start.generation} applied within the maximum duration`,
    });
    const tookMs = ctx.clock.now() - startMs;
    // The drain before the delta says nothing of the drain after it.
    this.drain.length = 0;
    if (start.pages >= DELTA_PAGES_FOR_RATE_MIN) {
      this.deltaPageWireBytes = wireBytes / start.pages;
      this.deltaBytesPerSec = wireBytes / Math.max(0.001, (tookMs - channel.rttMs) / 1000);
    }
    ctx.log.info({ generation: start.generation, pages: start.pages, wireBytes, tookMs: Math.round(tookMs), estimatedMs: Math.round(decision.deltaMs) }, 'delta checkpoint applied');
  }
}
