// A source agent that does what the test says, byte for byte: a raw gRPC client of a target's
// Migration service (reserve, transfer messages built by hand or taken from a real sim guest),
// and raw HTTP/2 for what no gRPC client sends (a truncated or corruptly compressed frame). Each
// call resolves with the status the target ended it with, and the reason in its ErrorInfo.

import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { SimDriver } from '../../shared/driver/sim/driver.js';
import type { SimSourceGuest } from '../../shared/driver/sim/guest.js';
import type { CheckpointChunk, SealedUnit } from '../../shared/driver/types.js';
import { packMessage, type PayloadBody, PROTOCOL_VERSION } from '../../shared/protocol.js';
import { grpc, makeClient, migrationService, pb, unary } from '../../shared/transport/grpc.js';
import { detailsFromMetadata, decodeStatus } from '../../shared/transport/status.js';

type SourceMessage = InstanceType<typeof pb.SourceMessage>;
type TargetMessage = InstanceType<typeof pb.TargetMessage>;

export const MiB = 2 ** 20;

/** How a call ended, as the peer sees it. */
export interface EndStatus {
  code: number;
  name: string;
  details: string;
  /** ErrorInfo.reason of the grpc-status-details-bin trailer ('' without one). */
  reason: string;
}

export function endStatus(code: number, details: string, reason = ''): EndStatus {
  return { code, name: grpc.status[code] ?? String(code), details, reason };
}

/** A guest on a source host of the test's own, to take real checkpoints, units and pages from. */
export class SourceSide {
  readonly driver = new SimDriver({ memoryBytesTotal: 4096 * MiB, replicaMemory: 'lazy', segmentPoolBytesMax: 0 });
  private count = 0;

  /** A suspended `idle` guest of `memoryBytes`: its description reserves a replica. */
  guest(memoryBytes = 64 * MiB): SimSourceGuest {
    return this.driver.createGuest({ id: `hostile-${++this.count}`, profile: 'idle', memoryBytes, start: false, environmentSeed: 7 });
  }

  /** The guest's checkpoint as of now, its final unit (the guest is suspended) and its digest. */
  async checkpoint(guest: SimSourceGuest): Promise<{ firstSequence: number; chunks: CheckpointChunk[]; units: SealedUnit[]; digest: string }> {
    const start = guest.recorder.startRecording();
    const chunks: CheckpointChunk[] = [];
    for await (const chunk of guest.recorder.liveCheckpoint({ chunkPages: 4096 })) chunks.push({ ...chunk, bytes: chunk.bytes.slice() });
    await guest.suspend();
    const units: SealedUnit[] = [];
    for (let unit = await guest.recorder.nextSealedUnit(); unit !== null; unit = await guest.recorder.nextSealedUnit()) units.push(unit);
    return { firstSequence: start.firstSequence, chunks, units, digest: guest.digest() };
  }

  shutdown(): void {
    this.driver.shutdown();
  }
}

/** The packed bytes of a SourceMessage with a payload, as the source agent sends it. */
export function payloadMessage(body: PayloadBody, raw: Uint8Array): Buffer {
  return packMessage(body, raw, false).bytes;
}

export function chunkMessage(chunk: CheckpointChunk, generation = 0): Buffer {
  return payloadMessage({ kind: 'chunk', index: chunk.index, final: chunk.final, memoryBytesCovered: chunk.memoryBytesCovered, generation }, chunk.bytes);
}

export function unitMessage(unit: SealedUnit): Buffer {
  return payloadMessage({ kind: 'unit', sequence: unit.sequence, final: unit.final, guestNs: unit.guestNs, eventCount: unit.eventCount }, unit.bytes);
}

export function encoded(message: Record<string, unknown>): Buffer {
  return Buffer.from(pb.SourceMessage.encode(pb.SourceMessage.create(message as never)).finish());
}

/** One Transfer stream whose every request is bytes the test chose. */
export class RawTransfer {
  readonly received: TargetMessage[] = [];
  readonly ended: Promise<EndStatus>;
  private readonly call: grpc.ClientDuplexStream<Buffer, TargetMessage>;

  constructor(client: grpc.Client, options: { read?: boolean } = {}) {
    const m = migrationService.transfer;
    this.call = client.makeBidiStreamRequest(m.path, (b: Buffer) => b, m.responseDeserialize as (b: Buffer) => TargetMessage);
    this.ended = new Promise((resolve) => {
      this.call.on('status', (s: grpc.StatusObject) => resolve(endStatus(s.code, s.details, detailsFromMetadata(s.metadata).reason ?? '')));
      this.call.on('error', () => {});
    });
    if (options.read !== false) this.call.on('data', (message: TargetMessage) => this.received.push(message));
  }

  /** Writes `bytes` (or a message object, encoded) as one request; resolves when it was flushed. */
  send(message: Buffer | Record<string, unknown>): Promise<void> {
    const bytes = Buffer.isBuffer(message) ? message : encoded(message);
    return new Promise((resolve) => {
      if (!this.call.write(bytes, () => resolve())) resolve();
    });
  }

  /** Writes without waiting (for floods); returns whether the stream's buffer has room. */
  push(message: Buffer): boolean {
    return this.call.write(message);
  }

  get writable(): boolean {
    return this.call.writable;
  }

  halfClose(): void {
    this.call.end();
  }

  cancel(): void {
    this.call.cancel();
  }

  kinds(): string[] {
    return this.received.map((m) => String(m.body));
  }
}

function reserveRequest(guest: SimSourceGuest, migrationId: string, maxDurationMs: number): InstanceType<typeof pb.ReserveRequest> {
  const d = guest.describe();
  return pb.ReserveRequest.create({
    protocolVersion: PROTOCOL_VERSION,
    agentVersion: 'hostile',
    migrationId,
    downtimeLimitMs: 300,
    maxDurationMs,
    guest: { id: d.id, driver: d.driver, memoryBytes: d.memoryBytes, vcpus: d.vcpus, unitMs: d.unitMs, machineConfig: d.machineConfig, summary: d.summary },
  });
}

/** A raw client of one target's Migration service. */
export class RawPeer {
  readonly client: grpc.Client;

  constructor(readonly address: string) {
    this.client = makeClient(migrationService, 'Migration', address, grpc.credentials.createInsecure());
  }

  capacity(): Promise<InstanceType<typeof pb.Capacity>> {
    return unary(this.client, migrationService.getCapacity, pb.CapacityRequest.create(), 5_000, 'capacity');
  }

  async reserved(): Promise<number> {
    return Number((await this.capacity()).memoryBytesReserved);
  }

  /** Reserves room for `guest`; returns the reservation id. */
  async reserve(guest: SimSourceGuest, migrationId = `job-${guest.id}`, maxDurationMs = 0): Promise<string> {
    return (await unary(this.client, migrationService.reserve, reserveRequest(guest, migrationId, maxDurationMs), 10_000, 'reserve')).reservationId;
  }

  /** Reserves room for `guest` from another address of this host (another peer), over raw HTTP/2; resolves with the call's status. */
  reserveFrom(localAddress: string, guest: SimSourceGuest): Promise<EndStatus> {
    const request = Buffer.from(pb.ReserveRequest.encode(reserveRequest(guest, `job-${guest.id}`, 0)).finish());
    return rawHttp2Call(this.address, migrationService.reserve.path, [{ bytes: request }], {}, localAddress);
  }

  /** Reserves, opens a transfer of `method`, and waits for the Open's acknowledgement. */
  async open(guest: SimSourceGuest, method = 'crtr', firstSequence = 0, options: { read?: boolean } = {}): Promise<RawTransfer> {
    const reservationId = await this.reserve(guest);
    const transfer = new RawTransfer(this.client, options);
    await transfer.send({ open: { reservationId, migrationId: `job-${guest.id}`, method, firstSequence } });
    return transfer;
  }

  transfer(options: { read?: boolean } = {}): RawTransfer {
    return new RawTransfer(this.client, options);
  }

  close(): void {
    this.client.close();
  }
}

/**
 * One call over raw HTTP/2: the gRPC frames of `messages` as given (`compressed` sets each frame's
 * flag byte), with `headers` added. Resolves with the status the server ended it with.
 */
export function rawHttp2Call(
  address: string,
  path: string,
  frames: Array<{ bytes: Buffer; compressed?: boolean; length?: number }>,
  headers: Record<string, string> = {},
  localAddress?: string,
): Promise<EndStatus> {
  return new Promise((resolve, reject) => {
    const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
    // From `localAddress` (another loopback address: another peer), if given.
    const session = http2.connect(`http://${address}`, localAddress === undefined ? {} : { createConnection: () => net.connect({ host, port, localAddress }) });
    session.on('error', reject);
    const request = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers });
    let status: EndStatus | null = null;
    const take = (h: http2.IncomingHttpHeaders) => {
      if (h['grpc-status'] === undefined) return;
      const bin = h['grpc-status-details-bin'];
      const reason = typeof bin === 'string' ? (decodeStatus(Buffer.from(bin, 'base64')).reason ?? '') : '';
      status = endStatus(Number(h['grpc-status']), decodeURIComponent(String(h['grpc-message'] ?? '')), reason);
    };
    request.on('response', take);
    request.on('trailers', take);
    request.on('data', () => {});
    request.on('close', () => {
      session.close();
      if (status === null) reject(new Error(`${path}: the stream closed without a gRPC status (rst ${request.rstCode})`));
      else resolve(status);
    });
    for (const frame of frames) {
      const prefix = Buffer.alloc(5);
      prefix.writeUInt8(frame.compressed ? 1 : 0, 0);
      prefix.writeUInt32BE(frame.length ?? frame.bytes.length, 1);
      request.write(Buffer.concat([prefix, frame.bytes]));
    }
    request.end();
  });
}

/** Resolves with how long the agent's health service took to answer, ms. */
export async function healthLatencyMs(address: string): Promise<number> {
  const started = performance.now();
  const status = await rawHttp2Call(address, '/grpc.health.v1.Health/Check', [{ bytes: Buffer.alloc(0) }]);
  if (status.code !== 0) throw new Error(`health check answered ${status.name}: ${status.details}`);
  return performance.now() - started;
}

/** Resident memory of process `pid`, MiB. */
export function rssMiB(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (match === null) throw new Error(`no VmRSS for process ${pid}`);
  return Number(match[1]) / 1024;
}

function framed(bytes: Buffer): Buffer {
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(bytes.length, 1);
  return Buffer.concat([prefix, bytes]);
}

/**
 * A Transfer on raw HTTP/2 (default windows) that sends `open`, then up to `pings` pings as fast as
 * the connection takes them, and never reads: what the target queues for it stays queued. Resolves
 * with the status it ended with and the pings written.
 */
export async function floodOfPings(address: string, open: Buffer, pings: number): Promise<{ status: EndStatus; sent: number }> {
  const session = http2.connect(`http://${address}`);
  session.on('error', () => {});
  const request = session.request({ ':method': 'POST', ':path': '/vmmigrate.v1.Migration/Transfer', 'content-type': 'application/grpc', te: 'trailers' });
  let status: EndStatus | null = null;
  const take = (h: http2.IncomingHttpHeaders) => {
    if (h['grpc-status'] !== undefined) status = endStatus(Number(h['grpc-status']), decodeURIComponent(String(h['grpc-message'] ?? '')));
  };
  request.on('response', take);
  request.on('trailers', take);
  request.on('error', () => {});
  const closed = new Promise<void>((resolve) => request.once('close', () => resolve()));
  request.write(framed(open));
  const batchPings = 10_000;
  const batch = Buffer.concat(Array<Buffer>(batchPings).fill(framed(encoded({ ping: { sentMs: 1 } }))));
  let sent = 0;
  while (sent < pings && status === null && !request.destroyed) {
    sent += batchPings;
    if (!request.write(batch)) await Promise.race([new Promise((resolve) => request.once('drain', resolve)), closed]);
    request.removeAllListeners('drain');
  }
  // The status comes after what the target queued: read it all now.
  request.on('data', () => {});
  for (let waitedMs = 0; status === null && !request.destroyed && waitedMs < 10_000; waitedMs += 20) await new Promise((resolve) => setTimeout(resolve, 20));
  session.destroy();
  return { status: status ?? endStatus(-1, 'no status within 10 s of the flood'), sent };
}

export type { SourceMessage };
