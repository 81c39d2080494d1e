// Checkpoint chunks of a CR/TR transfer (phase 3): each is unpacked, checked and applied to the
// replica in order; after the final one the replica is restored, paused at the checkpoint instant,
// and the queued units can replay.

import type { CheckpointReplayTarget } from '../../shared/driver/types.js';
import { InvalidStateError } from '../../shared/errors.js';
import { unpackPayload } from '../../shared/protocol.js';
import type { pb } from '../../shared/transport/grpc.js';
import { checkCovered, type ReceiverContext } from './context.js';

export interface CheckpointReceiverDeps {
  /** The replica's checkpoint-replay capability. */
  readonly replay: Pick<CheckpointReplayTarget, 'restoreChunk' | 'restored'>;
  /** The guest's memory: no chunk covers more. */
  readonly memoryBytes: number;
  /** Hashes the replica; the digest is incremental, so this hashes the restored image once. */
  digest(): void;
  /** Called once the replica is restored, after the transfer moved to `replaying`. */
  onRestored(): void;
}

export class CheckpointReceiver {
  private applied = 0;
  /** Where the restore's time went (debug log): decompressing and checking payloads, applying chunks. */
  private readonly timing = { firstChunkAtMs: 0, unpackMs: 0, applyMs: 0 };

  constructor(
    private readonly context: ReceiverContext,
    private readonly deps: CheckpointReceiverDeps,
  ) {}

  get chunksApplied(): number {
    return this.applied;
  }

  receive(chunk: InstanceType<typeof pb.CheckpointChunk>): void {
    const { context, timing } = this;
    if (context.phase() !== 'restoring') throw new InvalidStateError(`checkpoint chunk ${chunk.index} after the checkpoint was restored`, { reason: 'PROTOCOL_VIOLATION' });
    checkCovered(chunk, this.deps.memoryBytes);
    const t0 = context.clock.now();
    if (this.applied === 0) timing.firstChunkAtMs = t0;
    // Transient: the restore copies the pages into guest memory before it returns.
    const bytes = unpackPayload(chunk.payload, `checkpoint chunk ${chunk.index}`, true);
    const t1 = context.clock.now();
    this.deps.replay.restoreChunk({ index: chunk.index, final: chunk.final, bytes, memoryBytesCovered: chunk.memoryBytesCovered });
    timing.unpackMs += t1 - t0;
    timing.applyMs += context.clock.now() - t1;
    this.applied++;
    if (!this.deps.replay.restored) {
      context.progress(true);
      return;
    }
    context.restored();
    // Tell the source first: it waits for this to end its checkpoint phase.
    context.progress(true);
    // Hash the restored image now rather than at commitment, inside the downtime: later digests
    // only rehash pages the replay wrote. Units that arrive meanwhile queue; the replay starts after.
    this.deps.digest();
    context.log.debug(
      { chunks: this.applied, sinceFirstChunkMs: Math.round(context.clock.now() - timing.firstChunkAtMs), unpackMs: Math.round(timing.unpackMs), applyMs: Math.round(timing.applyMs) },
      'checkpoint restore timing',
    );
    this.deps.onRestored();
  }
}
