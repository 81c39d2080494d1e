// The NativeStream calls (qemu-native: the hypervisor's own migration stream) as the target
// agent takes them. A transfer whose method relays the hypervisor's stream registers here at its
// Open, under its reservation; the stream that names that reservation (and its migration, and
// comes from the peer that reserved it) is handed to that transfer's receiver. Anything else is
// refused at its first message: no such transfer (NOT_FOUND), the wrong migration or peer
// (PERMISSION_DENIED), a stream that does not begin with its Open (FAILED_PRECONDITION), a peer
// that ends the stream before its Open (CANCELLED, at once), or no first message in time
// (DEADLINE_EXCEEDED).

import type { Logger } from 'pino';
import { DeadlineExceededError, echo, InvalidStateError, LimitExceededError, NotFoundError, PermissionDeniedError, StreamEndedError } from '../shared/errors.js';
import { checkJobId } from '../shared/ids.js';
import type { grpc, pb } from '../shared/transport/grpc.js';
import { failStream } from '../shared/transport/handlers.js';
import { peerIdentity } from '../shared/transport/tls.js';

export type NativeStreamServerCall = grpc.ServerDuplexStream<InstanceType<typeof pb.NativeSourceMessage>, InstanceType<typeof pb.NativeTargetMessage>>;
export type NativeStreamOpen = InstanceType<typeof pb.NativeStreamOpen>;

/** A transfer waiting for its hypervisor stream. */
export interface NativeStreamAcceptor {
  readonly migrationId: string;
  /** The peer that reserved (its identity, as Reserve saw it). */
  readonly peer: string;
  accept(call: NativeStreamServerCall, open: NativeStreamOpen): void;
}

/** How long a new stream has to send its Open. */
const OPEN_TIMEOUT_MS = 10_000;
/** Transfers waiting for their stream at once (each holds a reservation, which is bounded more tightly). */
const WAITING_MAX = 1024;

export class NativeStreamEndpoints {
  private readonly waiting = new Map<string, NativeStreamAcceptor>();

  constructor(private readonly log: Logger) {}

  /** Transfer `reservationId` takes the stream that names it. */
  register(reservationId: string, acceptor: NativeStreamAcceptor): void {
    if (this.waiting.size >= WAITING_MAX) throw new LimitExceededError(`${this.waiting.size} transfers wait for their hypervisor stream, the limit is ${WAITING_MAX}`, { metadata: { limit: WAITING_MAX } });
    this.waiting.set(reservationId, acceptor);
  }

  /** The reservation ended: a stream that names it now is refused. */
  drop(reservationId: string): void {
    this.waiting.delete(reservationId);
  }

  /** Migration.NativeStream: reads the call's Open and hands the call to its transfer. */
  handle(call: NativeStreamServerCall): void {
    const peer = peerIdentity(call);
    let settled = false;
    const refuse = (error: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      this.log.warn({ peer, err: (error as Error).message }, 'refused a native stream');
      failStream(call, error);
    };
    const timer = setTimeout(() => refuse(new DeadlineExceededError(`no Open on the native stream within ${OPEN_TIMEOUT_MS} ms`, { reason: 'PEER_IDLE', metadata: { timeoutMs: OPEN_TIMEOUT_MS } })), OPEN_TIMEOUT_MS);
    call.on('cancelled', () => {
      settled = true;
      clearTimeout(timer);
    });
    // A half-close before the Open: nothing can follow, so there is nothing to wait for.
    call.once('end', () => refuse(new StreamEndedError('the peer ended the native stream before its Open', { metadata: { peer } })));
    call.once('data', (message: InstanceType<typeof pb.NativeSourceMessage>) => {
      if (settled) return;
      try {
        const open = this.opening(message, peer);
        settled = true;
        clearTimeout(timer);
        open.acceptor.accept(call, open.open);
      } catch (error) {
        refuse(error);
      }
    });
  }

  /** The acceptor the first message names, taken off the list; or why not. */
  private opening(message: InstanceType<typeof pb.NativeSourceMessage>, peer: string): { acceptor: NativeStreamAcceptor; open: NativeStreamOpen } {
    if (message.body !== 'open' || message.open === null || message.open === undefined) throw new InvalidStateError('a native stream must begin with its Open', { reason: 'PROTOCOL_VIOLATION' });
    // Decoded sub-messages are instances: absent scalars read as their proto3 defaults.
    const open = message.open as NativeStreamOpen;
    checkJobId(open.migrationId, 'migration_id');
    const acceptor = this.waiting.get(open.reservationId);
    if (acceptor === undefined) throw new NotFoundError(`no transfer of reservation '${echo(open.reservationId)}' waits for a native stream here`, { reason: 'RESERVATION_NOT_FOUND', metadata: { reservationId: open.reservationId } });
    if (acceptor.migrationId !== open.migrationId || acceptor.peer !== peer) {
      throw new PermissionDeniedError(`reservation '${echo(open.reservationId)}' belongs to another migration or peer than this native stream's (${echo(peer)})`, { metadata: { reservationId: open.reservationId } });
    }
    this.waiting.delete(open.reservationId);
    return { acceptor, open };
  }
}
