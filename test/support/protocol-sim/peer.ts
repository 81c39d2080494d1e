// The source's view of the target in the simulation: the TargetPeer a SourceMigration is given,
// whose unary calls and Transfer stream go over the simulated wire. The transfer channel is the
// real GrpcTransferChannel on a simulated call, so that the source's handling of the stream (its
// end, its errors, the commit's answer, the pings and their clock offset) is the agent's own.

import type { Clock } from '../../../shared/clock.js';
import { pb, streamByteCounter, type StreamByteCounter } from '../../../shared/transport/grpc.js';
import { GrpcTransferChannel, type TransferChannel, type TransferChannelOptions } from '../../../source-agent/channel.js';
import { ClockOffset } from '../../../source-agent/clock-offset.js';
import type { OutcomeResponse, TargetPeer } from '../../../source-agent/peer.js';
import { SimTransfer } from './transfer-stream.js';
import { SimWire } from './wire.js';

export const TARGET_ADDRESS = 'sim-target:7401';

type Capacity = InstanceType<typeof pb.Capacity>;
type ReserveRequest = InstanceType<typeof pb.ReserveRequest>;
type ReserveResponse = InstanceType<typeof pb.ReserveResponse>;

export class SimTargetPeer implements TargetPeer {
  readonly address = TARGET_ADDRESS;
  readonly wireBytes: StreamByteCounter;
  readonly clockOffset = new ClockOffset();

  constructor(
    private readonly wire: SimWire,
    private readonly clock: Clock,
    private readonly callTimeoutMs: number,
    counter: StreamByteCounter = streamByteCounter(),
  ) {
    this.wireBytes = counter;
  }

  capacity(): Promise<Capacity> {
    return this.wire.unary('getCapacity', 'getCapacity', pb.CapacityRequest.create(), this.callTimeoutMs, `capacity of ${this.address}`);
  }

  reserve(request: ReserveRequest): Promise<ReserveResponse> {
    return this.wire.unary('reserve', 'reserve', request, this.callTimeoutMs, `reservation on ${this.address}`);
  }

  async release(reservationId: string, reason: string): Promise<void> {
    await this.wire.unary('release', 'release', pb.ReleaseRequest.create({ reservationId, reason }), this.callTimeoutMs, 'release');
  }

  openTransfer(signal: AbortSignal, options: TransferChannelOptions): TransferChannel {
    const stream = new SimTransfer(this.wire, this.wire.nextCallId(), this.wire.target.connect());
    const ping = async () => {
      const sentMs = this.clock.now();
      const answer = await this.wire.unary<Capacity>('getCapacity', 'ping', pb.CapacityRequest.create(), this.callTimeoutMs, 'ping');
      this.clockOffset.add(sentMs, this.clock.now(), answer.clockMs ?? 0, answer.agentInstanceId ?? '');
    };
    // A resume opens a new simulated stream, as the real peer opens a new gRPC one.
    const reopen = () => new SimTransfer(this.wire, this.wire.nextCallId(), this.wire.target.connect()).client as never;
    return new GrpcTransferChannel(stream.client as never, { ...options, address: this.address, signal, ping, clock: this.clock, reopen });
  }

  queryOutcome(migrationId: string, startedAtUnixMs: number, timeoutMs = this.callTimeoutMs): Promise<OutcomeResponse> {
    return this.wire.unary('queryOutcome', 'queryOutcome', pb.OutcomeRequest.create({ migrationId, startedAtUnixMs }), timeoutMs, `outcome of migration ${migrationId} on ${this.address}`);
  }

  /** Each simulated stream and call takes the network as it is: there is no connection to redial. */
  redial(): void {}

  close(): void {
    // The simulated client holds nothing: calls after the job ended still go (none should).
  }
}
