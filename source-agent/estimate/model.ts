// What the prediction of a migration works from (measured inputs) and what it answers per method,
// and the rates every method's model derives from the inputs alike. The formulas are in
// predict.ts's head comment.

import { PAGE_BYTES } from '../../shared/driver/types.js';
import type { MigrationMethod } from '../../shared/stats.js';
import { type DirtyWindow, fitWorkingSet, type WorkingSet } from './working-set.js';

export type { DirtyWindow } from './working-set.js';

/** The measured guest and link a prediction starts from. */
export interface PredictionInputs {
  memoryBytes: number;
  /** Share of guest pages that are not zero (a zero page costs a bit in a bitmap, not a page). */
  nonZeroFraction: number;
  /** Bytes on the wire per raw byte of non-zero pages after lz4 (1: incompressible). */
  pageWireRatio: number;
  /** lz4 compression speed of one core, raw bytes per second (0: not limiting). */
  compressBytesPerSec: number;
  /** Guest memory the target restores per second (0: not measured, taken as not limiting). */
  restoreBytesPerSec: number;
  /** Distinct pages dirtied over windows of time from one start (working-set.ts). */
  dirtyWindows: readonly DirtyWindow[];
  /** Share of its time the guest's vCPU computes (replay skips the rest). */
  busyFraction: number;
  /** Log bytes the guest's recording would produce per second (raw, counted as sent). */
  logBytesPerSec: number;
  unitMs: number;
  /** Bandwidth of the link to the target, bytes per second (0: not known, taken as not limiting). */
  linkBytesPerSec: number;
  rttMs: number;
  /** The migration's bandwidth cap, bytes per second (0: none). */
  maxBandwidthBytesPerSec: number;
  downtimeLimitMs: number;
  /** CR/TR's copy-on-write pool: pages preserved for the live checkpoint, at most (0: unbounded). */
  cowPoolBytes: number;
  /** Methods both agents can carry out; the others are predicted, never recommended. */
  available: readonly MigrationMethod[];
  /**
   * The methods the source guest's driver can carry out, which are the ones predicted (default:
   * crtr, precopy and postcopy, the sim's; a qemu guest's is qemu-native).
   */
  methods?: readonly MigrationMethod[];
  /** Both agents make delta checkpoints: CR/TR catches up the hybrid way (shared/catch-up.ts). */
  hybridCatchUp: boolean;
  /** CR/TR stops after its final approach (shared/approach.ts) where one pays; the default, as a migration's. */
  finalApproach?: boolean;
  /** The migration's maximum duration (default: the agents' own default, MAX_DURATION_MS_DEFAULT). */
  maxDurationMs?: number;
}

/** The agents' default maximum duration of a migration (migration.maxDurationMs, shared/config.ts). */
export const MAX_DURATION_MS_DEFAULT = 600_000;

/** What one method would cost. Times are Infinity when the method would never get there. */
export interface MethodPrediction {
  method: MigrationMethod;
  /** CR/TR catching up by replaying the log only (no delta checkpoints), for comparison. */
  logOnlyCatchUp: boolean;
  available: boolean;
  /** It completes with a downtime within the limit. */
  converges: boolean;
  /** Suspend on the source to resume on the target. */
  downtimeMs: number;
  /** Start to commit. */
  totalTimeMs: number;
  /** Every byte between the agents. */
  bytes: number;
  /** The guest's lost progress: downtime, stalls on the copy-on-write pool, post-copy's page faults. */
  disruptionMs: number;
  /** Pre-copy: rounds; CR/TR: delta rounds of the hybrid catch-up; post-copy: 0. */
  rounds: number;
  reason: string;
}

/** Rates derived once from the inputs, shared by the three models. */
export interface Derived {
  pageCount: number;
  nonZeroPages: number;
  /** Wire bytes of one non-zero page after lz4. */
  pageWireBytes: number;
  /** Bytes per second the migration may put on the link (Infinity: not limited). */
  linkBytesPerSec: number;
  /** Guest seconds replayed per wall second: 1 / busyFraction, at most REPLAY_RATE_MAX. */
  replayRate: number;
  workingSet: WorkingSet;
  /** Log bytes of one unit. */
  unitLogBytes: number;
}

/** Replay cannot skip everything: decoding and delivering events cost time of their own. */
export const REPLAY_RATE_MAX = 100;
/** Round trips before anything moves: capacity, then the reservation. */
export const SETUP_ROUND_TRIPS = 2;
/** The vCPU and device state sent with the last pages (order of magnitude of the sim guest's). */
export const MACHINE_STATE_BYTES = 4096;
/** A page batch names each page (4 bytes) and flags it present or zero (1 bit). */
export const PAGE_BATCH_BYTES_PER_PAGE = 4.125;
/** Share of the others' disruption post-copy must stay under to be recommended (see predict.ts). */
export const POSTCOPY_PREFERENCE = 0.5;

export function derive(inputs: PredictionInputs): Derived {
  const pageCount = Math.floor(inputs.memoryBytes / PAGE_BYTES);
  const caps = [inputs.linkBytesPerSec, inputs.maxBandwidthBytesPerSec].filter((b) => b > 0);
  return {
    pageCount,
    nonZeroPages: Math.round(pageCount * clamp(inputs.nonZeroFraction, 0, 1)),
    pageWireBytes: PAGE_BYTES * clamp(inputs.pageWireRatio, 0, 1.01),
    linkBytesPerSec: caps.length > 0 ? Math.min(...caps) : Infinity,
    replayRate: Math.min(REPLAY_RATE_MAX, 1 / Math.max(1 / REPLAY_RATE_MAX, inputs.busyFraction)),
    workingSet: fitWorkingSet(inputs.dirtyWindows, pageCount),
    unitLogBytes: (inputs.logBytesPerSec * inputs.unitMs) / 1000,
  };
}

/**
 * Seconds to move `pages` non-zero pages when the link gives them `wireBytesPerSec`: the slowest
 * of the link, the source's compression and the target's restore sets the pace (they overlap
 * chunk by chunk).
 */
export function pageSeconds(inputs: PredictionInputs, d: Derived, pages: number, wireBytesPerSec: number): number {
  if (pages <= 0) return 0;
  const perPage = Math.max(
    wireBytesPerSec > 0 ? d.pageWireBytes / wireBytesPerSec : Infinity,
    inputs.compressBytesPerSec > 0 ? PAGE_BYTES / inputs.compressBytesPerSec : 0,
    inputs.restoreBytesPerSec > 0 ? PAGE_BYTES / inputs.restoreBytesPerSec : 0,
  );
  return pages * perPage;
}

/** Seconds `bytes` take on the link (0 when it is not limited). */
export function linkSeconds(d: Derived, bytes: number): number {
  return d.linkBytesPerSec === Infinity ? 0 : bytes / d.linkBytesPerSec;
}

export function clamp(x: number, low: number, high: number): number {
  return Number.isFinite(x) ? Math.min(high, Math.max(low, x)) : low;
}

/** A duration for a reason string: "840 ms", "3.2 s", "never". */
export function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return 'never';
  return ms < 10_000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** Bytes for a reason string, in MiB. */
export function fmtMiB(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
