// Counting what a stream sent, written once for every stream that counts as the checkpoint (CR/TR's
// chunks, pre-copy's first round of pages).

import type { MigrationStats } from '../../shared/stats.js';

/** Adds one checkpoint message: raw bytes, bytes on the wire, guest memory it accounts for. */
export function countCheckpoint(stats: MigrationStats, rawBytes: number, wireBytes: number, memoryBytesCovered: number): void {
  stats.checkpointBytes += rawBytes;
  stats.checkpointWireBytes += wireBytes;
  stats.checkpointMemoryBytesCovered += memoryBytesCovered;
}

/** Checkpoint throughput on the wire, bytes per second, capped by the migration's bandwidth limit (0: none). */
export function checkpointThroughputBytesPerSec(stats: MigrationStats, durationMs: number, maxBandwidthBytesPerSec: number): number {
  const measured = stats.checkpointWireBytes / Math.max(0.001, durationMs / 1000);
  return maxBandwidthBytesPerSec > 0 ? Math.min(measured, maxBandwidthBytesPerSec) : measured;
}
