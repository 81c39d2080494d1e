// Part 2 of the sim benchmark: capture throughput of a live checkpoint of a 1 GiB guest (chunks
// alone, + lz4, + xxh64), restore throughput, and baselines over the same memory (baselines.ts).

import type { SimDriver, SimReplica, SimSourceGuest } from '../../shared/driver/sim/index.js';
import { PAGE_BYTES } from '../../shared/driver/types.js';
import { xxh64 } from '../../shared/hash.js';
import { compressBlock } from '../../shared/lz4.js';
import { fixed, GIB_BYTES, mibText, sig, table } from '../format.js';
import { median } from '../stats.js';
import { type Baseline, measureBaselines } from './baselines.js';
import { CONTENT_SEED, withDrivers } from './drivers.js';
import { collectGarbage, megabytesPerSec, progress, rssBytes, Stopwatch } from './measure.js';
import type { SimBenchOptions } from './options.js';

const CHECKPOINT_MEMORY_BYTES = GIB_BYTES;
const ENVIRONMENT_SEED = 2000;
/** RSS is sampled every this many chunks of a pass (and at its end), for the peak. */
const RSS_SAMPLE_INTERVAL_CHUNKS = 64;

interface PassResult {
  ms: number;
  MBps: number;
  cpuPercent: number;
  minorFaults: number;
}

interface ModeResult {
  runsMBps: number[];
  medianMBps: number;
  medianMs: number;
  cpuPercent: number;
  minorFaultsPerPass: number;
  vsMemcpy: number;
  vsXxh64Page: number;
}

export interface CheckpointResult {
  memoryBytes: number;
  reps: number;
  chunks: number;
  chunkPages: number;
  /** Bytes of the chunks of one checkpoint (zero pages elided). */
  rawBytes: number;
  lz4Bytes: number;
  lz4Ratio: number;
  /** Bytes of the ArrayBuffers behind the chunks of one checkpoint (what holding them all would pin). */
  chunkBufferBytes: number;
  bootMs: number;
  /** The first checkpoint after boot, chunks alone: it is the first to read the pages the guest never touched. */
  firstCheckpoint: PassResult;
  baseline: Baseline;
  modes: { chunks: ModeResult; chunksLz4: ModeResult; chunksLz4Xxh64: ModeResult };
  restore: PassResult & { digestMatch: boolean };
  rss: { before: number; afterBoot: number; afterFirstCheckpoint: number; peakDuringCheckpoints: number; withReplicaRestored: number; afterDiscard: number };
}

/** What a pass does with each chunk besides taking it. */
type Mode = 'chunks' | 'chunksLz4' | 'chunksLz4Xxh64';
const MODES: readonly Mode[] = ['chunks', 'chunksLz4', 'chunksLz4Xxh64'];

const passResult = (bytes: number, w: Stopwatch): PassResult => ({ ms: w.wallMs, MBps: megabytesPerSec(bytes, w.wallMs), cpuPercent: w.cpuPercent, minorFaults: w.minorFaults });

/**
 * Takes checkpoint passes of one guest, which is not stepped while they run: pure capture cost.
 * Keeps what the last pass saw and the peak RSS over all of them.
 */
class CheckpointPasses {
  chunks = 0;
  rawBytes = 0;
  /** Of the last pass that compressed. */
  lz4Bytes = 0;
  chunkBufferBytes = 0;
  rssPeakBytes: number;
  /** The hashes folded together, so that computing them cannot be skipped. */
  sink = 0n;

  constructor(
    private readonly guest: SimSourceGuest,
    rssBytesNow: number,
  ) {
    this.rssPeakBytes = rssBytesNow;
  }

  async take(mode: Mode): Promise<Stopwatch> {
    await collectGarbage(); // each pass starts without the previous one's garbage
    this.guest.stopRecording();
    this.guest.startRecording();
    let raw = 0;
    let compressed = 0;
    let buffers = 0;
    let n = 0;
    const watch = new Stopwatch();
    watch.start();
    for await (const chunk of this.guest.liveCheckpoint()) {
      raw += chunk.bytes.length;
      buffers += chunk.bytes.buffer.byteLength;
      if (mode !== 'chunks') compressed += compressBlock(chunk.bytes)?.length ?? chunk.bytes.length;
      if (mode === 'chunksLz4Xxh64') this.sink ^= xxh64(chunk.bytes);
      if (++n % RSS_SAMPLE_INTERVAL_CHUNKS === 0) this.rssPeakBytes = Math.max(this.rssPeakBytes, rssBytes());
    }
    watch.stop();
    this.rssPeakBytes = Math.max(this.rssPeakBytes, rssBytes());
    this.chunks = n;
    this.rawBytes = raw;
    this.chunkBufferBytes = buffers;
    if (mode !== 'chunks') this.lz4Bytes = compressed;
    return watch;
  }
}

interface PassRun {
  MBps: number;
  watch: Stopwatch;
}

/** `reps` repetitions of a pass in every mode, the modes interleaved within a repetition. */
async function repeatPasses(passes: CheckpointPasses, reps: number): Promise<Record<Mode, PassRun[]>> {
  const runs: Record<Mode, PassRun[]> = { chunks: [], chunksLz4: [], chunksLz4Xxh64: [] };
  for (let rep = 0; rep < reps; rep++) {
    for (const mode of MODES) {
      progress(`checkpoint of 1 GiB, ${mode}, repetition ${rep + 1}/${reps}`);
      const watch = await passes.take(mode);
      runs[mode].push({ MBps: megabytesPerSec(CHECKPOINT_MEMORY_BYTES, watch.wallMs), watch });
    }
  }
  return runs;
}

function modeResult(runs: PassRun[], baseline: Baseline): ModeResult {
  const medianMBps = median(runs.map((r) => r.MBps));
  const wallMs = runs.reduce((n, r) => n + r.watch.wallMs, 0);
  const cpuMs = runs.reduce((n, r) => n + r.watch.cpuMs, 0);
  return {
    runsMBps: runs.map((r) => r.MBps),
    medianMBps,
    medianMs: median(runs.map((r) => r.watch.wallMs)),
    cpuPercent: (100 * cpuMs) / wallMs,
    minorFaultsPerPass: median(runs.map((r) => r.watch.minorFaults)),
    vsMemcpy: medianMBps / baseline.memcpyMBps,
    vsXxh64Page: medianMBps / baseline.xxh64PageMBps,
  };
}

/** Restores a fresh checkpoint of `guest` into a replica; only restoreChunk is timed. */
async function restoreIntoReplica(guest: SimSourceGuest, target: SimDriver, digest: string): Promise<{ restore: CheckpointResult['restore']; replica: SimReplica }> {
  guest.stopRecording();
  guest.startRecording();
  const replica: SimReplica = target.reserve(guest.describe());
  const watch = new Stopwatch();
  let covered = 0;
  for await (const chunk of guest.liveCheckpoint()) {
    covered += chunk.memoryBytesCovered;
    watch.start();
    replica.restoreChunk(chunk);
    watch.stop();
  }
  const digestMatch = replica.digest() === digest && guest.digest() === digest;
  return { restore: { ...passResult(covered, watch), digestMatch }, replica };
}

async function benchCheckpoint(opts: SimBenchOptions): Promise<CheckpointResult> {
  await collectGarbage();
  const rssBefore = rssBytes();
  progress('booting a 1 GiB idle guest');
  return withDrivers(async ({ source, target }) => {
    const bootStart = performance.now();
    const guest = source.createGuest({ id: 'bench-ckpt', profile: 'idle', memoryBytes: CHECKPOINT_MEMORY_BYTES, environmentSeed: ENVIRONMENT_SEED, contentSeed: CONTENT_SEED });
    const bootMs = performance.now() - bootStart;
    await guest.step(opts.warmupUnits);
    const digest = guest.digest(); // hashes every written page once, outside any timing
    const rssAfterBoot = rssBytes();
    const passes = new CheckpointPasses(guest, rssAfterBoot);

    progress('first checkpoint of the 1 GiB guest after boot');
    const firstCheckpoint = passResult(CHECKPOINT_MEMORY_BYTES, await passes.take('chunks'));
    const rssAfterFirst = rssBytes();
    progress('baselines: first touch, memcpy, xxh64, lz4 over the same 1 GiB');
    const baselines = measureBaselines(guest, opts.checkpointReps);
    const runs = await repeatPasses(passes, opts.checkpointReps);
    if ((passes.sink ^ baselines.sink) === 1n) progress('(hash sink)');
    const chunkPages = Math.round(CHECKPOINT_MEMORY_BYTES / PAGE_BYTES / (passes.chunks - 1));

    progress('restoring the 1 GiB checkpoint into a replica');
    const { restore, replica } = await restoreIntoReplica(guest, target, digest);
    const rssWithReplica = rssBytes();
    guest.discard();
    replica.discard();
    await collectGarbage();
    const rssAfterDiscard = rssBytes();

    const baseline = baselines.baseline;
    return {
      memoryBytes: CHECKPOINT_MEMORY_BYTES,
      reps: opts.checkpointReps,
      chunks: passes.chunks,
      chunkPages,
      rawBytes: passes.rawBytes,
      lz4Bytes: passes.lz4Bytes,
      lz4Ratio: passes.rawBytes / passes.lz4Bytes,
      chunkBufferBytes: passes.chunkBufferBytes,
      bootMs,
      firstCheckpoint,
      baseline,
      modes: { chunks: modeResult(runs.chunks, baseline), chunksLz4: modeResult(runs.chunksLz4, baseline), chunksLz4Xxh64: modeResult(runs.chunksLz4Xxh64, baseline) },
      restore,
      rss: {
        before: rssBefore,
        afterBoot: rssAfterBoot,
        afterFirstCheckpoint: rssAfterFirst,
        peakDuringCheckpoints: passes.rssPeakBytes,
        withReplicaRestored: rssWithReplica,
        afterDiscard: rssAfterDiscard,
      },
    };
  });
}

function printBaselines(r: CheckpointResult): void {
  console.log(
    table(
      [`baseline, same run, over the guest's memory (median of ${r.reps})`, 'MB/s'],
      [
        ['memcpy 1 GiB in 1 MiB pieces (Buffer.copy into a 256 MiB ring)', sig(r.baseline.memcpyMBps)],
        ['xxh64 1 GiB in 4 KiB pages', sig(r.baseline.xxh64PageMBps)],
        ['xxh64 1 GiB in 1 MiB pieces', sig(r.baseline.xxh64MiBMBps)],
        ['lz4 compressBlock (shared/lz4.ts) 1 GiB in 1 MiB pieces', sig(r.baseline.lz4MiBMBps)],
        ['lz4 encodeBlock 1 GiB in 1 MiB pieces, one output buffer reused', sig(r.baseline.lz4ReusedOutputMBps)],
        [`first touch of 256 MiB of fresh memory (${fixed(r.baseline.firstTouchUsPerPage, 1)} us per page fault)`, sig(r.baseline.firstTouchMBps)],
      ],
    ),
  );
}

function printPasses(r: CheckpointResult): void {
  const repeated = (name: string, m: ModeResult) => [
    name,
    sig(m.medianMBps),
    m.runsMBps.length > 1 ? `${sig(Math.min(...m.runsMBps))}-${sig(Math.max(...m.runsMBps))}` : '-',
    sig(m.medianMs),
    fixed(m.cpuPercent, 0),
    String(m.minorFaultsPerPass),
    fixed(m.vsMemcpy, 2),
    fixed(m.vsXxh64Page, 2),
  ];
  const single = (name: string, p: PassResult) => [
    name,
    sig(p.MBps),
    '-',
    sig(p.ms),
    fixed(p.cpuPercent, 0),
    String(p.minorFaults),
    fixed(p.MBps / r.baseline.memcpyMBps, 2),
    fixed(p.MBps / r.baseline.xxh64PageMBps, 2),
  ];
  console.log(
    table(
      [`guest memory covered per second (median of ${r.reps})`, 'MB/s', 'range', 'ms', 'CPU%', 'faults', 'x memcpy', 'x xxh64 4K'],
      [
        single('first checkpoint after boot, chunks alone', r.firstCheckpoint),
        repeated('(a) chunks alone (liveCheckpoint)', r.modes.chunks),
        repeated('(b) chunks + lz4 compressBlock', r.modes.chunksLz4),
        repeated('(c) chunks + lz4 + xxh64', r.modes.chunksLz4Xxh64),
        single('restore into a fresh replica (restoreChunk)', r.restore),
      ],
    ),
  );
}

function printCheckpoint(r: CheckpointResult): void {
  console.log(
    `\n== 2. Live checkpoint of a 1 GiB guest (idle profile, default content mix 40% zero / 40% text / 20% random in 2 MiB runs; ` +
      `guest not stepped while it is taken; ${r.chunks - 1} chunks of ${r.chunkPages} pages + 1 state chunk) ==\n`,
  );
  printBaselines(r);
  console.log('');
  printPasses(r);
  console.log('');
  console.log(
    `  chunk bytes ${mibText(r.rawBytes)} (zero pages elided), ${mibText(r.lz4Bytes)} after lz4 (ratio ${fixed(r.lz4Ratio, 2)}); ` +
      `ArrayBuffers behind the chunks ${mibText(r.chunkBufferBytes)}; restored digest ${r.restore.digestMatch ? 'matches' : 'MISMATCH'}; boot ${sig(r.bootMs)} ms`,
  );
  console.log(
    `  RSS: before ${mibText(r.rss.before)}, after boot ${mibText(r.rss.afterBoot)}, after the first checkpoint ${mibText(r.rss.afterFirstCheckpoint)}, ` +
      `peak during checkpoints ${mibText(r.rss.peakDuringCheckpoints)},\n       with the replica restored ${mibText(r.rss.withReplicaRestored)}, after discarding both ${mibText(r.rss.afterDiscard)}`,
  );
  console.log('  faults: minor page faults of the process during the pass (first touches of memory).');
}

/** Part 2: prints its tables; `failures` is 1 when the restored replica's digest differs. */
export async function runCheckpointPart(opts: SimBenchOptions): Promise<{ failures: number; figures: CheckpointResult }> {
  const r = await benchCheckpoint(opts);
  const failures = r.restore.digestMatch ? 0 : 1;
  printCheckpoint(r);
  await collectGarbage();
  return { failures, figures: r };
}
