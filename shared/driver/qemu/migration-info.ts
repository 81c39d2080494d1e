// QEMU's answer to query-migrate, read into NativeMigrationInfo (native-types.ts): a pure
// function, so that the figures the job shows are tested without a QEMU. QEMU leaves out what
// does not apply yet (no `ram` during setup, no `downtime` before the end, no `expected-downtime`
// outside the active pre-copy phase): missing or malformed numbers read as 0.

import type { NativeMigrationInfo } from '../native-types.js';

/** The statuses in which a migration is still under way (QEMU's MigrationStatus). */
export const MIGRATION_RUNNING_STATUSES: ReadonlySet<string> = new Set(['setup', 'active', 'device', 'pre-switchover', 'wait-unplug', 'cancelling', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'colo']);

/** QEMU's documented limits of the two parameters the agents set. */
export const QEMU_DOWNTIME_LIMIT_MS_MAX = 2_000_000;
/** max-bandwidth takes any size_t; QEMU's default is 128 MiB/s, so "unlimited" must be said with a large one. */
export const QEMU_BANDWIDTH_UNLIMITED = 1e12;

function numberAt(object: unknown, key: string): number {
  if (object === null || typeof object !== 'object') return 0;
  const value = (object as Record<string, unknown>)[key];
  return typeof value === 'number' && Number.isFinite(value) && value >= 0 ? value : 0;
}

/** NativeMigrationInfo from query-migrate's answer (any object: QEMU's, or a test's). */
export function migrationInfoOf(answer: unknown): NativeMigrationInfo {
  const a = answer !== null && typeof answer === 'object' ? (answer as Record<string, unknown>) : {};
  const ram = a.ram;
  const status = typeof a.status === 'string' ? a.status : '';
  const totalTimeMs = numberAt(a, 'total-time');
  // QEMU 7.2 has reported, after a post-copy, a downtime of hours beyond the migration's total
  // time: a downtime longer than the whole migration is no measurement, and reads as 0.
  const downtimeMs = numberAt(a, 'downtime');
  return {
    status,
    setupTimeMs: numberAt(a, 'setup-time'),
    totalTimeMs,
    downtimeMs: totalTimeMs > 0 && downtimeMs > totalTimeMs ? 0 : downtimeMs,
    expectedDowntimeMs: numberAt(a, 'expected-downtime'),
    transferredBytes: numberAt(ram, 'transferred'),
    remainingBytes: numberAt(ram, 'remaining'),
    totalBytes: numberAt(ram, 'total'),
    dirtyPagesPerSec: numberAt(ram, 'dirty-pages-rate'),
    passes: numberAt(ram, 'dirty-sync-count'),
    normalPages: numberAt(ram, 'normal'),
    postcopyRequests: numberAt(ram, 'postcopy-requests'),
    throttlePercent: Math.min(100, numberAt(a, 'cpu-throttle-percentage')),
    error: status === 'failed' && typeof a['error-desc'] === 'string' ? a['error-desc'] : '',
  };
}
