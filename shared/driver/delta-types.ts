// Delta checkpoints (capability `delta-checkpoint`, CR/TR's hybrid catch-up): the source's and
// the replica's side of the driver interface (types.ts re-exports them).

import type { CheckpointChunk } from './chunk.js';

/** Where a delta checkpoint starts: its instant, and what it holds. */
export interface DeltaStart {
  /** 1, 2, ... in the recording (the full checkpoint is generation 0). */
  readonly generation: number;
  /** The delta is as of the boundary before this unit; the log goes on from it. */
  readonly firstSequence: number;
  readonly position: number;
  /** Pages in the delta (dirtied since the previous instant). */
  readonly pages: number;
}

/**
 * Delta checkpoints during a recording (capability `delta-checkpoint`): the hybrid catch-up's
 * source side. A delta holds the pages written since the previous instant (the recording's start,
 * or the last delta) as of a new instant, and the vCPU/device state then. A replica restored to
 * the previous instant, and replayed any way short of the new one, is exactly at the new instant
 * once the delta is applied: the pages its replay wrote were written by the guest too, so they are
 * in the delta.
 */
export interface DeltaSource {
  /** Pages written since the current instant: the size of the next delta. */
  pagesDirtiedSinceInstant(): number;
  /**
   * Moves the instant to now, between two units: the next delta is of this instant, and units
   * sealed before it and not yet taken by `nextSealedUnit` are dropped (the delta supersedes
   * them). The previous checkpoint (full or delta) must have been streamed whole.
   */
  rebase(): DeltaStart;
  /**
   * The chunks of the delta begun by the last `rebase`, made as the consumer pulls them
   * (copy-on-write keeps the instant, as for the live checkpoint); indexes start at 0, the last
   * chunk (final) carries the machine state. `reuseBuffer` as for `liveCheckpoint`.
   */
  deltaCheckpoint(options?: { chunkPages?: number; reuseBuffer?: boolean }): AsyncIterable<CheckpointChunk>;
}

/** A replica's side of delta checkpoints (capability `delta-checkpoint`). */
export interface DeltaRestoreTarget {
  /**
   * A delta of `generation` as of the boundary before unit `firstSequence` begins: units before
   * it must not be replayed any more, nor units from it until the delta is applied. Refused if the
   * replica is not restored, replayed past the instant, or the generation is not the next one.
   */
  beginDelta(generation: number, firstSequence: number): void;
  /** Applies the next chunk of the delta in progress; after the final one the replica is at its instant. */
  restoreDeltaChunk(chunk: CheckpointChunk): void;
  /** A delta was begun and its final chunk not applied yet. */
  readonly deltaInProgress: boolean;
}
