// A Transfer stream over the simulated network: the client end is what GrpcTransferChannel writes
// to and listens on (data, end, error, drain), the server end what the target's TargetSession does
// (data, end, cancelled; write, end), with grpc-js's semantics where the protocol depends on them:
// a half-close is seen as 'end' by the server, which may still write; the server's end is the
// client's 'end'; a status error is the client's 'error'; a connection that breaks fails the
// client with UNAVAILABLE and cancels the server; messages in flight on a reset are lost, while a
// dying target's last messages still arrive before the client learns of its death.

import { SIM_SOURCE_PEER } from './names.js';
import { EventEmitter } from 'node:events';
import { grpc, migrationService, pb } from '../../../shared/transport/grpc.js';
import type { SimConnection } from './target.js';
import { statusError, type SimWire } from './wire.js';

type SourceMessage = InstanceType<typeof pb.SourceMessage>;
type TargetMessage = InstanceType<typeof pb.TargetMessage>;

/** Bytes in flight on a stream before its writer is told to wait for 'drain'. */
const STREAM_WINDOW_BYTES = 64 * 1024;

/** The source's end: what GrpcTransferChannel takes as its call. */
export class ClientEnd extends EventEmitter {
  constructor(private readonly stream: SimTransfer) {
    super();
  }

  write(message: unknown, callback?: () => void): boolean {
    return this.stream.clientWrite(message, callback);
  }

  end(): void {
    this.stream.clientHalfClose();
  }
}

/** The target's end: what TargetSession takes as its TransferStream. */
export class ServerEnd extends EventEmitter {
  constructor(private readonly stream: SimTransfer) {
    super();
  }

  getPeer(): string {
    return SIM_SOURCE_PEER;
  }

  getAuthContext(): object {
    return {};
  }

  write(message: TargetMessage): boolean {
    this.stream.serverWrite(message);
    return true;
  }

  end(): void {
    this.stream.serverEnd(null);
  }

  /** A handler that emits 'error' ends the call with that status (failStream). */
  override emit(event: string | symbol, ...args: unknown[]): boolean {
    if (event === 'error') this.stream.serverEnd(args[0] as Error & { code: grpc.status });
    return super.emit(event, ...args);
  }

  /** An event from the stream to the session, bypassing the status path above. */
  tell(event: 'data' | 'end' | 'cancelled', message?: SourceMessage): void {
    if (message === undefined) super.emit(event);
    else super.emit(event, message);
  }
}

export class SimTransfer {
  readonly client = new ClientEnd(this);
  private server: ServerEnd | null = null;
  private clientDone = false;
  private clientHalfClosed = false;
  private serverReadDone = false;
  private serverEnded = false;
  private forget = () => {};
  private readonly toTarget: string;
  private readonly toSource: string;

  constructor(
    private readonly wire: SimWire,
    id: number,
    private readonly connection: SimConnection | null,
  ) {
    this.toTarget = `s${id}>`;
    this.toSource = `s${id}<`;
    if (connection === null) {
      wire.clock.timeout(wire.net.delayMs(), () => this.clientFinish(statusError(grpc.status.UNAVAILABLE, 'connect ECONNREFUSED (the target agent is down)')));
      return;
    }
    this.forget = connection.onBreak((mode) => (mode === 'reset' ? this.reset() : this.targetDied()));
    this.sendToTarget('stream-open', 64, () => {
      if (!connection.process.alive) return;
      this.server = new ServerEnd(this);
      const transfer = connection.process.handlers.transfer as unknown as (call: ServerEnd) => void;
      transfer(this.server);
    });
  }

  clientWrite(message: unknown, callback?: () => void): boolean {
    if (this.clientDone || this.clientHalfClosed || this.connection === null || this.connection.broken) {
      callback?.();
      return true;
    }
    const bytes = this.wire.client.transfer.requestSerialize(message as SourceMessage);
    const decoded = pb.SourceMessage.decode(bytes);
    this.sendToTarget(String(decoded.body), bytes.length, () => {
      callback?.();
      this.toServer('data', decoded);
    });
    if (this.wire.net.bytesInFlight(this.toTarget) <= STREAM_WINDOW_BYTES) return true;
    this.wire.net.whenDrained(this.toTarget, () => this.client.emit('drain'));
    return false;
  }

  clientHalfClose(): void {
    if (this.clientDone || this.clientHalfClosed) return;
    this.clientHalfClosed = true;
    if (this.connection === null) return;
    this.sendToTarget('half-close', 8, () => this.toServer('end'));
  }

  serverWrite(message: TargetMessage): void {
    if (this.serverEnded || this.serverCut()) return;
    const bytes = migrationService.transfer.responseSerialize(message);
    const decoded = this.wire.client.transfer.responseDeserialize(bytes);
    this.sendToSource(String(decoded.body), bytes.length, () => {
      if (!this.clientDone) this.client.emit('data', decoded);
    });
  }

  /** The server ends the call: OK (`error` null) or with a status. */
  serverEnd(error: (Error & { code: grpc.status }) | null): void {
    if (this.serverEnded || this.serverCut()) return;
    this.serverEnded = true;
    this.sendToSource('status', error === null ? 8 : 64, () => this.clientFinish(error));
  }

  /** The server can no longer be heard: its connection broke or its process died. */
  private serverCut(): boolean {
    return this.connection === null || this.connection.broken || !this.connection.process.alive;
  }

  private sendToTarget(kind: string, bytes: number, deliver: () => void): void {
    this.wire.send({ lane: this.toTarget, direction: 'toTarget', kind, bytes, connection: this.connection!, unary: false, deliver });
  }

  private sendToSource(kind: string, bytes: number, deliver: () => void): void {
    this.wire.send({ lane: this.toSource, direction: 'toSource', kind, bytes, connection: this.connection!, unary: false, deliver });
  }

  private toServer(event: 'data' | 'end' | 'cancelled', message?: SourceMessage): void {
    if (this.server === null || this.serverReadDone || !this.connection!.process.alive) return;
    if (event !== 'data') this.serverReadDone = true;
    this.server.tell(event, message);
  }

  private clientFinish(error: (Error & { code: grpc.status }) | null): void {
    if (this.clientDone) return;
    this.clientDone = true;
    this.forget();
    this.wire.trace.add(`stream ${this.toTarget} client ${error === null ? 'end' : `error ${grpc.status[error.code]}`}`);
    if (error === null) this.client.emit('end');
    else this.client.emit('error', error);
  }

  /** A reset: what is in flight is lost; each end learns of it a one-way delay later. */
  private reset(): void {
    const { net, clock } = this.wire;
    net.close(this.toTarget);
    net.close(this.toSource);
    clock.timeout(net.delayMs(), () => this.clientFinish(statusError(grpc.status.UNAVAILABLE, 'read ECONNRESET')));
    clock.timeout(net.delayMs(), () => this.toServer('cancelled'));
  }

  /** The target's process died: what it sent still arrives, then the client sees the connection drop. */
  private targetDied(): void {
    this.wire.net.close(this.toTarget);
    this.wire.net.carry(this.toSource, 'toSource', 0, () => this.clientFinish(statusError(grpc.status.UNAVAILABLE, 'Connection dropped (the target agent died)')));
  }
}
