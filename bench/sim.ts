// `npm run bench -- sim`: how fast the built-in deterministic guest records, replays and
// checkpoints on this host, and what its log and its copy-on-write pool cost. It prints figures
// and asserts nothing about timings; the only failure is a state digest that differs between a
// guest and its replica (exit code 1).
//
// Every guest runs with `pacing: 'manual'` and is driven by `step()`, so units run back to back as
// fast as the host allows (the idle part of a unit is not slept out); wall time is measured with
// performance.now and CPU time with process.cpuUsage.
//
// Three parts:
// 1. replay:     per workload profile, record N units then replay them into a replica restored
//                from the checkpoint: record and replay throughput, log size (raw and lz4),
//                events, dirty pages, digests.
// 2. checkpoint: capture throughput of a live checkpoint of a 1 GiB guest (chunks alone, + lz4,
//                + xxh64), restore throughput, and baselines (memcpy, xxh64) from the same run.
// 3. cow:        copy-on-write pool use and guest stall while a writing guest (mmuncher) is
//                checkpointed, the guest stepped between chunk pulls as if each chunk went out
//                over a link of a given speed.
//
// Minor page faults are counted next to the timings: on a VM host a first touch of memory can
// cost tens of microseconds, enough to dominate a figure, and the count says when it does.
//
// Units: MB = 10^6 bytes (throughputs, MB/s), MiB = 2^20 bytes (sizes), kB = 10^3 bytes.

import os from 'node:os';
import { setImmediate as flushMacrotask, setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import v8 from 'node:v8';
import vm from 'node:vm';
import lz4 from 'lz4';
import { PROFILE_NAMES, type ProfileName, SimDriver, type SimSourceGuest } from '../shared/driver/sim/index.js';
import { peekUnitHeader } from '../shared/driver/sim/unit-codec.js';
import type { CheckpointChunk, SealedUnit, TargetReplica } from '../shared/driver/types.js';
import { xxh64 } from '../shared/hash.js';
import { compressBlock } from '../shared/lz4.js';
import { fixed, GIB_BYTES, MIB_BYTES, mibText, sig, table } from './format.js';
import { median } from './stats.js';

const MiB = MIB_BYTES;
const GiB = GIB_BYTES;

// ---------------------------------------------------------------------------------------------
// Options

interface SimBenchOptions {
  quick: boolean;
  json: boolean;
  profiles: ProfileName[];
  memoryMiB: number;
  units: number;
  parts: Set<Part>;
  /** Units run before recording starts, so the instruction budget is calibrated and code is hot. */
  warmupUnits: number;
  /** Repetitions of each 1 GiB checkpoint pass. */
  checkpointReps: number;
  /** Link speeds (bit/s) at which part 3 paces the guest against the checkpoint. */
  linkBitsPerSec: number[];
}

const PARTS = ['replay', 'checkpoint', 'cow'] as const;
type Part = (typeof PARTS)[number];

const CHECKPOINT_MEMORY_BYTES = GiB;
const COW_MEMORY_BYTES = 512 * MiB;

const USAGE = `usage: npm run bench -- sim [options]

  --quick             smaller and shorter (under a minute): 128 MiB guests and 50 units in part 1,
                      one repetition of each 1 GiB checkpoint pass
  --profiles a,b      workload profiles for part 1 (default: all: ${PROFILE_NAMES.join(', ')})
  --memory-mib N      guest memory of part 1, MiB (default 512, --quick 128)
  --units N           units (10 ms of guest time each) recorded per profile (default 200, --quick 50)
  --parts a,b         parts to run (default: all: ${PARTS.join(', ')})
  --json              also print one JSON object with every figure as the last line
  -h, --help          this text

Prints figures only; asserts nothing about timings. Exits 1 if a replica's state digest differs
from its guest's, 2 on a bad option.`;

class UsageError extends Error {}

function parseOptions(argv: string[]): SimBenchOptions | 'help' {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: false,
      strict: true,
      options: {
        quick: { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
        profiles: { type: 'string' },
        'memory-mib': { type: 'string' },
        units: { type: 'string' },
        parts: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const v = parsed.values;
  if (v.help) return 'help';
  const quick = v.quick === true;
  const list = (text: string, what: string, allowed: readonly string[]): string[] => {
    const items = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
    if (items.length === 0) throw new UsageError(`--${what} is empty: expected a comma-separated list of ${allowed.join(', ')}`);
    for (const item of items) {
      if (!allowed.includes(item)) throw new UsageError(`--${what}: unknown '${item}', expected some of ${allowed.join(', ')}`);
    }
    return [...new Set(items)];
  };
  const integer = (text: string | undefined, what: string, fallback: number, min: number, max: number): number => {
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${what} ${text}: expected an integer from ${min} to ${max}`);
    return n;
  };
  const memoryMiB = integer(v['memory-mib'], 'memory-mib', quick ? 128 : 512, 64, 16384);
  if (memoryMiB % 2 !== 0) throw new UsageError(`--memory-mib ${memoryMiB}: expected a multiple of 2 MiB`);
  return {
    quick,
    json: v.json === true,
    profiles: (v.profiles === undefined ? [...PROFILE_NAMES] : list(v.profiles, 'profiles', PROFILE_NAMES)) as ProfileName[],
    memoryMiB,
    units: integer(v.units, 'units', quick ? 50 : 200, 1, 100_000),
    parts: new Set((v.parts === undefined ? [...PARTS] : list(v.parts, 'parts', PARTS)) as Part[]),
    warmupUnits: quick ? 30 : 50,
    checkpointReps: quick ? 1 : 3,
    linkBitsPerSec: [1e9, 10e9],
  };
}

// ---------------------------------------------------------------------------------------------
// Measuring and printing

interface Timed {
  wallMs: number;
  cpuMs: number;
  /** Minor page faults of the process: first touches of memory (costly in a VM). */
  minorFaults: number;
}

/** Accumulates wall time, CPU time and minor page faults over several measured stretches. */
class Stopwatch implements Timed {
  wallMs = 0;
  cpuMs = 0;
  minorFaults = 0;
  private t0 = 0;
  private f0 = 0;
  private c0: NodeJS.CpuUsage | null = null;
  start(): void {
    this.f0 = process.resourceUsage().minorPageFault;
    this.c0 = process.cpuUsage();
    this.t0 = performance.now();
  }
  stop(): void {
    this.wallMs += performance.now() - this.t0;
    const c = process.cpuUsage(this.c0 ?? undefined);
    this.cpuMs += (c.user + c.system) / 1000;
    this.minorFaults += process.resourceUsage().minorPageFault - this.f0;
    this.c0 = null;
  }
  get cpuPercent(): number {
    return (100 * this.cpuMs) / this.wallMs;
  }
}

let gcFunction: (() => void) | null | undefined;
/**
 * Full garbage collections, so that freed guests do not count in the next part's RSS. V8 frees
 * ArrayBuffer memory a little after the collection that found it dead, hence the pause and the
 * second collection.
 */
async function collectGarbage(): Promise<void> {
  if (gcFunction === undefined) {
    const exposed = (globalThis as { gc?: () => void }).gc;
    if (typeof exposed === 'function') gcFunction = exposed;
    else {
      try {
        v8.setFlagsFromString('--expose-gc');
        gcFunction = vm.runInNewContext('gc') as () => void;
      } catch {
        gcFunction = null;
      }
    }
  }
  if (gcFunction === null) return;
  gcFunction();
  await sleep(50);
  gcFunction();
  await sleep(10);
}

const rss = (): number => process.memoryUsage.rss();

const mbps = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000);

/** Progress, on stderr so that stdout holds the figures only. */
function progress(text: string): void {
  process.stderr.write(`[bench sim] ${text}\n`);
}

async function drainQueued(guest: SimSourceGuest, into: SealedUnit[]): Promise<void> {
  while (guest.recordingStats().unitsQueued > 0) {
    const unit = await guest.nextSealedUnit();
    if (unit === null) return;
    into.push(unit);
  }
}

/** Takes every unit up to and including the final one (after `suspend`). */
async function drainAll(guest: SimSourceGuest, into: SealedUnit[]): Promise<void> {
  for (;;) {
    const unit = await guest.nextSealedUnit();
    if (unit === null) return;
    into.push(unit);
    if (unit.final) return;
  }
}

// ---------------------------------------------------------------------------------------------
// Part 1: record and replay, per profile

interface ProfileResult {
  profile: ProfileName;
  memoryBytes: number;
  units: number;
  guestSeconds: number;
  bootMs: number;
  record: { wallMs: number; cpuMs: number; minorFaults: number; unitsPerSec: number; speedup: number; cpuPercent: number; stallMs: number };
  log: {
    bytes: number;
    bytesPerUnit: number;
    bytesPerGuestSec: number;
    lz4Bytes: number;
    lz4BytesPerGuestSec: number;
    lz4Ratio: number;
    lz4MBps: number;
    events: number;
    eventsPerGuestSec: number;
  };
  replay: { wallMs: number; cpuMs: number; minorFaults: number; unitsPerSec: number; speedup: number; cpuPercent: number };
  instructions: { total: number; recordMips: number; replayMips: number };
  dirty: { windowUnits: number; fullWindows: number; pagesPerSecWindowed: number | null; distinctPages: number; distinctPagesPerGuestSec: number };
  digest: { checkpointMatch: boolean; source: string; replica: string; match: boolean };
}

async function benchProfile(profile: ProfileName, index: number, opts: SimBenchOptions): Promise<ProfileResult> {
  const memoryBytes = opts.memoryMiB * MiB;
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  try {
    const bootStart = performance.now();
    const guest = source.createGuest({ id: `bench-${profile}`, profile, memoryBytes, environmentSeed: 1000 + index, contentSeed: 1 });
    const bootMs = performance.now() - bootStart;
    await guest.step(opts.warmupUnits);

    // Checkpoint first, completely, with the guest still: the recorded run then has no
    // copy-on-write pool to fill (that is part 3).
    guest.startRecording();
    const digestAtCheckpoint = guest.digest();
    const replica = target.reserve(guest.describe());
    for await (const chunk of guest.liveCheckpoint()) replica.restoreChunk(chunk);
    const checkpointMatch = replica.digest() === digestAtCheckpoint;

    // Record.
    const unitMs = guest.describe().unitMs;
    const windowUnits = Math.max(1, Math.round(1000 / unitMs));
    const pageCount = guest.pages.pageCount;
    const everDirty = new Uint8Array(pageCount);
    let distinctPages = 0;
    const windowCounts: number[] = [];
    const units: SealedUnit[] = [];
    const recordWatch = new Stopwatch();
    const stall0 = guest.recordingStats().stallMs;
    guest.pages.startDirtyTracking();
    let inWindow = 0;
    for (let i = 0; i < opts.units; i++) {
      recordWatch.start();
      await guest.step(1);
      await drainQueued(guest, units);
      recordWatch.stop();
      inWindow++;
      if (inWindow === windowUnits || i === opts.units - 1) {
        const dirty = guest.pages.fetchAndClearDirty();
        for (const page of dirty) {
          if (everDirty[page] === 0) {
            everDirty[page] = 1;
            distinctPages++;
          }
        }
        if (inWindow === windowUnits) windowCounts.push(dirty.length);
        inWindow = 0;
      }
    }
    const stallMs = guest.recordingStats().stallMs - stall0;
    await guest.suspend();
    await drainAll(guest, units);
    const sourceDigest = guest.digest();

    let logBytes = 0;
    let events = 0;
    let guestNs = 0;
    let instructions = 0;
    let recordedUnits = 0;
    for (const u of units) {
      logBytes += u.bytes.length;
      events += u.eventCount;
      guestNs += u.guestNs;
      instructions += peekUnitHeader(u.bytes).instructionCount;
      if (!u.final) recordedUnits++;
    }
    const guestSeconds = guestNs / 1e9;

    const lz4Start = performance.now();
    let lz4Bytes = 0;
    for (const u of units) lz4Bytes += compressBlock(u.bytes)?.length ?? u.bytes.length;
    const lz4Ms = performance.now() - lz4Start;

    // Replay.
    const replayWatch = new Stopwatch();
    replayWatch.start();
    for (const u of units) replica.applyUnit(u.bytes);
    replayWatch.stop();
    const replicaDigest = replica.digest();

    guest.discard();
    replica.discard();
    return {
      profile,
      memoryBytes,
      units: recordedUnits,
      guestSeconds,
      bootMs,
      record: {
        wallMs: recordWatch.wallMs,
        cpuMs: recordWatch.cpuMs,
        minorFaults: recordWatch.minorFaults,
        unitsPerSec: recordedUnits / (recordWatch.wallMs / 1000),
        speedup: guestSeconds / (recordWatch.wallMs / 1000),
        cpuPercent: recordWatch.cpuPercent,
        stallMs,
      },
      log: {
        bytes: logBytes,
        bytesPerUnit: logBytes / recordedUnits,
        bytesPerGuestSec: logBytes / guestSeconds,
        lz4Bytes,
        lz4BytesPerGuestSec: lz4Bytes / guestSeconds,
        lz4Ratio: logBytes / lz4Bytes,
        lz4MBps: mbps(logBytes, lz4Ms),
        events,
        eventsPerGuestSec: events / guestSeconds,
      },
      replay: {
        wallMs: replayWatch.wallMs,
        cpuMs: replayWatch.cpuMs,
        minorFaults: replayWatch.minorFaults,
        unitsPerSec: recordedUnits / (replayWatch.wallMs / 1000),
        speedup: guestSeconds / (replayWatch.wallMs / 1000),
        cpuPercent: replayWatch.cpuPercent,
      },
      instructions: {
        total: instructions,
        recordMips: instructions / 1e6 / (recordWatch.wallMs / 1000),
        replayMips: instructions / 1e6 / (replayWatch.wallMs / 1000),
      },
      dirty: {
        windowUnits,
        fullWindows: windowCounts.length,
        pagesPerSecWindowed: windowCounts.length === 0 ? null : (windowCounts.reduce((a, b) => a + b, 0) / windowCounts.length) * (1000 / (windowUnits * unitMs)),
        distinctPages,
        distinctPagesPerGuestSec: distinctPages / guestSeconds,
      },
      digest: { checkpointMatch, source: sourceDigest, replica: replicaDigest, match: sourceDigest === replicaDigest && checkpointMatch },
    };
  } finally {
    source.shutdown();
    target.shutdown();
  }
}

function printProfiles(results: ProfileResult[], opts: SimBenchOptions): void {
  console.log(`\n== 1. Record and replay per profile: ${opts.memoryMiB} MiB guests, ${opts.units} unit${opts.units === 1 ? '' : 's'} of 10 ms recorded back to back (manual pacing) ==\n`);
  console.log(
    table(
      ['profile', 'guest s', 'rec ms', 'rec units/s', 'x real time', 'rec CPU%', 'log B/unit', 'log kB/s', 'lz4 kB/s', 'lz4 ratio', 'events/s'],
      results.map((r) => [
        r.profile,
        fixed(r.guestSeconds, 2),
        sig(r.record.wallMs),
        sig(r.record.unitsPerSec),
        sig(r.record.speedup),
        fixed(r.record.cpuPercent, 0),
        sig(r.log.bytesPerUnit),
        sig(r.log.bytesPerGuestSec / 1000),
        sig(r.log.lz4BytesPerGuestSec / 1000),
        fixed(r.log.lz4Ratio, 2),
        sig(r.log.eventsPerGuestSec),
      ]),
    ),
  );
  console.log('');
  console.log(
    table(
      ['profile', 'replay ms', 'rep units/s', 'speed-up', 'rep CPU%', 'Minstr/s rec', 'Minstr/s rep', 'faults rec', 'faults rep', 'dirty pg/s (1 s)', 'distinct pg/s', 'distinct MiB', 'digest', 'match'],
      results.map((r) => [
        r.profile,
        sig(r.replay.wallMs),
        sig(r.replay.unitsPerSec),
        sig(r.replay.speedup),
        fixed(r.replay.cpuPercent, 0),
        sig(r.instructions.recordMips),
        sig(r.instructions.replayMips),
        String(r.record.minorFaults),
        String(r.replay.minorFaults),
        r.dirty.pagesPerSecWindowed === null ? '-' : sig(r.dirty.pagesPerSecWindowed),
        sig(r.dirty.distinctPagesPerGuestSec),
        fixed((r.dirty.distinctPages * 4096) / MiB, 1),
        r.digest.source,
        r.digest.match ? 'ok' : r.digest.checkpointMatch ? 'MISMATCH' : 'MISMATCH (ckpt)',
      ]),
    ),
  );
  console.log(
    '\n  x real time / speed-up: guest time covered / wall time. lz4: each unit compressed on its own (shared/lz4.ts),' +
      '\n  incompressible units counted raw. dirty pg/s (1 s): distinct pages per 1 s window of guest time, averaged;' +
      '\n  distinct pg/s: distinct pages over the whole run / its guest seconds. Minstr/s: guest instructions executed' +
      '\n  per wall second (recorded instruction budget of the units / record or replay time). faults: minor page faults' +
      '\n  of the process while recording / replaying (first touches of memory; the replica has never touched the pages' +
      '\n  that the checkpoint elided as zero, the source touched them when its vCPU first read them).',
  );
}

// ---------------------------------------------------------------------------------------------
// Part 2: capture throughput of a 1 GiB checkpoint, and baselines

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

interface CheckpointResult {
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
  baseline: {
    firstTouchMBps: number;
    firstTouchUsPerPage: number;
    memcpyMBps: number;
    xxh64PageMBps: number;
    xxh64MiBMBps: number;
    lz4MiBMBps: number;
    /** The lz4 package's encodeBlock into one output buffer kept across calls: compressBlock without its allocation. */
    lz4ReusedOutputMBps: number;
  };
  modes: { chunks: ModeResult; chunksLz4: ModeResult; chunksLz4Xxh64: ModeResult };
  restore: PassResult & { digestMatch: boolean };
  rss: { before: number; afterBoot: number; afterFirstCheckpoint: number; peakDuringCheckpoints: number; withReplicaRestored: number; afterDiscard: number };
}

type Mode = 'chunks' | 'chunksLz4' | 'chunksLz4Xxh64';

const pass = (bytes: number, w: Stopwatch): PassResult => ({ ms: w.wallMs, MBps: mbps(bytes, w.wallMs), cpuPercent: w.cpuPercent, minorFaults: w.minorFaults });

async function benchCheckpoint(opts: SimBenchOptions): Promise<CheckpointResult> {
  await collectGarbage();
  const rssBefore = rss();
  progress('booting a 1 GiB idle guest');
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  try {
    const bootStart = performance.now();
    const guest = source.createGuest({ id: 'bench-ckpt', profile: 'idle', memoryBytes: CHECKPOINT_MEMORY_BYTES, environmentSeed: 2000, contentSeed: 1 });
    const bootMs = performance.now() - bootStart;
    await guest.step(opts.warmupUnits);
    const digest = guest.digest(); // hashes every written page once, outside any timing
    const rssAfterBoot = rss();
    let rssPeak = rssAfterBoot;

    // One checkpoint pass; the guest is not stepped while it is taken: pure capture cost.
    let chunks = 0;
    let rawBytes = 0;
    let lz4Bytes = 0;
    let chunkBufferBytes = 0;
    let sink = 0n;
    const checkpointPass = async (mode: Mode): Promise<Stopwatch> => {
      await collectGarbage(); // each pass starts without the previous one's garbage
      guest.stopRecording();
      guest.startRecording();
      let raw = 0;
      let compressed = 0;
      let buffers = 0;
      let n = 0;
      const watch = new Stopwatch();
      watch.start();
      for await (const chunk of guest.liveCheckpoint()) {
        raw += chunk.bytes.length;
        buffers += chunk.bytes.buffer.byteLength;
        if (mode !== 'chunks') compressed += compressBlock(chunk.bytes)?.length ?? chunk.bytes.length;
        if (mode === 'chunksLz4Xxh64') sink ^= xxh64(chunk.bytes);
        if ((++n & 63) === 0) rssPeak = Math.max(rssPeak, rss());
      }
      watch.stop();
      rssPeak = Math.max(rssPeak, rss());
      chunks = n;
      rawBytes = raw;
      chunkBufferBytes = buffers;
      if (mode !== 'chunks') lz4Bytes = compressed;
      return watch;
    };

    progress('first checkpoint of the 1 GiB guest after boot');
    const firstCheckpoint = pass(CHECKPOINT_MEMORY_BYTES, await checkpointPass('chunks'));
    const rssAfterFirst = rss();

    // Baselines over the same guest memory, now resident: memcpy in 1 MiB pieces into a 256 MiB
    // ring (larger than any cache, so that writes go to memory too), xxh64 and lz4.
    progress('baselines: first touch, memcpy, xxh64, lz4 over the same 1 GiB');
    const segments = guest.machine.memory.segments.filter((seg): seg is Int32Array => seg !== undefined).map((seg) => Buffer.from(seg.buffer, seg.byteOffset, seg.byteLength));
    const sourceBytes = segments.reduce((n, seg) => n + seg.length, 0);
    const ring = Buffer.allocUnsafeSlow(256 * MiB);
    const touch = new Stopwatch();
    touch.start();
    ring.fill(1);
    touch.stop();
    const firstTouchMBps = mbps(ring.length, touch.wallMs);
    const firstTouchUsPerPage = (touch.wallMs * 1000) / Math.max(1, touch.minorFaults);
    const memcpy: number[] = [];
    const hashPage: number[] = [];
    const hashMiB: number[] = [];
    const lz4MiB: number[] = [];
    const lz4Reused: number[] = [];
    const lz4Out = Buffer.alloc(lz4.encodeBound(MiB));
    for (let rep = 0; rep < opts.checkpointReps; rep++) {
      let ringAt = 0;
      let t = performance.now();
      for (const seg of segments) {
        for (let off = 0; off < seg.length; off += MiB) {
          seg.copy(ring, ringAt, off, off + MiB);
          ringAt = (ringAt + MiB) % ring.length;
        }
      }
      memcpy.push(mbps(sourceBytes, performance.now() - t));
      t = performance.now();
      for (const seg of segments) for (let off = 0; off < seg.length; off += 4096) sink ^= xxh64(seg.subarray(off, off + 4096));
      hashPage.push(mbps(sourceBytes, performance.now() - t));
      t = performance.now();
      for (const seg of segments) for (let off = 0; off < seg.length; off += MiB) sink ^= xxh64(seg.subarray(off, off + MiB));
      hashMiB.push(mbps(sourceBytes, performance.now() - t));
      t = performance.now();
      for (const seg of segments) for (let off = 0; off < seg.length; off += MiB) compressBlock(seg.subarray(off, off + MiB));
      lz4MiB.push(mbps(sourceBytes, performance.now() - t));
      t = performance.now();
      for (const seg of segments) for (let off = 0; off < seg.length; off += MiB) lz4.encodeBlock(seg.subarray(off, off + MiB), lz4Out);
      lz4Reused.push(mbps(sourceBytes, performance.now() - t));
    }
    const baseline = {
      firstTouchMBps,
      firstTouchUsPerPage,
      memcpyMBps: median(memcpy),
      xxh64PageMBps: median(hashPage),
      xxh64MiBMBps: median(hashMiB),
      lz4MiBMBps: median(lz4MiB),
      lz4ReusedOutputMBps: median(lz4Reused),
    };

    const modes: Mode[] = ['chunks', 'chunksLz4', 'chunksLz4Xxh64'];
    const runs: Record<Mode, Array<{ MBps: number; watch: Stopwatch }>> = { chunks: [], chunksLz4: [], chunksLz4Xxh64: [] };
    for (let rep = 0; rep < opts.checkpointReps; rep++) {
      for (const mode of modes) {
        progress(`checkpoint of 1 GiB, ${mode}, repetition ${rep + 1}/${opts.checkpointReps}`);
        const watch = await checkpointPass(mode);
        runs[mode].push({ MBps: mbps(CHECKPOINT_MEMORY_BYTES, watch.wallMs), watch });
      }
    }
    if (sink === 1n) progress('(hash sink)');
    const chunkPages = Math.round(CHECKPOINT_MEMORY_BYTES / 4096 / (chunks - 1));

    // Restore into a replica: only restoreChunk is timed.
    progress('restoring the 1 GiB checkpoint into a replica');
    guest.stopRecording();
    guest.startRecording();
    const replica: TargetReplica = target.reserve(guest.describe());
    const restoreWatch = new Stopwatch();
    let covered = 0;
    for await (const chunk of guest.liveCheckpoint()) {
      covered += chunk.memoryBytesCovered;
      restoreWatch.start();
      replica.restoreChunk(chunk);
      restoreWatch.stop();
    }
    const digestMatch = replica.digest() === digest && guest.digest() === digest;
    const rssWithReplica = rss();
    guest.discard();
    replica.discard();
    await collectGarbage();
    const rssAfterDiscard = rss();

    const mode = (m: Mode): ModeResult => {
      const med = median(runs[m].map((r) => r.MBps));
      const wall = runs[m].reduce((n, r) => n + r.watch.wallMs, 0);
      const cpu = runs[m].reduce((n, r) => n + r.watch.cpuMs, 0);
      return {
        runsMBps: runs[m].map((r) => r.MBps),
        medianMBps: med,
        medianMs: median(runs[m].map((r) => r.watch.wallMs)),
        cpuPercent: (100 * cpu) / wall,
        minorFaultsPerPass: median(runs[m].map((r) => r.watch.minorFaults)),
        vsMemcpy: med / baseline.memcpyMBps,
        vsXxh64Page: med / baseline.xxh64PageMBps,
      };
    };
    return {
      memoryBytes: CHECKPOINT_MEMORY_BYTES,
      reps: opts.checkpointReps,
      chunks,
      chunkPages,
      rawBytes,
      lz4Bytes,
      lz4Ratio: rawBytes / lz4Bytes,
      chunkBufferBytes,
      bootMs,
      firstCheckpoint,
      baseline,
      modes: { chunks: mode('chunks'), chunksLz4: mode('chunksLz4'), chunksLz4Xxh64: mode('chunksLz4Xxh64') },
      restore: { ...pass(covered, restoreWatch), digestMatch },
      rss: {
        before: rssBefore,
        afterBoot: rssAfterBoot,
        afterFirstCheckpoint: rssAfterFirst,
        peakDuringCheckpoints: rssPeak,
        withReplicaRestored: rssWithReplica,
        afterDiscard: rssAfterDiscard,
      },
    };
  } finally {
    source.shutdown();
    target.shutdown();
  }
}

function printCheckpoint(r: CheckpointResult): void {
  console.log(
    `\n== 2. Live checkpoint of a 1 GiB guest (idle profile, default content mix 40% zero / 40% text / 20% random in 2 MiB runs; ` +
      `guest not stepped while it is taken; ${r.chunks - 1} chunks of ${r.chunkPages} pages + 1 state chunk) ==\n`,
  );
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
  console.log('');
  const row = (name: string, m: ModeResult) => [
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
        row('(a) chunks alone (liveCheckpoint)', r.modes.chunks),
        row('(b) chunks + lz4 compressBlock', r.modes.chunksLz4),
        row('(c) chunks + lz4 + xxh64', r.modes.chunksLz4Xxh64),
        single('restore into a fresh replica (restoreChunk)', r.restore),
      ],
    ),
  );
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

// ---------------------------------------------------------------------------------------------
// Part 3: copy-on-write pool and guest stall, checkpointing a writing guest

interface CowResult {
  linkBitsPerSec: number;
  memoryBytes: number;
  chunks: number;
  rawBytes: number;
  /** Time the checkpoint takes on the link (raw chunk bytes at the link's rate). */
  linkSeconds: number;
  unitsRun: number;
  unitsStalled: number;
  /** Link time during which the guest was waiting for room in the pool. */
  stalledLinkSeconds: number;
  /** Wall time the driver counted the guest as stalled (host time, chunks made at host speed). */
  driverStallMs: number;
  poolMaxBytes: number;
  poolBoundBytes: number;
  wallMs: number;
  checkpointDigestMatch: boolean;
  finalDigestMatch: boolean;
  digest: string;
}

async function benchCow(linkBitsPerSec: number, opts: SimBenchOptions): Promise<CowResult> {
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  try {
    const guest = source.createGuest({ id: 'bench-cow', profile: 'mmuncher', memoryBytes: COW_MEMORY_BYTES, environmentSeed: 3000, contentSeed: 1 });
    await guest.step(opts.warmupUnits);
    guest.startRecording();
    const cow = guest.machine.memory.cow;
    if (cow === null) throw new Error('startRecording installed no copy-on-write pool');
    const digestAtCheckpoint = guest.digest();
    const replica = target.reserve(guest.describe());
    const unitSeconds = guest.describe().unitMs / 1000;
    const linkBytesPerSec = linkBitsPerSec / 8;
    const units: SealedUnit[] = [];
    const steps: Promise<void>[] = [];
    let owedUnits = 0;
    let pending: Promise<void> | null = null;
    let unitsRun = 0;
    let unitsStalled = 0;
    let poolMax = 0;
    let chunks = 0;
    let rawBytes = 0;
    let linkSeconds = 0;
    let stalledLinkSeconds = 0;
    const stall0 = guest.recordingStats().stallMs;

    // Runs the units the guest is owed, until one has to wait for room in the pool.
    const runOwed = () => {
      while (owedUnits >= 1 && pending === null) {
        owedUnits -= 1;
        const before = guest.runnerStats().unitsRun;
        const step = guest.step(1);
        steps.push(step);
        if (guest.runnerStats().unitsRun > before) {
          unitsRun++;
          poolMax = Math.max(poolMax, cow.preservedBytes);
        } else {
          // Stalled: it runs once enough preserved pages were sent (taken by the checkpoint).
          unitsStalled++;
          const waiting: Promise<void> = step.then(() => {
            unitsRun++;
            poolMax = Math.max(poolMax, cow.preservedBytes);
            if (pending === waiting) pending = null;
          });
          pending = waiting;
        }
      }
    };

    const t0 = performance.now();
    const iterator = guest.liveCheckpoint()[Symbol.asyncIterator]();
    for (;;) {
      const next: IteratorResult<CheckpointChunk> = await iterator.next();
      if (next.done === true) break;
      const chunk = next.value;
      chunks++;
      rawBytes += chunk.bytes.length;
      replica.restoreChunk(chunk);
      const chunkSeconds = chunk.bytes.length / linkBytesPerSec;
      linkSeconds += chunkSeconds;
      if (pending !== null) {
        // The guest waited for room while this chunk went out: that time is lost to it.
        stalledLinkSeconds += chunkSeconds;
        await flushMacrotask();
      } else {
        owedUnits += chunkSeconds / unitSeconds;
      }
      runOwed();
      await drainQueued(guest, units);
    }
    if (pending !== null) await pending;
    await Promise.all(steps);
    const wallMs = performance.now() - t0;
    const driverStallMs = guest.recordingStats().stallMs - stall0;
    const checkpointDigestMatch = replica.digest() === digestAtCheckpoint;

    await guest.suspend();
    await drainAll(guest, units);
    for (const u of units) replica.applyUnit(u.bytes);
    const digest = guest.digest();
    const finalDigestMatch = replica.digest() === digest;
    guest.discard();
    replica.discard();
    return {
      linkBitsPerSec,
      memoryBytes: COW_MEMORY_BYTES,
      chunks,
      rawBytes,
      linkSeconds,
      unitsRun,
      unitsStalled,
      stalledLinkSeconds,
      driverStallMs,
      poolMaxBytes: poolMax,
      poolBoundBytes: cow.preservedBytesMax,
      wallMs,
      checkpointDigestMatch,
      finalDigestMatch,
      digest,
    };
  } finally {
    source.shutdown();
    target.shutdown();
  }
}

function printCow(results: CowResult[]): void {
  const first = results[0];
  console.log(
    `\n== 3. Copy-on-write pool while checkpointing a writing guest (mmuncher, ${first.memoryBytes / MiB} MiB, pool bound ${mibText(first.poolBoundBytes)}): ` +
      `the guest is stepped between chunk pulls, one 10 ms unit per 10 ms a chunk's raw bytes take on the link ==\n`,
  );
  console.log(
    table(
      ['link', 'ckpt MiB', 'ckpt s on link', 'units run', 'units stalled', 'stall s (link)', 'stall %', 'driver stall ms', 'pool max MiB', 'pool max %', 'wall ms', 'digests'],
      results.map((r) => [
        `${fixed(r.linkBitsPerSec / 1e9, r.linkBitsPerSec < 1e9 ? 1 : 0)} Gbit/s`,
        fixed(r.rawBytes / MiB, 0),
        fixed(r.linkSeconds, 2),
        String(r.unitsRun),
        String(r.unitsStalled),
        fixed(r.stalledLinkSeconds, 2),
        fixed((100 * r.stalledLinkSeconds) / r.linkSeconds, 0),
        sig(r.driverStallMs),
        fixed(r.poolMaxBytes / MiB, 1),
        fixed((100 * r.poolMaxBytes) / r.poolBoundBytes, 0),
        sig(r.wallMs),
        r.checkpointDigestMatch && r.finalDigestMatch ? 'ok' : `MISMATCH (ckpt ${r.checkpointDigestMatch ? 'ok' : 'bad'}, final ${r.finalDigestMatch ? 'ok' : 'bad'})`,
      ]),
    ),
  );
  console.log(
    '\n  stall s (link): link time of the chunks sent while the guest waited for room in the pool (guest time lost);' +
      '\n  driver stall ms: the same waits in host wall time as the driver counts them (chunks made at host speed, no link).' +
      '\n  digests: replica after restore = guest at the checkpoint instant, and after replaying every unit = guest at suspend.',
  );
}

// ---------------------------------------------------------------------------------------------
// Entry point

export async function runSimBench(argv: string[]): Promise<number> {
  let opts: SimBenchOptions | 'help';
  try {
    opts = parseOptions(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`bench sim: ${error.message}\n\n${USAGE}`);
    return 2;
  }
  if (opts === 'help') {
    console.log(USAGE);
    return 0;
  }
  const started = performance.now();
  const cpus = os.cpus();
  const host = { node: process.version, platform: `${os.platform()} ${os.arch()}`, cpus: cpus.length, cpuModel: cpus[0]?.model ?? 'unknown', memoryBytes: os.totalmem() };
  console.log(
    `sim driver benchmark${opts.quick ? ' (--quick)' : ''}: Node ${host.node}, ${host.platform}, ${host.cpus} x ${host.cpuModel}, ${fixed(host.memoryBytes / GiB, 1)} GiB RAM`,
  );
  console.log('MB = 10^6 bytes, MiB = 2^20 bytes, kB = 10^3 bytes; figures are measured, nothing is asserted about them');
  const loadStart = os.loadavg();
  console.log(`load average at start ${loadStart.map((x) => fixed(x, 2)).join(' ')} (1/5/15 min; other processes on a ${host.cpus}-CPU host skew the timings)`);

  let failures = 0;
  const out: Record<string, unknown> = { bench: 'sim', quick: opts.quick, host };

  if (opts.parts.has('replay')) {
    const results: ProfileResult[] = [];
    for (const [i, profile] of opts.profiles.entries()) {
      progress(`profile ${profile}: boot ${opts.memoryMiB} MiB, record ${opts.units} units, replay`);
      const r = await benchProfile(profile, i, opts);
      if (!r.digest.match) failures++;
      results.push(r);
      await collectGarbage();
    }
    printProfiles(results, opts);
    out.profiles = { memoryBytes: opts.memoryMiB * MiB, units: opts.units, warmupUnits: opts.warmupUnits, results };
  }

  if (opts.parts.has('checkpoint')) {
    const r = await benchCheckpoint(opts);
    if (!r.restore.digestMatch) failures++;
    printCheckpoint(r);
    out.checkpoint = r;
    await collectGarbage();
  }

  if (opts.parts.has('cow')) {
    const results: CowResult[] = [];
    for (const link of opts.linkBitsPerSec) {
      progress(`copy-on-write: mmuncher ${COW_MEMORY_BYTES / MiB} MiB checkpointed at ${link / 1e9} Gbit/s`);
      const r = await benchCow(link, opts);
      if (!r.checkpointDigestMatch || !r.finalDigestMatch) failures++;
      results.push(r);
      await collectGarbage();
    }
    printCow(results);
    out.cow = results;
  }

  const totalSeconds = (performance.now() - started) / 1000;
  const loadEnd = os.loadavg();
  console.log(
    `\n${failures === 0 ? 'all digests match' : `${failures} DIGEST MISMATCH(ES)`}; total ${fixed(totalSeconds, 1)} s; ` +
      `load average at end ${loadEnd.map((x) => fixed(x, 2)).join(' ')}`,
  );
  out.loadAverage = { start: loadStart, end: loadEnd };
  out.failures = failures;
  out.totalSeconds = totalSeconds;
  if (opts.json) console.log(JSON.stringify(out));
  return failures === 0 ? 0 : 1;
}
