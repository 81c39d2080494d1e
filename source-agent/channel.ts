// The transfer channel: the Transfer stream from the source agent to the target agent, as the
// methods and streams use it. It writes messages with backpressure and the bandwidth limit,
// keeps what the target last said (progress, commit result, activation), hands the target's
// requests (stop-and-copy, pages) to whoever handles them, measures the round trip, and fails
// every wait on it once the stream fails or the migration is cancelled.
//
// Methods and streams see only the TransferChannel interface: tests drive them through a fake.

import { type Clock, type Timer } from '../shared/clock.js';
import { AbortedError, InvalidStateError, UnavailableError, type VmMigrateError } from '../shared/errors.js';
import { inlinePacker, type PayloadPacker } from '../shared/pack-pool.js';
import { type PackedMessage, packMessage, type PayloadBody } from '../shared/protocol.js';
import { fromStatus, type grpc, pb, Preserialized, type StreamName } from '../shared/transport/grpc.js';
import { detailsFromMetadata, isErrorReason } from '../shared/transport/status.js';
import { TokenBucket } from './token-bucket.js';
import { FailableWaits, type WaitOptions } from './wait.js';

export type { WaitOptions } from './wait.js';

export type Progress = InstanceType<typeof pb.Progress>;
export type StopRequest = InstanceType<typeof pb.StopRequest>;
export type CommitResult = InstanceType<typeof pb.CommitResult>;
export type Activated = InstanceType<typeof pb.Activated>;
type SourceMessage = InstanceType<typeof pb.SourceMessage>;
type TargetMessage = InstanceType<typeof pb.TargetMessage>;

/** The SourceMessage bodies a method sends as they are (the payload bodies go through `pack`). */
export type ControlBody = Partial<Pick<SourceMessage, 'open' | 'stopDecision' | 'commit' | 'abort' | 'rebase'>>;

export interface TransferChannel {
  /** The target's last progress report (all zero before the first). */
  readonly progress: Progress;
  /** The target accepted the Open: its first progress report arrived. */
  readonly acknowledged: boolean;
  readonly commitResult: CommitResult | null;
  readonly activated: Activated | null;
  /** The digest of the last Commit sent ('' before). */
  readonly commitDigestSent: string;
  /** Smoothed round trip to the target, 0 until measured. */
  readonly rttMs: number;
  /** The target's stop-and-copy requests go here (CR/TR); unanswered while null. */
  onStopRequest: ((request: StopRequest) => void) | null;
  /** The pages the target's running guest waits for go here (post-copy). */
  onPageRequest: ((pages: number[]) => void) | null;
  /** Sends a message without a payload. Nothing is sent once the channel is closed. */
  send(body: ControlBody): void;
  /** Serializes a payload message (lz4 unless compression is off). */
  pack(body: PayloadBody, raw: Uint8Array): PackedMessage;
  /**
   * The same, in a compression worker when the agent has them (else here): `raw` may be reused as
   * soon as this returns, before the promise settles. The bytes are those `pack` would make.
   */
  packAsync(body: PayloadBody, raw: Uint8Array): Promise<PackedMessage>;
  /** Writes a packed message once the bandwidth limit allows and the stream's buffer drained. */
  write(message: PackedMessage, rateBytesPerSec: number): Promise<void>;
  /** Waits until `predicate` holds, re-checked at every message from the target. */
  until(predicate: () => boolean, options?: WaitOptions): Promise<void>;
  /** Sleeps `ms`, failing early as `until` does. */
  sleep(ms: number): Promise<void>;
  /** Fails every wait with `error` (the first error wins). */
  fail(error: VmMigrateError): void;
  /** Wakes every wait to re-check (a decision was made elsewhere). */
  notify(): void;
  /** The error the channel failed with, if any. */
  readonly error: VmMigrateError | null;
  /**
   * Post-copy: the machine state is about to go, and the target resumes the guest on receiving
   * it, before any commit: its activation is expected from here on.
   */
  markPointOfNoReturn(): void;
  /** Tells the target to drop its replica (`cancelled`: by request, not a failure), then closes. */
  abort(reason: string, cancelled?: boolean): void;
  /** Ends the stream; nothing more is written. */
  close(): void;
}

export interface TransferChannelOptions {
  /** Send payloads raw instead of lz4 (data-plane benchmarks). */
  compress: boolean;
  /** How often to measure the round trip. */
  pingIntervalMs: number;
  /** Where packAsync packs: the agent's compression workers (default: this thread). */
  packer?: PayloadPacker;
}

/** Smoothed round trip: the first sample, then an exponential average weighing a new sample 0.2. */
export function smoothRttMs(previousMs: number, sampleMs: number): number {
  return previousMs === 0 ? sampleMs : 0.8 * previousMs + 0.2 * sampleMs;
}

/** The stream each payload's bytes count in. */
const STREAM_OF: Record<PayloadBody['kind'], StreamName> = { chunk: 'checkpoint', unit: 'log', pages: 'pages', machineState: 'pages' };

type Call = grpc.ClientDuplexStream<SourceMessage | Preserialized, TargetMessage>;

export class GrpcTransferChannel extends FailableWaits implements TransferChannel {
  progress: Progress = pb.Progress.create();
  acknowledged = false;
  commitResult: CommitResult | null = null;
  activated: Activated | null = null;
  commitDigestSent = '';
  rttMs = 0;
  onStopRequest: ((request: StopRequest) => void) | null = null;
  onPageRequest: ((pages: number[]) => void) | null = null;
  private closed = false;
  /** A commit was sent, or post-copy's machine state: the target may activate from here on. */
  private pointOfNoReturnPassed = false;
  private readonly bucket: TokenBucket;
  private readonly pinger: Timer;

  constructor(
    private readonly call: Call,
    private readonly options: TransferChannelOptions & { address: string; signal: AbortSignal; ping: () => Promise<void>; clock: Clock },
  ) {
    super(options.clock, options.signal);
    this.bucket = new TokenBucket(this.clock);
    call.on('data', (message: TargetMessage) => this.onMessage(message));
    call.on('error', (error: grpc.ServiceError) => this.fail(fromStatus(error.code, error.details || error.message, `transfer stream to ${options.address}`, detailsFromMetadata(error.metadata))));
    call.on('end', () => {
      const finished = this.activated !== null || (this.commitResult !== null && !this.commitResult.matched);
      if (!finished) this.fail(new UnavailableError(`the target ${options.address} closed the transfer stream`));
      this.notify();
    });
    this.pinger = this.startPings();
  }

  send(body: ControlBody): void {
    if (this.closed) return;
    if (body.commit) {
      this.commitDigestSent = body.commit.digest ?? '';
      this.pointOfNoReturnPassed = true;
    }
    this.call.write(pb.SourceMessage.create(body as never));
  }

  pack(body: PayloadBody, raw: Uint8Array): PackedMessage {
    return packMessage(body, raw, this.options.compress);
  }

  packAsync(body: PayloadBody, raw: Uint8Array): Promise<PackedMessage> {
    return (this.options.packer ?? inlinePacker).pack(body, raw, this.options.compress);
  }

  async write(message: PackedMessage, rateBytesPerSec: number): Promise<void> {
    const waitMs = this.bucket.take(message.dataBytes, rateBytesPerSec);
    if (waitMs > 0) await this.sleep(waitMs);
    if (this.closed) throw this.error ?? new AbortedError('the transfer stream was closed');
    // The write's callback comes once gRPC framed the message into a buffer of its own and handed
    // it on: a packer's buffer can then be reused.
    const release = message.release;
    const written = release === undefined ? this.call.write(new Preserialized(message.bytes, STREAM_OF[message.kind], message.rawBytes)) : this.call.write(new Preserialized(message.bytes, STREAM_OF[message.kind], message.rawBytes), () => release());
    if (!written) {
      await this.settled(new Promise<void>((resolve) => this.call.once('drain', () => resolve())));
    }
  }

  markPointOfNoReturn(): void {
    this.pointOfNoReturnPassed = true;
  }

  abort(reason: string, cancelled = false): void {
    if (this.closed) return;
    try {
      this.send({ abort: { reason, cancelled } });
    } catch {
      // The stream is already gone; the target discards on its own.
    }
    this.close();
  }

  close(): void {
    this.pinger.cancel();
    if (this.closed) return;
    this.closed = true;
    try {
      this.call.end();
    } catch {
      // Already closed.
    }
  }

  private onMessage(message: TargetMessage): void {
    switch (message.body) {
      case 'progress':
        this.acknowledged = true;
        this.progress = message.progress as Progress;
        break;
      case 'stopRequest':
        if (!this.closed) this.onStopRequest?.(message.stopRequest as StopRequest);
        break;
      case 'commitResult':
        // Only an answer to a commit we sent counts.
        if (this.commitDigestSent !== '') this.commitResult = message.commitResult as CommitResult;
        else this.fail(new InvalidStateError('the target sent a commit result before any commit', { reason: 'PROTOCOL_VIOLATION' }));
        break;
      case 'activated':
        if (this.pointOfNoReturnPassed) this.activated = message.activated as Activated;
        else this.fail(new InvalidStateError('the target reported an activation before the commit', { reason: 'PROTOCOL_VIOLATION' }));
        break;
      case 'error': {
        const e = message.error!;
        // A target that predates TargetError.reason sends none: the class's default stands.
        const reason = e.reason ?? '';
        this.fail(fromStatus(e.code ?? 2, e.message ?? '', `target ${this.options.address}`, { reason: isErrorReason(reason) ? reason : undefined }));
        break;
      }
      case 'pageRequest':
        this.onPageRequest?.(message.pageRequest?.pages ?? []);
        break;
      case 'pong':
        this.rttMs = smoothRttMs(this.rttMs, this.clock.now() - (message.pong?.sentMs ?? 0));
        break;
    }
    this.notify();
  }

  private startPings(): Timer {
    let inFlight = false;
    const ping = () => {
      if (inFlight || this.closed) return;
      inFlight = true;
      const sentMs = this.clock.now();
      this.options
        .ping()
        .then(() => (this.rttMs = smoothRttMs(this.rttMs, this.clock.now() - sentMs)))
        .catch(() => {})
        .finally(() => (inFlight = false));
    };
    const timer = this.clock.interval(this.options.pingIntervalMs, ping);
    ping();
    return timer;
  }
}
