// Statistics of one migration, named after QEMU's `query-migrate` where a meaning matches, with
// the unit in the name. The same shape travels in the control API (MigrationStats).

import type { ErrorReason } from './errors.js';

/**
 * setup -> active -> stop-and-copy -> committing -> completed; or cancelling -> cancelled; or
 * failed. committing -> in-doubt when the commit's answer is lost, until the target's outcome (or
 * an operator) ends it completed or failed.
 */
export type MigrationStatus = 'setup' | 'active' | 'stop-and-copy' | 'committing' | 'in-doubt' | 'completed' | 'cancelling' | 'cancelled' | 'failed';

/** The seven phases (DESIGN.md), plus `done`; post-copy adds `page-push` (after activation, before commitment). */
export type MigrationPhase = 'pre-migration' | 'reservation' | 'checkpoint' | 'log-transfer' | 'stop-and-copy' | 'commitment' | 'activation' | 'page-push' | 'done';
export const ABORTABLE_PHASES: readonly MigrationPhase[] = ['reservation', 'checkpoint', 'log-transfer', 'stop-and-copy', 'commitment'];

/** qemu-native: the hypervisor's own migration stream, relayed by the agents (pre-copy, or post-copy with nativePostcopy). */
export type MigrationMethod = 'crtr' | 'precopy' | 'postcopy' | 'qemu-native';

export interface MigrationStats {
  status: MigrationStatus;
  phase: MigrationPhase;
  method: MigrationMethod;
  /** Start to the end of reservation. */
  setupTimeMs: number;
  /** The reservation alone: the Reserve call, in which the target makes the replica's memory ready. Part of total time, never of downtime. */
  reservationMs: number;
  /** Start to the consistent state (commit); until then, time so far. */
  totalTimeMs: number;
  /** Source suspend to target resume (or to the resume here, when the migration failed after the suspend), as the guest saw it. */
  downtimeMs: number;
  /** Time spent in doubt (commit sent, outcome unknown), and the outcome queries sent meanwhile. */
  inDoubtMs: number;
  outcomeQueries: number;
  /** Times the transfer was resumed on a new stream after its stream broke, and what was sent again then. */
  resumes: number;
  resentBytes: number;
  /**
   * CR/TR over a base image the target held (a resync, a fail back): its kind ('' for a full
   * checkpoint), pages left out as the same as the base, and raw bytes saved against a full checkpoint.
   */
  baseKind: string;
  basePagesSkipped: number;
  checkpointBytesSaved: number;
  /** Downtime if stop-and-copy began now, from measured rates. */
  expectedDowntimeMs: number;
  /** Every byte of every message between the agents for this migration (gRPC framing included). */
  transferredBytes: number;
  /** Checkpoint bytes not yet sent plus unsent log. */
  remainingBytes: number;
  /** Average throughput so far, megabits per second. */
  mbps: number;
  unitsRecorded: number;
  unitsSent: number;
  unitsReplayed: number;
  /** Recorded and not yet replayed on the target. */
  remainingUnits: number;
  /** Raw log bytes recorded. */
  logBytes: number;
  /** Raw checkpoint chunk bytes (zero pages elided) and their bytes on the wire (lz4). */
  checkpointBytes: number;
  checkpointWireBytes: number;
  checkpointMemoryBytesCovered: number;
  memoryBytes: number;
  /** Guest seconds replayed per second on the target. */
  replayRate: number;
  logRateBytesPerSec: number;
  /** Wait-and-ack exchanges (stop requests answered). */
  rounds: number;
  sourceDigest: string;
  targetDigest: string;
  /** Guest speed factor at the end (1: never throttled). */
  throttle: number;
  /** Wall time the guest stalled here during this migration, on its full log queue or copy-on-write pool. */
  stallMs: number;
  error: string;
  errorCode: string;
  /** Why the job failed or was cancelled ('' while it has not): a name of vmmigrate.v2.ErrorReason. */
  errorReason: ErrorReason | '';
  /** Stop-and-copy was forced by the non-convergence policy. */
  forced: boolean;
  rttMs: number;
  stopRequestsDenied: number;
  /** At the suspend: units not yet replayed on the target (final unit included); log bytes sent after the suspend (final unit and backlog, after lz4). */
  stopUnitsToReplay: number;
  stopLogBytesUnsent: number;
  /** Pre-copy: pages sent during the stop-and-copy. */
  stopPagesSent: number;
  unitMs: number;
  /** Post-copy: pages fetched on demand by the target's running guest. */
  demandPages: number;
  /** Pre-copy and post-copy: pages sent in page batches, every round and push included. */
  pagesSent: number;
  /** Post-copy: pages the target's guest still lacks, as it last said. */
  missingPages: number;
  /** CR/TR: the hybrid catch-up is on; delta checkpoints sent, their pages and wire bytes; units they superseded. */
  hybrid: boolean;
  deltaRounds: number;
  deltaPages: number;
  deltaWireBytes: number;
  unitsSuperseded: number;
  /** CR/TR: the replay rate of the last units, replayed after the stop was granted. */
  stopReplayRate: number;
  /**
   * Guest disruption (shared/disruption.ts): downtimeMs + stallMs + targetStallMs + throttledMs +
   * lostScheduleMs over the window, from the start to the target's resume (post-copy: to the
   * target guest's last page); the window so far until then.
   */
  disruptionMs: number;
  disruptionWindowMs: number;
  /** Post-copy: wall time the guest, running on the target, waited for pages. */
  targetStallMs: number;
  /** Work given up to throttling, as time. */
  throttledMs: number;
  /** Units the schedule called for over the window, and units run on either host. */
  unitsDue: number;
  unitsRun: number;
  /** The schedule deficit the downtime and the stalls do not explain. */
  lostScheduleMs: number;
  /** A protection: units recorded that the standby has not received, and not replayed, yet. */
  lagUnitsReceived: number;
  lagUnitsReplayed: number;
  /** A protection: the guest's outputs held for the standby's receipt, released, and the gate's overflows (sync fell back to async). */
  outputsHeld: number;
  outputsReleased: number;
  outputOverflows: number;
  /**
   * qemu-native: what the hypervisor says of its own migration (QEMU's query-migrate) where its
   * meaning differs from the figures above: its status, whether it switched to post-copy, its own
   * setup, total and downtime (counted from its instants: the migrate command, the guest's stop
   * here, the end of the stream), the stream bytes it sent, and the rate the guest dirtied pages.
   * Its expected downtime, remaining bytes, passes (rounds), pages sent, post-copy page requests
   * (demandPages) and throttle are in the fields of the same meaning above.
   */
  nativeStatus: string;
  nativePostcopy: boolean;
  nativeSetupTimeMs: number;
  nativeTotalTimeMs: number;
  nativeDowntimeMs: number;
  nativeTransferredBytes: number;
  dirtyPagesPerSec: number;
}

/** The hypervisor's own figures before it said any (qemu-native), or for the other methods. */
const NATIVE_FIGURES_NONE = { nativeStatus: '', nativePostcopy: false, nativeSetupTimeMs: 0, nativeTotalTimeMs: 0, nativeDowntimeMs: 0, nativeTransferredBytes: 0, dirtyPagesPerSec: 0 } as const;

export function emptyStats(method: MigrationMethod, memoryBytes: number): MigrationStats {
  return {
    status: 'setup',
    phase: 'pre-migration',
    method,
    setupTimeMs: 0,
    reservationMs: 0,
    totalTimeMs: 0,
    downtimeMs: 0,
    inDoubtMs: 0,
    outcomeQueries: 0,
    resumes: 0,
    resentBytes: 0,
    baseKind: '',
    basePagesSkipped: 0,
    checkpointBytesSaved: 0,
    expectedDowntimeMs: 0,
    transferredBytes: 0,
    remainingBytes: 0,
    mbps: 0,
    unitsRecorded: 0,
    unitsSent: 0,
    unitsReplayed: 0,
    remainingUnits: 0,
    logBytes: 0,
    checkpointBytes: 0,
    checkpointWireBytes: 0,
    checkpointMemoryBytesCovered: 0,
    memoryBytes,
    replayRate: 0,
    logRateBytesPerSec: 0,
    rounds: 0,
    sourceDigest: '',
    targetDigest: '',
    throttle: 1,
    stallMs: 0,
    error: '',
    errorCode: '',
    errorReason: '',
    forced: false,
    rttMs: 0,
    stopRequestsDenied: 0,
    stopUnitsToReplay: 0,
    stopLogBytesUnsent: 0,
    stopPagesSent: 0,
    unitMs: 0,
    demandPages: 0,
    pagesSent: 0,
    missingPages: 0,
    hybrid: false,
    deltaRounds: 0,
    deltaPages: 0,
    deltaWireBytes: 0,
    unitsSuperseded: 0,
    stopReplayRate: 0,
    disruptionMs: 0,
    disruptionWindowMs: 0,
    targetStallMs: 0,
    throttledMs: 0,
    unitsDue: 0,
    unitsRun: 0,
    lostScheduleMs: 0,
    lagUnitsReceived: 0,
    lagUnitsReplayed: 0,
    outputsHeld: 0,
    outputsReleased: 0,
    outputOverflows: 0,
    ...NATIVE_FIGURES_NONE,
  };
}
