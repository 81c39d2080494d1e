// Delta checkpoints of a CR/TR transfer (the hybrid catch-up): a Rebase announces a delta as of a
// unit boundary; the pipeline drops the units before it and replays nothing until the delta's
// chunks (generation 1, 2, ...) are applied, after which the replica is at the delta's instant and
// replay goes on from there.

import type { DeltaRestoreTarget } from '../../shared/driver/types.js';
import { InvalidStateError, UnimplementedError } from '../../shared/errors.js';
import { unpackPayload } from '../../shared/protocol.js';
import type { pb } from '../../shared/transport/grpc.js';
import type { ReplayPipeline } from '../replay-pipeline.js';
import { checkCovered, type ReceiverContext } from './context.js';

export interface DeltaReceiverDeps {
  /** The replica's delta-checkpoint capability; undefined when its driver makes no deltas. */
  readonly deltas: DeltaRestoreTarget | undefined;
  readonly driver: string;
  /** The guest's memory: no chunk covers more. */
  readonly memoryBytes: number;
  readonly pipeline: Pick<ReplayPipeline, 'supersede' | 'start' | 'finalReceived'>;
}

export class DeltaReceiver {
  /** Chunks of every delta applied. */
  chunksApplied = 0;
  /** The last generation announced, and the last one applied. */
  private announced = 0;
  generationApplied = 0;

  constructor(
    private readonly context: ReceiverContext,
    private readonly deps: DeltaReceiverDeps,
  ) {}

  receiveRebase(rebase: InstanceType<typeof pb.Rebase>): void {
    const deltas = this.require(`rebase to delta ${rebase.generation}`);
    if (this.context.phase() !== 'replaying') {
      throw new InvalidStateError(`rebase to delta ${rebase.generation} while ${this.context.phase()}: a delta follows the restored checkpoint`, { reason: 'PROTOCOL_VIOLATION' });
    }
    // The protocol's order, whatever the driver checks: a delta comes between two others and before
    // the final unit (which a delta would otherwise drop, leaving the log without its end).
    if (this.deps.pipeline.finalReceived || deltas.deltaInProgress || rebase.generation !== this.announced + 1) {
      const why = this.deps.pipeline.finalReceived ? 'after the final unit' : deltas.deltaInProgress ? `while delta ${this.announced} is applied` : `out of order (expected delta ${this.announced + 1})`;
      throw new InvalidStateError(`rebase to delta ${rebase.generation} ${why}`);
    }
    // Refused (replica state) before anything is dropped.
    deltas.beginDelta(rebase.generation, rebase.firstSequence);
    this.announced = rebase.generation;
    this.deps.pipeline.supersede(rebase.firstSequence);
    this.context.log.debug({ generation: rebase.generation, firstSequence: rebase.firstSequence, pages: rebase.pages }, 'delta checkpoint begins');
  }

  receiveChunk(chunk: InstanceType<typeof pb.CheckpointChunk>): void {
    const deltas = this.require(`delta chunk ${chunk.index}`);
    if (chunk.generation !== this.announced || !deltas.deltaInProgress) {
      throw new InvalidStateError(`chunk ${chunk.index} of delta ${chunk.generation}, which was not announced (delta in progress: ${deltas.deltaInProgress ? this.announced : 'none'})`, {
        reason: 'PROTOCOL_VIOLATION',
      });
    }
    checkCovered(chunk, this.deps.memoryBytes);
    const bytes = unpackPayload(chunk.payload, `delta ${chunk.generation} chunk ${chunk.index}`, true);
    deltas.restoreDeltaChunk({ index: chunk.index, final: chunk.final, bytes, memoryBytesCovered: chunk.memoryBytesCovered });
    this.chunksApplied++;
    if (!deltas.deltaInProgress) {
      this.generationApplied = chunk.generation;
      this.context.log.debug({ generation: chunk.generation }, 'delta checkpoint applied: replaying');
      this.deps.pipeline.start();
    }
    this.context.progress(true);
  }

  private require(what: string): DeltaRestoreTarget {
    const deltas = this.deps.deltas;
    if (deltas === undefined) {
      throw new UnimplementedError(`${what}: driver '${this.deps.driver}' makes no delta checkpoints (capability delta-checkpoint)`, {
        reason: 'CAPABILITY_MISSING',
        metadata: { capability: 'delta-checkpoint', side: 'target', driver: this.deps.driver },
      });
    }
    return deltas;
  }
}
