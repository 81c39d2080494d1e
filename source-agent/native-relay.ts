// The source's end of the hypervisor's migration stream (qemu-native): a private unix socket
// that the guest's hypervisor migrates into, and the NativeStream to the target agent over the
// agents' mutual-TLS gRPC connection. Bytes read from the hypervisor are counted, hashed (the
// commit's digest, native-types.ts StreamHasher) and sent; bytes the target sends back (its
// hypervisor's return path) are written to the hypervisor.
//
// Backpressure both ways, so that memory stays bounded whatever the guest's size: the socket is
// paused while the gRPC stream's buffer is full (its write returned false, until 'drain'), and the
// gRPC stream is paused while the socket's buffer is full. A message holds one read of the socket
// (at most its 64 KiB read buffer); gRPC's own buffer and HTTP/2's window bound the rest.
//
// The socket accepts one connection, the hypervisor's; another is closed at once. The socket's
// directory is private to this agent (mode 0700) and removed when the relay closes.

import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NATIVE_MESSAGE_BYTES_MAX, StreamHasher, UNIX_SOCKET_PATH_BYTES_MAX } from '../shared/driver/native-types.js';
import { DeadlineExceededError, InvalidStateError, UnavailableError, UnimplementedError, type VmMigrateError } from '../shared/errors.js';
import { fromStatus, type grpc, pb, Preserialized } from '../shared/transport/grpc.js';
import { detailsFromMetadata } from '../shared/transport/status.js';

type NativeTargetMessage = InstanceType<typeof pb.NativeTargetMessage>;
export type NativeStreamCall = grpc.ClientDuplexStream<InstanceType<typeof pb.NativeSourceMessage> | Preserialized, NativeTargetMessage>;


export interface RelayOpen {
  reservationId: string;
  migrationId: string;
  postcopy: boolean;
}

export class NativeRelay {
  /** The unix socket the hypervisor migrates into. */
  readonly endpoint: string;
  private readonly dir: string;
  private readonly server: Server;
  private socket: Socket | null = null;
  private readonly hasher = new StreamHasher();
  /** Bytes of the return path, written to the hypervisor. */
  returnedBytes = 0;
  /** The target's hypervisor listens: the source's may start. */
  ready = false;
  /** The hypervisor closed its end, and the stream's end was sent on. */
  sourceEnded = false;
  /** The target ended its side: its hypervisor had the whole stream. */
  targetDone = false;
  error: VmMigrateError | null = null;
  private closed = false;
  private readonly listeners = new Set<() => void>();

  constructor(
    private readonly call: NativeStreamCall,
    open: RelayOpen,
    private readonly address: string,
  ) {
    this.dir = mkdtempSync(join(tmpdir(), 'vmm-native-'));
    this.endpoint = join(this.dir, 'stream.sock');
    if (Buffer.byteLength(this.endpoint) > UNIX_SOCKET_PATH_BYTES_MAX) {
      rmSync(this.dir, { recursive: true, force: true });
      throw new InvalidStateError(`the relay's socket path ${this.endpoint} is longer than ${UNIX_SOCKET_PATH_BYTES_MAX} bytes: set TMPDIR to a shorter directory`, { reason: 'HYPERVISOR_FAILED' });
    }
    this.server = createServer((socket) => this.accept(socket));
    this.server.on('error', (error) => this.fail(new UnavailableError(`the relay's socket ${this.endpoint}: ${error.message}`, { reason: 'HYPERVISOR_FAILED' })));
    this.server.listen(this.endpoint);
    call.on('data', (message: NativeTargetMessage) => this.fromTarget(message));
    call.on('error', (error: grpc.ServiceError) => this.fail(fromStatus(error.code, error.details || error.message, `native stream to ${address}`, detailsFromMetadata(error.metadata))));
    call.on('end', () => this.targetEnded());
    call.write(pb.NativeSourceMessage.create({ open }));
  }

  /** Calls `listener` whenever the relay's state changed (ready, ended, failed): waits re-check. */
  onChange(listener: () => void): void {
    this.listeners.add(listener);
  }

  /** Bytes of the hypervisor's stream sent to the target so far. */
  get sentBytes(): number {
    return this.hasher.bytes;
  }

  /** The hash of the stream as the hypervisor wrote it (compared with the target's at the commit). */
  digest(): string {
    return this.hasher.digest();
  }

  /** Fails the relay if the target is not ready within `timeoutMs` (its QEMU refused, or hangs). */
  expectReadyWithin(timeoutMs: number): void {
    const timer = setTimeout(() => {
      if (!this.ready) this.fail(new DeadlineExceededError(`the target ${this.address} did not make its QEMU listen within ${timeoutMs} ms`, { reason: 'HYPERVISOR_FAILED', metadata: { timeoutMs } }));
    }, timeoutMs);
    this.onChange(() => {
      if (this.ready || this.error !== null || this.closed) clearTimeout(timer);
    });
  }

  /**
   * Fails the relay with `error` (the first one wins): the hypervisor's connection and the stream
   * end. Once both ends are done with the stream, what happens to the connections is no failure.
   */
  fail(error: VmMigrateError): void {
    if (this.error !== null || this.closed || (this.sourceEnded && this.targetDone)) return;
    this.error = error;
    this.socket?.destroy();
    try {
      this.call.cancel();
    } catch {
      // Gone already.
    }
    this.changed();
  }

  /** Ends everything and removes the socket's directory. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket?.destroy();
    this.server.close();
    try {
      this.call.cancel();
    } catch {
      // Gone already.
    }
    rmSync(this.dir, { recursive: true, force: true });
    this.changed();
    this.listeners.clear();
  }

  private changed(): void {
    for (const listener of [...this.listeners]) listener();
  }

  private accept(socket: Socket): void {
    if (this.socket !== null || this.closed) {
      socket.destroy();
      return;
    }
    this.socket = socket;
    // The hypervisor's connection is the only one: no more are taken.
    this.server.close();
    socket.on('data', (chunk: Buffer) => this.toTarget(socket, chunk));
    socket.on('end', () => {
      this.sourceEnded = true;
      this.call.end();
      this.changed();
    });
    socket.on('error', (error) => this.fail(new UnavailableError(`the hypervisor's migration stream broke: ${error.message}`, { reason: 'HYPERVISOR_FAILED' })));
  }

  private toTarget(socket: Socket, chunk: Buffer): void {
    if (this.error !== null || this.closed) return;
    this.hasher.update(chunk);
    const bytes = Buffer.from(pb.NativeSourceMessage.encode({ data: chunk }).finish());
    if (this.call.write(new Preserialized(bytes, 'native', chunk.length))) return;
    // The gRPC stream's buffer is full: read nothing more from the hypervisor until it drains.
    socket.pause();
    this.call.once('drain', () => socket.resume());
  }

  private fromTarget(message: NativeTargetMessage): void {
    if (this.error !== null || this.closed) return;
    if (message.body === 'ready') {
      this.ready = true;
      return this.changed();
    }
    const data = message.data;
    if (message.body !== 'data' || data === null || data === undefined) return;
    const socket = this.socket;
    if (!this.ready || socket === null || data.length > NATIVE_MESSAGE_BYTES_MAX) {
      const why = !this.ready ? 'before it said ready' : socket === null ? 'before the hypervisor connected' : `${data.length} bytes in one message (at most ${NATIVE_MESSAGE_BYTES_MAX})`;
      return this.fail(new InvalidStateError(`the target ${this.address} sent return-path data ${why}`, { reason: 'PROTOCOL_VIOLATION' }));
    }
    this.returnedBytes += data.length;
    if (socket.write(data)) return;
    // The hypervisor reads its return path slowly: read nothing more from the target until it does.
    this.call.pause();
    socket.once('drain', () => this.call.resume());
  }

  private targetEnded(): void {
    // The target's hypervisor closed its end: the stream is over (or it went away; its agent then says why on the transfer).
    this.targetDone = true;
    this.socket?.end();
    this.changed();
  }
}

/**
 * Opens the NativeStream of transfer `open` to the target agent `peer` and its relay; refused
 * (UNIMPLEMENTED) by a peer that carries no hypervisor stream.
 */
export function openNativeRelay(peer: { readonly address: string; openNativeStream?(): NativeStreamCall }, open: RelayOpen): NativeRelay {
  if (peer.openNativeStream === undefined) throw new UnimplementedError(`the connection to ${peer.address} carries no hypervisor migration stream`, { reason: 'NOT_SUPPORTED' });
  return new NativeRelay(peer.openNativeStream(), open, peer.address);
}
