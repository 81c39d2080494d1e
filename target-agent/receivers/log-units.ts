// Log units of a CR/TR transfer (phase 4): each is unpacked and checked, then queued for the
// replay pipeline, from the Open on (units stream alongside the checkpoint).

import { InvalidStateError } from '../../shared/errors.js';
import { unpackPayload } from '../../shared/protocol.js';
import type { pb } from '../../shared/transport/grpc.js';
import type { ReplayPipeline } from '../replay-pipeline.js';
import type { ReceiverContext } from './context.js';

export class LogUnitReceiver {
  constructor(
    private readonly context: ReceiverContext,
    private readonly pipeline: Pick<ReplayPipeline, 'enqueue'>,
  ) {}

  receive(unit: InstanceType<typeof pb.LogUnit>): void {
    const phase = this.context.phase();
    if (phase !== 'restoring' && phase !== 'replaying') throw new InvalidStateError(`unit ${unit.sequence} received while ${phase}`, { reason: 'PROTOCOL_VIOLATION' });
    const bytes = unpackPayload(unit.payload, `unit ${unit.sequence}`);
    this.pipeline.enqueue({ sequence: unit.sequence, bytes, final: unit.final });
  }
}
