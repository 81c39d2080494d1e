// A migration's statistics refreshed from what its parts know: the recorder's counters, the
// target's last progress report, the bytes on the wire and the clock.

import type { RecordingStats } from '../shared/driver/types.js';
import type { MigrationStats } from '../shared/stats.js';
import { grpc, statusName, type StreamByteCounter } from '../shared/transport/grpc.js';
import type { VmMigrateError } from '../shared/errors.js';
import type { TransferChannel } from './channel.js';

export interface StatsSources {
  /** The recorder's counters (undefined: not recording, or the guest is gone). */
  recording: RecordingStats | undefined;
  channel: TransferChannel | null;
  wire: Readonly<StreamByteCounter>;
  elapsedMs: number;
  /** Committed: the total time stays as it was at the commit. */
  committed: boolean;
}

export function refreshMigrationStats(s: MigrationStats, from: StatsSources): void {
  const rec = from.recording;
  // Recording counters are monotonic while the recording lasts, and read as zero once it was
  // stopped (abort) or the guest discarded (completion): keep the last real values then.
  if (rec !== undefined && rec.unitsRecorded >= s.unitsRecorded) {
    s.unitsRecorded = rec.unitsRecorded;
    s.logBytes = rec.logBytes;
  }
  const channel = from.channel;
  if (channel !== null) {
    // Units the target is done with include those a delta superseded: only the others replayed.
    s.unitsReplayed = Math.max(0, channel.progress.unitsReplayed - channel.progress.unitsSuperseded);
    s.replayRate = channel.progress.replayRate;
    s.stopReplayRate = channel.progress.stopReplayRate;
    s.rttMs = channel.rttMs;
    s.resumes = channel.resumes.resumes;
    s.resentBytes = channel.resumes.resentBytes;
  }
  s.transferredBytes = from.wire.sent + from.wire.received;
  // Superseded units (CR/TR's deltas) are neither replayed nor remaining; the method keeps the count.
  s.remainingUnits = Math.max(0, s.unitsRecorded - s.unitsReplayed - s.unitsSuperseded);
  if (!from.committed) s.totalTimeMs = from.elapsedMs;
  s.mbps = (s.transferredBytes * 8) / 1e6 / Math.max(0.001, from.elapsedMs / 1000);
  const guestSeconds = (s.unitsRecorded * s.unitMs) / 1000;
  s.logRateBytesPerSec = guestSeconds > 0 ? s.logBytes / guestSeconds : 0;
  // expectedDowntimeMs is each method's own (its refreshStats): what its stop-and-copy sends differs.
}

/** A job's failure in its statistics: message, status name (a bug, not `operating`, is INTERNAL, as toServiceError reports it) and reason. */
export function recordError(s: MigrationStats, e: VmMigrateError, operating: boolean): void {
  s.error = e.message;
  s.errorCode = operating ? statusName(grpc.status[e.code]) : statusName(grpc.status.INTERNAL);
  s.errorReason = e.reason;
}
