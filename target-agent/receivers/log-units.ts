// Log units of a CR/TR transfer (phase 4): each is unpacked and checked, then queued for the
// replay pipeline, from the Open on (units stream alongside the checkpoint).

import type { CheckpointReplayTarget } from '../../shared/driver/types.js';
import { InvalidStateError } from '../../shared/errors.js';
import { unpackPayload } from '../../shared/protocol.js';
import type { pb } from '../../shared/transport/grpc.js';
import type { ReplayPipeline } from '../replay-pipeline.js';
import type { ReceiverContext } from './context.js';

export class LogUnitReceiver {
  constructor(
    private readonly context: ReceiverContext,
    private readonly pipeline: Pick<ReplayPipeline, 'enqueue'>,
    /** The replica's checkpoint-replay capability: its quick look at each unit as it arrives. */
    private readonly replay?: Pick<CheckpointReplayTarget, 'checkUnit'>,
  ) {}

  receive(unit: InstanceType<typeof pb.LogUnit>): void {
    const phase = this.context.phase();
    if (phase !== 'restoring' && phase !== 'replaying') throw new InvalidStateError(`unit ${unit.sequence} received while ${phase}`, { reason: 'PROTOCOL_VIOLATION' });
    const bytes = unpackPayload(unit.payload, `unit ${unit.sequence}`);
    this.replay?.checkUnit?.(bytes);
    this.pipeline.enqueue({ sequence: unit.sequence, bytes, final: unit.final });
  }
}
