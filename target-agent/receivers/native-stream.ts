// A qemu-native transfer on the target: the hypervisor's migration stream arrives on a
// NativeStream of its own (native-streams.ts hands it here), and goes into the replica's
// hypervisor, started at the reservation and listening once the stream's Open came
// (NativeStreamTarget.open). Its return path goes back on the same stream. Backpressure both
// ways: the gRPC stream is paused while the hypervisor's socket does not drain, and the socket
// while the gRPC stream does not.
//
// Pre-copy: the hypervisor reports `completed` with the guest loaded and held; the replica is then
// complete (restored, finalReplayed) and waits for the commit, which compares the stream's hash.
// Post-copy: at `postcopy-active` the decision is recorded (the point of no return: the source's
// migrate-start-postcopy came first) and the guest runs here as soon as its hypervisor has the
// device state; it is complete once the stream completed. Its disruption here: the wall time
// from its resume to the stream's end, and the time its vCPUs waited for pages, as the hypervisor
// measures it.
//
// Any failure (the hypervisor refused or died, the stream broke) fails the transfer: before the
// commitment point the session then discards the replica and its reservation.

import { NATIVE_MESSAGE_BYTES_MAX, type NativeConnection, type NativeStreamTarget } from '../../shared/driver/native-types.js';
import type { PostcopyTarget } from '../../shared/driver/types.js';
import { InvalidStateError, UnavailableError, UnimplementedError, VmMigrateError } from '../../shared/errors.js';
import { pb, toServiceError } from '../../shared/transport/grpc.js';
import type { ProgressCounters } from '../feedback.js';
import type { NativeStreamOpen, NativeStreamServerCall } from '../native-streams.js';
import type { ReceiverContext } from './context.js';

/** Return-path bytes sent in one message (well under NATIVE_MESSAGE_BYTES_MAX, which the source enforces). */
const RETURN_CHUNK_BYTES = 64 * 1024;
/**
 * The hypervisor closes its socket once it has the whole stream, and says `completed` on its
 * own connection, which may come a little later: a close not followed by it within this long is
 * a failure (the hypervisor refused the stream, or exited).
 */
const CLOSE_GRACE_MS = 2_000;

export interface NativeStreamReceiverContext extends ReceiverContext {
  fail(error: unknown): void;
}

export class NativeStreamReceiver {
  private call: NativeStreamServerCall | null = null;
  private connection: NativeConnection | null = null;
  private postcopy = false;
  private completed = false;
  /** Post-copy: set once the guest runs here. */
  private resumedAtMs: number | null = null;
  private completedAtMs: number | null = null;
  private blockedMs = 0;
  private ended = false;
  /** Stream bytes written to the hypervisor when `streaming` was last asked. */
  private bytesAtLastAsk = 0;
  /** The hypervisor has not taken the last message yet: no more is read until it has. */
  private waitingForDrain = false;
  private closedEarly: ReturnType<typeof setTimeout> | null = null;
  private readonly stopListening: () => void;

  constructor(
    private readonly context: NativeStreamReceiverContext,
    private readonly native: NativeStreamTarget,
    private readonly digest: () => string,
  ) {
    this.stopListening = native.onStatus((status) => this.onStatus(status));
  }

  /**
   * The hypervisor's stream is attached and bytes came on it since the last time this was asked
   * (the idle watchdog asks a few times per timeout), or the hypervisor is still taking what came:
   * the source is not silent. A stream attached and left silent is not activity, or a peer could
   * hold the reservation and its hypervisor without sending anything.
   */
  streamedSinceAsked(): boolean {
    if (this.call === null || this.ended) return false;
    const bytes = this.connection?.bytesWritten ?? 0;
    const flowed = bytes !== this.bytesAtLastAsk;
    this.bytesAtLastAsk = bytes;
    return flowed || this.waitingForDrain;
  }

  /** The stream for this transfer arrived: the hypervisor listens, then the bytes flow. */
  accept(call: NativeStreamServerCall, open: NativeStreamOpen): void {
    this.call = call;
    this.postcopy = open.postcopy === true;
    // The source gives its stream up after it decided (an abort, a cancel): it says which on the
    // transfer's own stream, which ends the transfer; a source that says nothing fails it here.
    call.on('cancelled', () => {
      if (this.completed || this.ended) return;
      setTimeout(() => this.broken(new UnavailableError('the source cancelled the native stream, and said nothing on the transfer', { reason: 'PEER_UNAVAILABLE' })), CLOSE_GRACE_MS).unref();
    });
    call.on('error', (error: Error) => this.broken(new UnavailableError(`the native stream broke: ${error.message}`, { reason: 'PEER_UNAVAILABLE' })));
    this.native.open({ postcopy: this.postcopy }).then(
      (connection) => this.connected(call, connection),
      (error: unknown) => this.broken(error),
    );
  }

  /** The guest's receiving end once it runs here (post-copy), else null. */
  running(): PostcopyTarget | null {
    if (this.resumedAtMs === null) return null;
    const receiver = this;
    return {
      // QEMU does not say how many pages are still on the source: 1 stands for some, until the stream completed.
      get missingPages() {
        return receiver.completed ? 0 : 1;
      },
      receivePages: () => {
        throw new UnimplementedError('a qemu-native guest takes its pages from its hypervisor\'s stream');
      },
      present: () => receiver.completed,
      missingPageList: () => new Uint32Array(0),
      receivedDigest: () => this.digest(),
    };
  }

  counters(): ProgressCounters {
    const counters: ProgressCounters = { finalReplayed: this.completed, bytesReceived: this.connection?.bytesWritten ?? 0, missingPages: this.running()?.missingPages ?? 0 };
    if (this.resumedAtMs !== null) {
      counters.guestRunMs = (this.completedAtMs ?? this.context.clock.now()) - this.resumedAtMs;
      counters.guestFetchWaitMs = this.blockedMs;
    }
    return counters;
  }

  private connected(call: NativeStreamServerCall, connection: NativeConnection): void {
    if (this.ended) return void connection.socket.destroy();
    this.connection = connection;
    const socket = connection.socket;
    call.on('data', (message: InstanceType<typeof pb.NativeSourceMessage>) => this.fromSource(call, connection, message));
    call.on('end', () => socket.end());
    socket.on('data', (chunk: Buffer) => this.toSource(call, socket, chunk));
    socket.on('error', (error) => this.broken(new InvalidStateError(`the target's hypervisor stream broke: ${error.message}`, { reason: 'HYPERVISOR_FAILED' })));
    socket.on('close', () => {
      // The hypervisor closes its end once it has the whole stream (completed); before that, it died or refused it.
      if (this.completed) return void call.end();
      this.closedEarly = setTimeout(() => this.broken(new InvalidStateError(`the target's hypervisor closed its migration stream, and did not say it completed within ${CLOSE_GRACE_MS} ms (it refused the stream, or exited)`, { reason: 'HYPERVISOR_FAILED' })), CLOSE_GRACE_MS);
    });
    call.write(pb.NativeTargetMessage.create({ ready: {} }));
    this.context.log.info({ postcopy: this.postcopy }, 'native stream attached: the hypervisor listens');
    this.context.progress(true);
  }

  private fromSource(call: NativeStreamServerCall, connection: NativeConnection, message: InstanceType<typeof pb.NativeSourceMessage>): void {
    if (this.ended) return;
    const data = message.data;
    if (message.body !== 'data' || data === null || data === undefined || data.length > NATIVE_MESSAGE_BYTES_MAX) {
      return this.broken(new InvalidStateError(message.body === 'data' ? `a native stream message of ${data?.length} bytes, at most ${NATIVE_MESSAGE_BYTES_MAX}` : `${message.body} on a native stream already open`, { reason: 'PROTOCOL_VIOLATION' }));
    }
    // The hypervisor sends its end after the stream's last byte: more bytes for a closed socket mean it refused the stream, or exited.
    if (connection.socket.destroyed) return this.broken(new InvalidStateError('the target\'s hypervisor closed its migration stream before the end (it refused the stream, or exited)', { reason: 'HYPERVISOR_FAILED' }));
    if (connection.write(data)) return;
    // The hypervisor takes the stream slower than it comes: read no more until its socket drains.
    call.pause();
    this.waitingForDrain = true;
    connection.socket.once('drain', () => {
      this.waitingForDrain = false;
      call.resume();
    });
  }

  private toSource(call: NativeStreamServerCall, socket: NativeConnection['socket'], chunk: Buffer): void {
    if (this.ended) return;
    for (let at = 0; at < chunk.length; at += RETURN_CHUNK_BYTES) {
      if (!call.write(pb.NativeTargetMessage.create({ data: chunk.subarray(at, at + RETURN_CHUNK_BYTES) }))) {
        socket.pause();
        call.once('drain', () => socket.resume());
      }
    }
  }

  private onStatus(status: string): void {
    if (this.ended) return;
    // A post-copy stream may complete before its switch (a small, quiet guest): the guest runs here all the same.
    if (status === 'completed' && this.postcopy && this.resumedAtMs === null) this.switched();
    if (status === 'completed') return this.complete();
    if (status === 'postcopy-active' && this.resumedAtMs === null) return this.switched();
    if (status === 'failed') this.broken(new InvalidStateError('the target\'s hypervisor failed to load the migration stream', { reason: 'HYPERVISOR_FAILED' }));
  }

  private complete(): void {
    this.completed = true;
    // Done with this hypervisor's migrations: the guest's own, later, are another transfer's.
    this.stopListening();
    if (this.closedEarly !== null) {
      clearTimeout(this.closedEarly);
      this.call?.end();
    }
    this.completedAtMs = this.context.clock.now();
    this.context.log.info({ bytes: this.connection?.bytesWritten ?? 0, postcopy: this.postcopy }, 'the hypervisor has the whole stream');
    if (this.postcopy) {
      void this.native.blockedMs().then((ms) => (this.blockedMs = ms), () => undefined).finally(() => this.context.progress(true));
      return;
    }
    // Pre-copy: the guest is here, held until the commit.
    this.context.restored();
    this.context.progress(true);
  }

  /** Post-copy: the source switched; the decision is recorded, then the guest runs here once its state loaded. */
  private switched(): void {
    try {
      this.context.resuming();
    } catch (error) {
      return this.broken(error);
    }
    this.native.runWhenSwitched().then(
      () => {
        this.resumedAtMs = this.context.clock.now();
        this.context.resumedHere(this.resumedAtMs);
      },
      (error: unknown) => this.context.log.error({ err: String(error) }, 'post-copy: the guest could not be resumed here'),
    );
  }

  /**
   * The stream cannot go on: the transfer fails (the session discards the replica before the
   * commit). Once the hypervisor has the whole stream, the connections' end is no failure.
   */
  private broken(error: unknown): void {
    if (this.ended) return;
    if (this.completed) {
      this.ended = true;
      this.connection?.socket.destroy();
      return this.context.log.debug({ err: String(error) }, 'the native stream ended after it completed');
    }
    this.ended = true;
    this.stopListening();
    if (this.closedEarly !== null) clearTimeout(this.closedEarly);
    this.connection?.socket.destroy();
    const call = this.call;
    if (call !== null) {
      try {
        call.emit('error', toServiceError(error instanceof VmMigrateError ? error : new UnavailableError(String(error))));
      } catch {
        // Gone already.
      }
    }
    this.context.fail(error);
  }

}
