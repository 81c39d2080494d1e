// Part 1 of the sim benchmark: per workload profile, record N units back to back, then replay them
// into a replica restored from the checkpoint taken when recording started. Record and replay
// throughput, the log's size (raw and lz4), events, dirty pages, and the state digests.

import type { ProfileName, SimReplica, SimSourceGuest } from '../../shared/driver/sim/index.js';
import { peekUnitHeader } from '../../shared/driver/sim/unit-codec.js';
import { PAGE_BYTES, type PageAccess, type SealedUnit } from '../../shared/driver/types.js';
import { compressBlock } from '../../shared/lz4.js';
import { fixed, MIB_BYTES, sig, table } from '../format.js';
import { CONTENT_SEED, drainAll, drainQueued, withDrivers } from './drivers.js';
import { collectGarbage, megabytesPerSec, progress, Stopwatch } from './measure.js';
import type { SimBenchOptions } from './options.js';

/** The guest of the profile at index i gets environment seed ENVIRONMENT_SEED_BASE + i. */
const ENVIRONMENT_SEED_BASE = 1000;
/** Distinct dirty pages are counted per window of this much guest time ("dirty pg/s (1 s)"). */
const DIRTY_WINDOW_MS = 1000;

/** Wall and CPU time of recording or replaying the units, and the rates they give. */
interface Throughput {
  wallMs: number;
  cpuMs: number;
  minorFaults: number;
  unitsPerSec: number;
  /** Guest time covered / wall time. */
  speedup: number;
  cpuPercent: number;
}

export interface ProfileResult {
  profile: ProfileName;
  memoryBytes: number;
  units: number;
  guestSeconds: number;
  bootMs: number;
  record: Throughput & { stallMs: number };
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
  replay: Throughput;
  instructions: { total: number; recordMips: number; replayMips: number };
  dirty: { windowUnits: number; fullWindows: number; pagesPerSecWindowed: number | null; distinctPages: number; distinctPagesPerGuestSec: number };
  digest: { checkpointMatch: boolean; source: string; replica: string; match: boolean };
}

/** Distinct dirty pages per window of `windowUnits` units, and over the whole recording. */
class DirtyPageCounter {
  /** Dirty pages of each full window. */
  readonly windowCounts: number[] = [];
  distinctPages = 0;
  private readonly everDirty: Uint8Array;
  private unitsInWindow = 0;

  constructor(
    pageCount: number,
    readonly windowUnits: number,
  ) {
    this.everDirty = new Uint8Array(pageCount);
  }

  /** Counts one unit run; at the end of a window, or of the recording, takes the pages dirtied in it. */
  unitDone(pages: PageAccess, last: boolean): void {
    this.unitsInWindow++;
    const windowFull = this.unitsInWindow === this.windowUnits;
    if (!windowFull && !last) return;
    const dirty = pages.fetchAndClearDirty();
    for (const page of dirty) {
      if (this.everDirty[page] === 0) {
        this.everDirty[page] = 1;
        this.distinctPages++;
      }
    }
    if (windowFull) this.windowCounts.push(dirty.length);
    this.unitsInWindow = 0;
  }
}

interface Recording {
  /** Every unit, the final one (sealed at the suspend) included. */
  units: SealedUnit[];
  watch: Stopwatch;
  unitMs: number;
  /** Time the driver counted the guest as stalled while recording. */
  stallMs: number;
  dirty: DirtyPageCounter;
}

/** Steps the recording guest one unit at a time, timing each step and the take of its unit; then suspends it. */
async function record(guest: SimSourceGuest, unitCount: number): Promise<Recording> {
  const unitMs = guest.describe().unitMs;
  const dirty = new DirtyPageCounter(guest.pages.pageCount, Math.max(1, Math.round(DIRTY_WINDOW_MS / unitMs)));
  const units: SealedUnit[] = [];
  const watch = new Stopwatch();
  const stallMsBefore = guest.recordingStats().stallMs;
  guest.pages.startDirtyTracking();
  for (let i = 0; i < unitCount; i++) {
    watch.start();
    await guest.step(1);
    await drainQueued(guest, units);
    watch.stop();
    dirty.unitDone(guest.pages, i === unitCount - 1);
  }
  const stallMs = guest.recordingStats().stallMs - stallMsBefore;
  await guest.suspend();
  await drainAll(guest, units);
  return { units, watch, unitMs, stallMs, dirty };
}

/** What the log holds: its bytes, events, guest time and instructions, and its units before the final one. */
interface LogTotals {
  logBytes: number;
  events: number;
  guestSeconds: number;
  instructions: number;
  recordedUnits: number;
}

function logTotals(units: SealedUnit[]): LogTotals {
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
  return { logBytes, events, guestSeconds: guestNs / 1e9, instructions, recordedUnits };
}

/** lz4 of each unit on its own (an incompressible one counted raw), and the time it took. */
interface Compressed {
  lz4Bytes: number;
  lz4Ms: number;
}

function compressEach(units: SealedUnit[]): Compressed {
  const start = performance.now();
  let lz4Bytes = 0;
  for (const u of units) lz4Bytes += compressBlock(u.bytes)?.length ?? u.bytes.length;
  return { lz4Bytes, lz4Ms: performance.now() - start };
}

function replay(replica: SimReplica, units: SealedUnit[]): Stopwatch {
  const watch = new Stopwatch();
  watch.start();
  for (const u of units) replica.applyUnit(u.bytes);
  watch.stop();
  return watch;
}

function throughput(watch: Stopwatch, units: number, guestSeconds: number): Throughput {
  return {
    wallMs: watch.wallMs,
    cpuMs: watch.cpuMs,
    minorFaults: watch.minorFaults,
    unitsPerSec: units / (watch.wallMs / 1000),
    speedup: guestSeconds / (watch.wallMs / 1000),
    cpuPercent: watch.cpuPercent,
  };
}

interface Measured {
  profile: ProfileName;
  memoryBytes: number;
  bootMs: number;
  recording: Recording;
  log: LogTotals;
  lz4: Compressed;
  replayWatch: Stopwatch;
  digest: ProfileResult['digest'];
}

function profileResult({ profile, memoryBytes, bootMs, recording, log, lz4, replayWatch, digest }: Measured): ProfileResult {
  const { logBytes, events, guestSeconds, instructions, recordedUnits } = log;
  const { lz4Bytes, lz4Ms } = lz4;
  const { dirty, unitMs, watch: recordWatch } = recording;
  const windowCounts = dirty.windowCounts;
  return {
    profile,
    memoryBytes,
    units: recordedUnits,
    guestSeconds,
    bootMs,
    record: { ...throughput(recordWatch, recordedUnits, guestSeconds), stallMs: recording.stallMs },
    log: {
      bytes: logBytes,
      bytesPerUnit: logBytes / recordedUnits,
      bytesPerGuestSec: logBytes / guestSeconds,
      lz4Bytes,
      lz4BytesPerGuestSec: lz4Bytes / guestSeconds,
      lz4Ratio: logBytes / lz4Bytes,
      lz4MBps: megabytesPerSec(logBytes, lz4Ms),
      events,
      eventsPerGuestSec: events / guestSeconds,
    },
    replay: throughput(replayWatch, recordedUnits, guestSeconds),
    instructions: {
      total: instructions,
      recordMips: instructions / 1e6 / (recordWatch.wallMs / 1000),
      replayMips: instructions / 1e6 / (replayWatch.wallMs / 1000),
    },
    dirty: {
      windowUnits: dirty.windowUnits,
      fullWindows: windowCounts.length,
      pagesPerSecWindowed: windowCounts.length === 0 ? null : (windowCounts.reduce((a, b) => a + b, 0) / windowCounts.length) * (1000 / (dirty.windowUnits * unitMs)),
      distinctPages: dirty.distinctPages,
      distinctPagesPerGuestSec: dirty.distinctPages / guestSeconds,
    },
    digest,
  };
}

async function benchProfile(profile: ProfileName, index: number, opts: SimBenchOptions): Promise<ProfileResult> {
  const memoryBytes = opts.memoryMiB * MIB_BYTES;
  return withDrivers(async ({ source, target }) => {
    const bootStart = performance.now();
    const guest = source.createGuest({ id: `bench-${profile}`, profile, memoryBytes, environmentSeed: ENVIRONMENT_SEED_BASE + index, contentSeed: CONTENT_SEED });
    const bootMs = performance.now() - bootStart;
    await guest.step(opts.warmupUnits);

    // Checkpoint first, completely, with the guest still: the recorded run then has no
    // copy-on-write pool to fill (that is part 3).
    guest.startRecording();
    const digestAtCheckpoint = guest.digest();
    const replica = target.reserve(guest.describe());
    for await (const chunk of guest.liveCheckpoint()) replica.restoreChunk(chunk);
    const checkpointMatch = replica.digest() === digestAtCheckpoint;

    const recording = await record(guest, opts.units);
    const sourceDigest = guest.digest();
    const log = logTotals(recording.units);
    const lz4 = compressEach(recording.units);
    const replayWatch = replay(replica, recording.units);
    const replicaDigest = replica.digest();
    guest.discard();
    replica.discard();
    const digest = { checkpointMatch, source: sourceDigest, replica: replicaDigest, match: sourceDigest === replicaDigest && checkpointMatch };
    return profileResult({ profile, memoryBytes, bootMs, recording, log, lz4, replayWatch, digest });
  });
}

function printRecordTable(results: ProfileResult[]): void {
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
}

function printReplayTable(results: ProfileResult[]): void {
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
        fixed((r.dirty.distinctPages * PAGE_BYTES) / MIB_BYTES, 1),
        r.digest.source,
        r.digest.match ? 'ok' : r.digest.checkpointMatch ? 'MISMATCH' : 'MISMATCH (ckpt)',
      ]),
    ),
  );
}

function printProfiles(results: ProfileResult[], opts: SimBenchOptions): void {
  console.log(`\n== 1. Record and replay per profile: ${opts.memoryMiB} MiB guests, ${opts.units} unit${opts.units === 1 ? '' : 's'} of 10 ms recorded back to back (manual pacing) ==\n`);
  printRecordTable(results);
  console.log('');
  printReplayTable(results);
  console.log(
    '\n  x real time / speed-up: guest time covered / wall time. lz4: each unit compressed on its own (shared/lz4.ts),' +
      '\n  incompressible units counted raw. dirty pg/s (1 s): distinct pages per 1 s window of guest time, averaged;' +
      '\n  distinct pg/s: distinct pages over the whole run / its guest seconds. Minstr/s: guest instructions executed' +
      '\n  per wall second (recorded instruction budget of the units / record or replay time). faults: minor page faults' +
      '\n  of the process while recording / replaying (first touches of memory; the replica has never touched the pages' +
      '\n  that the checkpoint elided as zero, the source touched them when its vCPU first read them).',
  );
}

/** Part 1 for every profile of `opts`: prints its tables; `failures` counts digest mismatches. */
export async function runReplayPart(opts: SimBenchOptions): Promise<{ failures: number; figures: { memoryBytes: number; units: number; warmupUnits: number; results: ProfileResult[] } }> {
  const results: ProfileResult[] = [];
  let failures = 0;
  for (const [i, profile] of opts.profiles.entries()) {
    progress(`profile ${profile}: boot ${opts.memoryMiB} MiB, record ${opts.units} units, replay`);
    const r = await benchProfile(profile, i, opts);
    if (!r.digest.match) failures++;
    results.push(r);
    await collectGarbage();
  }
  printProfiles(results, opts);
  return { failures, figures: { memoryBytes: opts.memoryMiB * MIB_BYTES, units: opts.units, warmupUnits: opts.warmupUnits, results } };
}
