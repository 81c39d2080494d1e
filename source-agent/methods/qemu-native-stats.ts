// qemu-native's figures: what the hypervisor says of its own migration (NativeMigrationInfo,
// QEMU's query-migrate) written into the job's statistics, into the fields of the same meaning
// where there is one (expected downtime, remaining bytes, passes as rounds, pages sent, post-copy
// page requests, throttle), and into the native* fields where QEMU counts from other instants
// than the agents (its setup, total and downtime). Also the non-convergence policy's verdict on
// QEMU's passes. Pure functions: tested without a QEMU.

import { type BacklogSample, judgeConvergence, type NonConvergenceDecision, nonConvergenceAction, type NonConvergencePolicy } from '../../shared/convergence.js';
import type { NativeMigrationInfo } from '../../shared/driver/native-types.js';
import type { MigrationStats } from '../../shared/stats.js';

/** Per-pass samples kept for the convergence verdict (QEMU's passes last from milliseconds to seconds). */
export const PASS_SAMPLES_MAX = 200;

/** Writes `info` into `s` (see the file's header). */
export function applyNativeInfo(s: MigrationStats, info: NativeMigrationInfo): void {
  s.nativeStatus = info.status;
  s.nativeSetupTimeMs = info.setupTimeMs;
  s.nativeTotalTimeMs = info.totalTimeMs;
  s.nativeDowntimeMs = info.downtimeMs;
  s.nativeTransferredBytes = info.transferredBytes;
  s.dirtyPagesPerSec = info.dirtyPagesPerSec;
  s.remainingBytes = info.remainingBytes;
  // QEMU says it while its pre-copy passes run; past them the switchover is under way or done.
  if (info.expectedDowntimeMs > 0) s.expectedDowntimeMs = info.expectedDowntimeMs;
  s.rounds = info.passes;
  s.pagesSent = info.normalPages;
  s.demandPages = info.postcopyRequests;
  s.throttle = 1 - info.throttlePercent / 100;
  // The first pass covers the guest's memory once (the checkpoint's share, in the job's view).
  const covered = info.status === 'completed' || info.passes > 1 ? s.memoryBytes : Math.max(0, Math.min(s.memoryBytes, info.totalBytes - info.remainingBytes));
  s.checkpointMemoryBytesCovered = Math.max(s.checkpointMemoryBytesCovered, covered);
}

/** A sentence for watchers at each new pass of QEMU's pre-copy. */
export function passMessage(info: NativeMigrationInfo): string {
  const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
  return `QEMU pass ${info.passes}: ${mib(info.remainingBytes)} MiB left, ${mib(info.transferredBytes)} MiB sent so far, the guest dirties ${Math.round(info.dirtyPagesPerSec)} pages/s, expected downtime ${Math.round(info.expectedDowntimeMs)} ms`;
}

export interface NativeConvergenceInputs {
  policy: NonConvergencePolicy;
  /** The migration's elapsed time and its maximum. */
  elapsedMs: number;
  maxDurationMs: number;
  downtimeLimitMs: number;
  convergenceWindowMs: number;
  /** What is left at the start of each pass (its dirty set), oldest first. */
  passes: readonly BacklogSample[];
  info: NativeMigrationInfo;
}

/**
 * The non-convergence policy on QEMU's pre-copy: the backlog is what is left at the start of each
 * pass, and it fits when QEMU expects to switch within the downtime limit (its allowance is then
 * the bytes left, scaled by the limit over the expected downtime). abort: fail; force: QEMU's
 * downtime limit is raised so that it switches at once; throttle: QEMU's auto-converge slows the
 * guest by itself, so nothing more is done until the maximum duration (then abort).
 */
export function nativeConvergence(i: NativeConvergenceInputs): NonConvergenceDecision {
  const allowed = i.info.expectedDowntimeMs > 0 ? (i.info.remainingBytes * i.downtimeLimitMs) / i.info.expectedDowntimeMs : 0;
  const verdict = judgeConvergence(i.passes, i.convergenceWindowMs, allowed);
  return nonConvergenceAction(i.policy, verdict, i.elapsedMs, i.maxDurationMs, 1 - i.info.throttlePercent / 100);
}
