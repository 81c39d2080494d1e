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
// Any failure fails the transfer (before the commitment point the session then discards the
// replica and its reservation), blamed on whoever caused it: the peer ended the stream before the
// hypervisor had all of it (CANCELLED, PEER_ENDED_STREAM), the hypervisor rejected the bytes the
// peer sent (INVALID_ARGUMENT, MALFORMED_STREAM), the stream from the peer was cut (UNAVAILABLE,
// PEER_UNAVAILABLE), or the hypervisor failed by itself (FAILED_PRECONDITION, HYPERVISOR_FAILED).
// The hypervisor's end of the stream says little by itself (it closes its socket in every case,
// and QEMU exits on a stream it cannot load), so its own account decides (NativeStreamTarget.stopReason).

import { NATIVE_MESSAGE_BYTES_MAX, type NativeConnection, type NativeStreamTarget } from '../../shared/driver/native-types.js';
import type { PostcopyTarget } from '../../shared/driver/types.js';
import { InvalidArgumentError, InvalidStateError, LimitExceededError, StreamEndedError, UnavailableError, UnimplementedError, VmMigrateError } from '../../shared/errors.js';
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
  /** The peer ended its side of the stream (half-close), after this many bytes; null while it streams. */
  private peerEndedAtBytes: number | null = null;
  /** The hypervisor stopped taking the stream: its account is being read (once). */
  private judging = false;
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
      setTimeout(() => this.broken(this.cut('it was cancelled, or its connection lost, and the source said nothing on the transfer')), CLOSE_GRACE_MS).unref();
    });
    call.on('error', (error: Error) => this.broken(this.cut(error.message)));
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
    call.on('end', () => {
      // The source's hypervisor ended its stream: normal once it sent all of it, which only the
      // target's hypervisor can tell (it completes, or rejects what it got).
      this.peerEndedAtBytes = connection.bytesWritten;
      socket.end();
    });
    socket.on('data', (chunk: Buffer) => this.toSource(call, socket, chunk));
    // An error on the hypervisor's socket is followed by its close.
    socket.on('error', (error) => this.context.log.debug({ err: error.message }, 'the target hypervisor\'s stream socket failed'));
    socket.on('close', () => {
      // The hypervisor closes its end once it has the whole stream (completed, said on its own
      // connection, maybe a little later); before that, it rejected the stream or failed.
      if (this.completed) return void call.end();
      this.closedEarly = setTimeout(() => this.hypervisorStopped(), CLOSE_GRACE_MS);
    });
    call.write(pb.NativeTargetMessage.create({ ready: {} }));
    this.context.log.info({ postcopy: this.postcopy }, 'native stream attached: the hypervisor listens');
    this.context.progress(true);
  }

  private fromSource(call: NativeStreamServerCall, connection: NativeConnection, message: InstanceType<typeof pb.NativeSourceMessage>): void {
    if (this.ended) return;
    const data = message.data;
    if (message.body !== 'data' || data === null || data === undefined) {
      return this.broken(new InvalidStateError(`the source sent ${message.body ?? 'an empty message'} on a native stream already open`, { reason: 'PROTOCOL_VIOLATION' }));
    }
    if (data.length > NATIVE_MESSAGE_BYTES_MAX) return this.broken(new LimitExceededError(`the source sent a native stream message of ${data.length} bytes, at most ${NATIVE_MESSAGE_BYTES_MAX}`, { metadata: { bytes: data.length, limit: NATIVE_MESSAGE_BYTES_MAX } }));
    // The hypervisor closed its end before the stream's last byte (it rejected the stream, or
    // failed): read no more; its account, once in, says which.
    if (connection.socket.destroyed) return void call.pause();
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
    if (status === 'failed') this.hypervisorStopped();
  }

  /** The stream from the source was cut (its call failed or was cancelled): UNAVAILABLE. */
  private cut(why: string): UnavailableError {
    const bytes = this.connection?.bytesWritten ?? 0;
    return new UnavailableError(`the native stream from the source was cut after ${bytes} bytes: ${why}`, { reason: 'PEER_UNAVAILABLE', metadata: { bytes } });
  }

  /**
   * The hypervisor stopped taking the stream before it completed (it said failed, or closed its
   * socket): its own account says whether it rejected what the peer sent, or failed by itself.
   */
  private hypervisorStopped(): void {
    if (this.judging || this.ended || this.completed) return;
    this.judging = true;
    this.native.stopReason().then(
      (reason) => this.broken(this.blame(reason)),
      (error: unknown) => this.broken(error),
    );
  }

  /** The error for a hypervisor that stopped taking the stream, blamed on the peer or on itself. */
  private blame(reason: { exit: string | null; rejectedStream: boolean; said: string }): VmMigrateError {
    const bytes = this.connection?.bytesWritten ?? 0;
    const said = reason.said === '' ? '' : `; it said: ${reason.said}`;
    const metadata = { bytes };
    if (reason.rejectedStream && this.peerEndedAtBytes !== null) {
      return new StreamEndedError(`the source ended its native stream after ${this.peerEndedAtBytes} bytes, before the target's hypervisor had all of the migration (it could not load what came${said})`, { metadata });
    }
    if (reason.rejectedStream) {
      return new InvalidArgumentError(`the source sent a migration stream the target's hypervisor could not load (rejected after ${bytes} bytes${said})`, { reason: 'MALFORMED_STREAM', metadata });
    }
    const how = reason.exit === null ? 'closed its migration stream without completing it' : `exited (${reason.exit})`;
    return new InvalidStateError(`the target's hypervisor ${how} ${bytes} bytes into the migration stream${said}`, { reason: 'HYPERVISOR_FAILED', metadata });
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
