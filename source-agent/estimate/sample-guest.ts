// Measuring a running guest for a prediction, without migrating it:
// - its memory's content: a sample of pages read through its page-access capability, how many are
//   zero, and how small lz4 makes the others (and how fast, on this host's core);
// - its dirtying: distinct pages dirtied over windows of 250 ms, 500 ms, 1 s, 2 s, ... of one
//   sampling period (the page-access capability's dirty tracking); a guest without page access
//   whose hypervisor measures its dirty rate itself (qemu: calc-dirty-rate) gives one window, the
//   period, and its content is not sampled (every page counted as sent whole: an upper bound);
// - its busy share: CPU time of this process over the period (a `sim` guest's vCPU runs in the
//   agent's process; other work of the agent counts too, which makes replay look slower); for a
//   guest of another driver this process's CPU says nothing, so the share is not known and taken
//   as 1 (replay no faster than the guest: the prediction errs on the slow side);
// - its log rate: modelled from a `sim` guest's workload rates (estimate-hints.ts), since a
//   recorder cannot record without a live checkpoint.
// Everything is bounded: the pages read (SAMPLE_PAGES_MAX), the period (the caller's, at most
// 30 s), one bitmap of the guest's page count.

import type { Clock } from '../../shared/clock.js';
import { simEstimateHints } from '../../shared/driver/sim/estimate-hints.js';
import { PAGE_BYTES, type PageAccess, type SourceGuest } from '../../shared/driver/types.js';
import { compressBlock } from '../../shared/lz4.js';
import { Random } from '../../shared/random.js';
import type { DirtyWindow } from './model.js';

/** Pages read to measure content: 256 runs of 16 pages (64 KiB, lz4's window), 16 MiB in all. */
export const SAMPLE_PAGES_MAX = 4096;
const RUN_PAGES = 16;
/** Non-zero pages compressed together, as a 1 MiB checkpoint chunk is. */
const BLOCK_PAGES = 256;
/** The first dirty window; each next one doubles, up to the period. */
const FIRST_WINDOW_MS = 250;

/** Where a measured input came from. */
export type InputSource = 'measured' | 'configured' | 'workload-model' | 'unknown';

export interface ContentSample {
  sampledPages: number;
  nonZeroFraction: number;
  /** lz4 wire bytes per raw byte of the non-zero pages sampled (1 when none). */
  pageWireRatio: number;
  /** lz4's speed on them, raw bytes per second (0: too little to time). */
  compressBytesPerSec: number;
}

export interface GuestSample extends ContentSample {
  memoryBytes: number;
  unitMs: number;
  periodMs: number;
  dirtyWindows: DirtyWindow[];
  dirtySource: InputSource;
  busyFraction: number;
  busySource: InputSource;
  logBytesPerSec: number;
  logSource: InputSource;
  /** The guest's copy-on-write pool for a live checkpoint (0: not known). */
  cowPoolBytes: number;
}

export interface GuestSampleOptions {
  periodMs: number;
  clock: Clock;
  signal?: AbortSignal;
  /** Seed of the page sample's positions. */
  seed?: number;
  /** CPU time of this process, microseconds (process.cpuUsage). */
  cpuUsage?: () => { user: number; system: number };
}

function isZero(page: Uint8Array): boolean {
  const words = new Int32Array(page.buffer, page.byteOffset, PAGE_BYTES / 4);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}

/** Zero pages and lz4 ratio of a sample of runs of pages at random places. */
export function sampleContent(pages: PageAccess, random: Random): ContentSample {
  const runs = Math.max(1, Math.min(SAMPLE_PAGES_MAX, pages.pageCount) / RUN_PAGES);
  const run = new Uint8Array(RUN_PAGES * PAGE_BYTES);
  const block = new Uint8Array(BLOCK_PAGES * PAGE_BYTES);
  let sampled = 0;
  let nonZero = 0;
  let inBlock = 0;
  let raw = 0;
  let wire = 0;
  let compressMs = 0;
  const flush = () => {
    if (inBlock === 0) return;
    const bytes = block.subarray(0, inBlock * PAGE_BYTES);
    const t0 = performance.now();
    wire += compressBlock(bytes)?.length ?? bytes.length;
    compressMs += performance.now() - t0;
    raw += bytes.length;
    inBlock = 0;
  };
  for (let i = 0; i < runs; i++) {
    const count = Math.min(RUN_PAGES, pages.pageCount);
    const first = random.nextInt(pages.pageCount - count + 1);
    pages.readPages(first, count, run);
    for (let p = 0; p < count; p++) {
      const page = run.subarray(p * PAGE_BYTES, (p + 1) * PAGE_BYTES);
      sampled++;
      if (isZero(page)) continue;
      nonZero++;
      block.set(page, inBlock * PAGE_BYTES);
      if (++inBlock === BLOCK_PAGES) flush();
    }
  }
  flush();
  return {
    sampledPages: sampled,
    nonZeroFraction: sampled > 0 ? nonZero / sampled : 0,
    pageWireRatio: raw > 0 ? wire / raw : 1,
    compressBytesPerSec: compressMs > 0.5 ? raw / (compressMs / 1000) : 0,
  };
}

/** Ends of the dirty windows for a period: 250, 500, 1000, ... ms, then the period itself. */
export function windowEnds(periodMs: number): number[] {
  const ends: number[] = [];
  for (let at = FIRST_WINDOW_MS; at < periodMs; at *= 2) ends.push(at);
  ends.push(periodMs);
  return ends;
}

/** Distinct pages dirtied from the start of tracking to the end of each window. */
async function sampleDirtying(pages: PageAccess, o: GuestSampleOptions): Promise<DirtyWindow[]> {
  const seen = new Uint8Array(pages.pageCount);
  let distinct = 0;
  const windows: DirtyWindow[] = [];
  const start = o.clock.now();
  pages.startDirtyTracking();
  try {
    for (const end of windowEnds(o.periodMs)) {
      // A timer may fire a little early: sleep again until the window's end has passed.
      while (o.clock.now() < start + end) await o.clock.sleep(Math.max(1, start + end - o.clock.now()), o.signal);
      const dirty = pages.fetchAndClearDirty();
      for (const p of dirty) {
        if (seen[p] === 0) {
          seen[p] = 1;
          distinct++;
        }
      }
      windows.push({ windowMs: o.clock.now() - start, pages: distinct });
    }
  } finally {
    pages.stopDirtyTracking();
  }
  return windows;
}

/** The hypervisor's dirty rate as one window: the pages it dirtied over the span, at most all of them. */
function hypervisorWindow(rate: { dirtyBytesPerSec: number; periodMs: number }, memoryBytes: number): DirtyWindow {
  const pages = Math.min(memoryBytes / PAGE_BYTES, (rate.dirtyBytesPerSec * rate.periodMs) / 1000 / PAGE_BYTES);
  return { windowMs: rate.periodMs, pages: Math.round(pages) };
}

/** Samples `guest` for one period (see the head comment). */
export async function sampleGuest(guest: SourceGuest, o: GuestSampleOptions): Promise<GuestSample> {
  const description = guest.describe();
  const pages = guest.pages;
  const content: ContentSample = pages ? sampleContent(pages, new Random(o.seed ?? Random.seedFromOs())) : { sampledPages: 0, nonZeroFraction: 1, pageWireRatio: 1, compressBytesPerSec: 0 };
  const cpuUsage = o.cpuUsage ?? (() => process.cpuUsage());
  const cpuStart = cpuUsage();
  const start = o.clock.now();
  let dirtyWindows: DirtyWindow[] = [];
  const measure = guest.nativeStream?.measureDirtying?.bind(guest.nativeStream);
  if (pages) dirtyWindows = await sampleDirtying(pages, o);
  else if (measure !== undefined) dirtyWindows = [hypervisorWindow(await measure(o.periodMs, o.signal), description.memoryBytes)];
  else await o.clock.sleep(o.periodMs, o.signal);
  const periodMs = o.clock.now() - start;
  const cpuEnd = cpuUsage();
  const cpuMs = (cpuEnd.user - cpuStart.user + cpuEnd.system - cpuStart.system) / 1000;
  const hints = simEstimateHints(guest);
  return {
    ...content,
    memoryBytes: description.memoryBytes,
    unitMs: description.unitMs,
    periodMs,
    dirtyWindows,
    dirtySource: pages || measure !== undefined ? 'measured' : 'unknown',
    busyFraction: hints !== null && periodMs > 0 ? Math.min(1, cpuMs / periodMs) : 1,
    busySource: hints !== null ? 'measured' : 'unknown',
    logBytesPerSec: hints?.logBytesPerSec ?? 0,
    logSource: hints ? 'workload-model' : 'unknown',
    cowPoolBytes: hints?.cowPoolBytes ?? 0,
  };
}
