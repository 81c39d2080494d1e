// The target agent as the source sees it: its unary Migration calls (capacity, reservation,
// release, a ping, the outcome of a migration in doubt) and the Transfer stream it opens (and,
// for qemu-native, the NativeStream that carries the hypervisor's own migration stream), over
// one gRPC client that counts every byte each way (the migration's transferredBytes). The pings
// also sample the target's clock (clock-offset.ts).

import { systemClock, type Clock } from '../shared/clock.js';
import { countingService, grpc, makeClient, migrationService, pb, streamByteCounter, type StreamByteCounter, unary } from '../shared/transport/grpc.js';
import { ClockOffset } from './clock-offset.js';
import { GrpcTransferChannel, type TransferCall, type TransferChannel, type TransferChannelOptions } from './channel.js';
import type { NativeStreamCall } from './native-relay.js';

type Capacity = InstanceType<typeof pb.Capacity>;
type ReserveRequest = InstanceType<typeof pb.ReserveRequest>;
type ReserveResponse = InstanceType<typeof pb.ReserveResponse>;
export type OutcomeResponse = InstanceType<typeof pb.OutcomeResponse>;

/** What a migration's lifecycle asks of the target agent. */
export interface TargetPeer {
  readonly address: string;
  /** Bytes on the wire so far: `sent` to the target, `received` from it, and by stream. */
  readonly wireBytes: Readonly<StreamByteCounter>;
  capacity(): Promise<Capacity>;
  reserve(request: ReserveRequest): Promise<ReserveResponse>;
  /** Gives back a reservation that no transfer opened ('' and a migration id: every one of that migration's). */
  release(reservationId: string, reason: string, migrationId?: string): Promise<void>;
  /** Opens the Transfer stream; `signal` is the migration's cancellation. */
  openTransfer(signal: AbortSignal, options: TransferChannelOptions): TransferChannel;
  /** qemu-native: opens a NativeStream, the hypervisor's migration stream (absent: a peer that carries none). */
  openNativeStream?(): NativeStreamCall;
  /** What the target decided about a migration (it fences one it had not committed). */
  queryOutcome(migrationId: string, startedAtUnixMs: number, timeoutMs?: number): Promise<OutcomeResponse>;
  /** The target's clock as seen from here, from the pings. */
  readonly clockOffset: ClockOffset;
  /** Drops the connection and dials a new one (after a stall: a call on the old one would stall too). */
  redial(): void;
  close(): void;
}

export interface PeerOptions {
  credentials: grpc.ChannelCredentials;
  /** Deadline of the unary calls (capacity, reservation, release, pings). */
  callTimeoutMs: number;
  clock?: Clock;
}

export class GrpcTargetPeer implements TargetPeer {
  private readonly counter = streamByteCounter();
  private readonly methods = countingService(migrationService, this.counter, 'client');
  private client: grpc.Client;
  private readonly clock: Clock;
  readonly clockOffset = new ClockOffset();

  constructor(
    readonly address: string,
    private readonly options: PeerOptions,
  ) {
    this.client = makeClient(this.methods, 'Migration', address, options.credentials);
    this.clock = options.clock ?? systemClock;
  }

  get wireBytes(): Readonly<StreamByteCounter> {
    return this.counter;
  }

  capacity(): Promise<Capacity> {
    return unary(this.client, this.methods.getCapacity, pb.CapacityRequest.create(), this.options.callTimeoutMs, `capacity of ${this.address}`);
  }

  reserve(request: ReserveRequest): Promise<ReserveResponse> {
    return unary(this.client, this.methods.reserve, request, this.options.callTimeoutMs, `reservation on ${this.address}`);
  }

  async release(reservationId: string, reason: string, migrationId = ''): Promise<void> {
    await unary(this.client, this.methods.release, pb.ReleaseRequest.create({ reservationId, reason, migrationId }), this.options.callTimeoutMs, 'release');
  }

  openTransfer(signal: AbortSignal, options: TransferChannelOptions): TransferChannel {
    const m = this.methods.transfer;
    const open = () => this.client.makeBidiStreamRequest(m.path, m.requestSerialize, m.responseDeserialize) as TransferCall;
    const call = open();
    // A resume goes on a new stream; after a stall, on a new connection too (a stream on the
    // stalled one would stall as well).
    const reopen = (fresh: boolean) => {
      if (fresh) this.redial();
      return open();
    };
    // A ping is a small unary call: on its own HTTP/2 stream, it does not queue behind checkpoint
    // data as a message on the transfer stream would.
    const ping = async () => {
      const sentMs = this.clock.now();
      const answer = await unary(this.client, this.methods.getCapacity, pb.CapacityRequest.create(), this.options.callTimeoutMs, 'ping');
      this.clockOffset.add(sentMs, this.clock.now(), answer.clockMs ?? 0, answer.agentInstanceId ?? '');
    };
    return new GrpcTransferChannel(call, { ...options, address: this.address, signal, ping, clock: this.clock, reopen });
  }

  openNativeStream(): NativeStreamCall {
    const m = this.methods.nativeStream;
    return this.client.makeBidiStreamRequest(m.path, m.requestSerialize, m.responseDeserialize) as NativeStreamCall;
  }

  /** Drops the connection and dials a new one: what a stalled link needs (calls already on the old one go on, or fail). */
  redial(): void {
    const old = this.client;
    this.client = makeClient(this.methods, 'Migration', this.address, this.options.credentials, { 'grpc.use_local_subchannel_pool': 1 });
    old.close();
  }

  queryOutcome(migrationId: string, startedAtUnixMs: number, timeoutMs = this.options.callTimeoutMs): Promise<OutcomeResponse> {
    return unary(this.client, this.methods.queryOutcome, pb.OutcomeRequest.create({ migrationId, startedAtUnixMs }), timeoutMs, `outcome of migration ${migrationId} on ${this.address}`);
  }

  close(): void {
    this.client.close();
  }
}
