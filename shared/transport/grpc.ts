// The one module that touches @grpc/grpc-js: service definitions built from the generated
// protobufjs code, server and client construction with their limits, and the mapping between
// the project's operating errors and gRPC statuses (both directions), their reason and metadata
// carried as google.rpc.Status details in the grpc-status-details-bin trailer.

import * as grpc from '@grpc/grpc-js';
import { google, vmmigrate } from '../proto/generated.js';
import { detailsFromMetadata, detailsOf, encodeStatus, type ErrorDetails, STATUS_DETAILS_KEY } from './status.js';
import { decodeStatusInterceptor, requestDecoder } from './decode-status.js';
import {
  AbortedError,
  AlreadyExistsError,
  bounded,
  CorruptDataError,
  DeadlineExceededError,
  type ErrorCode,
  InvalidArgumentError,
  InvalidStateError,
  LimitExceededError,
  MESSAGE_CHARS_MAX,
  NotFoundError,
  PermissionDeniedError,
  ReservationRefusedError,
  UnavailableError,
  UnimplementedError,
  VmMigrateError,
} from '../errors.js';

/** The agent-to-agent protocol and the deprecated Control v1. */
export const pb = vmmigrate.v1;
/** The Control API v2 and the error reasons. */
export const pb2 = vmmigrate.v2;
/** google.rpc: Status and its error details. */
export const rpc = google.rpc;
export { grpc };

/** Largest message either agent sends or accepts: a 16 MiB chunk or unit plus framing. */
export const MESSAGE_BYTES_MAX = 20 * 1024 * 1024;

export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': MESSAGE_BYTES_MAX,
  'grpc.max_send_message_length': MESSAGE_BYTES_MAX,
  // Detect a dead peer within ~40 s even on an idle stream.
  'grpc.keepalive_time_ms': 30_000,
  'grpc.keepalive_timeout_ms': 10_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.http2.min_time_between_pings_ms': 10_000,
  // Reconnect backoff capped so a restarted peer is found again quickly.
  'grpc.max_reconnect_backoff_ms': 5_000,
  // Receive window of the client side (see FLOW_CONTROL_WINDOW_BYTES).
  'grpc-node.flow_control_window': 16 * 1024 * 1024,
};

export const SERVER_OPTIONS: grpc.ServerOptions = {
  'grpc.max_receive_message_length': MESSAGE_BYTES_MAX,
  'grpc.max_send_message_length': MESSAGE_BYTES_MAX,
  'grpc.keepalive_time_ms': 30_000,
  'grpc.keepalive_timeout_ms': 10_000,
  'grpc.http2.min_ping_interval_without_data_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
};

/**
 * HTTP/2 flow-control window of the receiving side, per stream and per connection. The default
 * (64 KiB) caps a stream at 64 KiB per event-loop round trip of the receiver, which a target busy
 * restoring pages makes slow: measured here at ~45 MB/s on loopback.
 */
export const FLOW_CONTROL_WINDOW_BYTES = 16 * 1024 * 1024;

/**
 * A grpc-js server whose HTTP/2 sessions advertise FLOW_CONTROL_WINDOW_BYTES. grpc-js has a
 * client-side option for this ('grpc-node.flow_control_window') but none for servers, so the
 * settings are set on the options object it passes to node:http2, and each new session's
 * connection window is raised once it starts.
 */
export function createServer(interceptors: grpc.ServerInterceptor[] = []): grpc.Server {
  // First: it must be handed grpc-js's base call (decode-status.ts).
  const server = new grpc.Server({ ...SERVER_OPTIONS, interceptors: [decodeStatusInterceptor, ...interceptors] });
  const internal = server as unknown as { commonServerOptions?: { settings?: Record<string, number> } };
  if (internal.commonServerOptions) {
    internal.commonServerOptions.settings = { ...internal.commonServerOptions.settings, initialWindowSize: FLOW_CONTROL_WINDOW_BYTES };
  }
  return server;
}

/** Raises the connection-level window of every session of `server` (call after binding). */
export function widenServerSessions(server: grpc.Server): void {
  const internal = server as unknown as { http2Servers?: Map<import('node:http2').Http2Server, unknown> };
  for (const http2Server of internal.http2Servers?.keys() ?? []) {
    http2Server.on('session', (session) => {
      session.once('localSettings', () => {
        try {
          session.setLocalWindowSize(FLOW_CONTROL_WINDOW_BYTES);
        } catch {
          // The session closed already.
        }
      });
    });
  }
}

/**
 * Calls `onFailure` for each TLS handshake the server refuses (an untrusted or missing client
 * certificate, a plaintext client): grpc-js drops these connections without a trace of its own.
 */
export function onTlsHandshakeFailure(server: grpc.Server, onFailure: (error: Error, remoteAddress: string) => void): void {
  const internal = server as unknown as { http2Servers?: Map<import('node:events').EventEmitter, unknown> };
  for (const http2Server of internal.http2Servers?.keys() ?? []) {
    http2Server.on('tlsClientError', (error: Error, socket: import('node:net').Socket) => onFailure(error, `${socket.remoteAddress}:${socket.remotePort}`));
  }
}

/**
 * The streams of a migration, as its bytes are counted: payload messages by kind, the
 * hypervisor's own migration stream (qemu-native) as native, everything else as control.
 */
export type StreamName = 'checkpoint' | 'log' | 'pages' | 'native' | 'control';
export const STREAM_NAMES: readonly StreamName[] = ['checkpoint', 'log', 'pages', 'native', 'control'];

/** Bytes of one stream: before compression, and on the wire (serialized, with the 5-byte gRPC prefix). */
export interface StreamBytes {
  rawBytes: number;
  wireBytes: number;
}

/** Counts serialized bytes (plus gRPC's 5-byte message prefix) of messages through a codec. */
export interface ByteCounter {
  sent: number;
  received: number;
  /** With it, the same bytes by stream: their wireBytes add up to sent + received. */
  streams?: Record<StreamName, StreamBytes>;
}

/** A counter that also counts by stream. */
export type StreamByteCounter = ByteCounter & { streams: Record<StreamName, StreamBytes> };

export function streamByteCounter(): StreamByteCounter {
  const streams = Object.fromEntries(STREAM_NAMES.map((name) => [name, { rawBytes: 0, wireBytes: 0 }])) as Record<StreamName, StreamBytes>;
  return { sent: 0, received: 0, streams };
}

interface Codec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(bytes: Uint8Array): T;
}

/**
 * A message its sender serialized itself (shared/protocol.ts packMessage: the SourceMessages that
 * carry a checkpoint chunk, a unit or pages); the serializer passes its bytes through.
 */
export class Preserialized {
  constructor(
    readonly bytes: Buffer,
    /** The stream it belongs to, and its payload's size before compression (byte counting). */
    readonly stream: StreamName = 'control',
    readonly rawBytes = bytes.length,
  ) {}
}

/** The bytes of a finished protobufjs writer as a Buffer, without a copy (finish() returns a fresh buffer of its own). */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function serializer<T>(codec: Codec<T>): (m: T | Preserialized) => Buffer {
  return (m) => (m instanceof Preserialized ? m.bytes : asBuffer(codec.encode(m).finish()));
}

function method<Req, Res>(
  service: string,
  name: string,
  request: Codec<Req>,
  response: Codec<Res>,
  requestStream: boolean,
  responseStream: boolean,
  pkg = 'vmmigrate.v1',
): grpc.MethodDefinition<Req | Preserialized, Res> {
  return {
    path: `/${pkg}.${service}/${name}`,
    requestStream,
    responseStream,
    requestSerialize: serializer(request),
    // Only servers decode requests: one that does not decode is INVALID_ARGUMENT (decode-status.ts).
    requestDeserialize: requestDecoder(`${pkg}.${service}.${name} request`, (b) => request.decode(b)),
    responseSerialize: serializer(response),
    responseDeserialize: (b: Buffer) => response.decode(b),
  };
}

type Msg<T extends abstract new (...args: never) => unknown> = InstanceType<T>;

export const migrationService = {
  getCapacity: method<Msg<typeof pb.CapacityRequest>, Msg<typeof pb.Capacity>>('Migration', 'GetCapacity', pb.CapacityRequest, pb.Capacity, false, false),
  reserve: method<Msg<typeof pb.ReserveRequest>, Msg<typeof pb.ReserveResponse>>('Migration', 'Reserve', pb.ReserveRequest, pb.ReserveResponse, false, false),
  release: method<Msg<typeof pb.ReleaseRequest>, Msg<typeof pb.ReleaseResponse>>('Migration', 'Release', pb.ReleaseRequest, pb.ReleaseResponse, false, false),
  transfer: method<Msg<typeof pb.SourceMessage>, Msg<typeof pb.TargetMessage>>('Migration', 'Transfer', pb.SourceMessage, pb.TargetMessage, true, true),
  probe: method<Msg<typeof pb.ProbeData>, Msg<typeof pb.ProbeResult>>('Migration', 'Probe', pb.ProbeData, pb.ProbeResult, true, false),
  queryOutcome: method<Msg<typeof pb.OutcomeRequest>, Msg<typeof pb.OutcomeResponse>>('Migration', 'QueryOutcome', pb.OutcomeRequest, pb.OutcomeResponse, false, false),
  nativeStream: method<Msg<typeof pb.NativeSourceMessage>, Msg<typeof pb.NativeTargetMessage>>('Migration', 'NativeStream', pb.NativeSourceMessage, pb.NativeTargetMessage, true, true),
} satisfies grpc.ServiceDefinition;

export const controlService = {
  listGuests: method<Msg<typeof pb.ListGuestsRequest>, Msg<typeof pb.ListGuestsResponse>>('Control', 'ListGuests', pb.ListGuestsRequest, pb.ListGuestsResponse, false, false),
  startGuest: method<Msg<typeof pb.StartGuestRequest>, Msg<typeof pb.StartGuestResponse>>('Control', 'StartGuest', pb.StartGuestRequest, pb.StartGuestResponse, false, false),
  stopGuest: method<Msg<typeof pb.StopGuestRequest>, Msg<typeof pb.StopGuestResponse>>('Control', 'StopGuest', pb.StopGuestRequest, pb.StopGuestResponse, false, false),
  getCapacity: method<Msg<typeof pb.GetCapacityRequest>, Msg<typeof pb.Capacity>>('Control', 'GetCapacity', pb.GetCapacityRequest, pb.Capacity, false, false),
  startMigration: method<Msg<typeof pb.StartMigrationRequest>, Msg<typeof pb.StartMigrationResponse>>(
    'Control',
    'StartMigration',
    pb.StartMigrationRequest,
    pb.StartMigrationResponse,
    false,
    false,
  ),
  getJob: method<Msg<typeof pb.GetJobRequest>, Msg<typeof pb.Job>>('Control', 'GetJob', pb.GetJobRequest, pb.Job, false, false),
  listJobs: method<Msg<typeof pb.ListJobsRequest>, Msg<typeof pb.ListJobsResponse>>('Control', 'ListJobs', pb.ListJobsRequest, pb.ListJobsResponse, false, false),
  watchJob: method<Msg<typeof pb.WatchJobRequest>, Msg<typeof pb.JobEvent>>('Control', 'WatchJob', pb.WatchJobRequest, pb.JobEvent, false, true),
  cancelJob: method<Msg<typeof pb.CancelJobRequest>, Msg<typeof pb.CancelJobResponse>>('Control', 'CancelJob', pb.CancelJobRequest, pb.CancelJobResponse, false, false),
} satisfies grpc.ServiceDefinition;

/** Control v2 (proto/vmmigrate/v2/control.proto). */
const v2 = <Req, Res>(name: string, request: Codec<Req>, response: Codec<Res>, responseStream = false) => method<Req, Res>('Control', name, request, response, false, responseStream, 'vmmigrate.v2');
export const controlServiceV2 = {
  listGuests: v2<Msg<typeof pb2.ListGuestsRequest>, Msg<typeof pb2.ListGuestsResponse>>('ListGuests', pb2.ListGuestsRequest, pb2.ListGuestsResponse),
  startGuest: v2<Msg<typeof pb2.StartGuestRequest>, Msg<typeof pb2.StartGuestResponse>>('StartGuest', pb2.StartGuestRequest, pb2.StartGuestResponse),
  stopGuest: v2<Msg<typeof pb2.StopGuestRequest>, Msg<typeof pb2.StopGuestResponse>>('StopGuest', pb2.StopGuestRequest, pb2.StopGuestResponse),
  getCapacity: v2<Msg<typeof pb2.GetCapacityRequest>, Msg<typeof pb2.Capacity>>('GetCapacity', pb2.GetCapacityRequest, pb2.Capacity),
  startMigration: v2<Msg<typeof pb2.StartMigrationRequest>, Msg<typeof pb2.StartMigrationResponse>>('StartMigration', pb2.StartMigrationRequest, pb2.StartMigrationResponse),
  getJob: v2<Msg<typeof pb2.GetJobRequest>, Msg<typeof pb2.Job>>('GetJob', pb2.GetJobRequest, pb2.Job),
  listJobs: v2<Msg<typeof pb2.ListJobsRequest>, Msg<typeof pb2.ListJobsResponse>>('ListJobs', pb2.ListJobsRequest, pb2.ListJobsResponse),
  watchJob: v2<Msg<typeof pb2.WatchJobRequest>, Msg<typeof pb2.JobEvent>>('WatchJob', pb2.WatchJobRequest, pb2.JobEvent, true),
  cancelJob: v2<Msg<typeof pb2.CancelJobRequest>, Msg<typeof pb2.CancelJobResponse>>('CancelJob', pb2.CancelJobRequest, pb2.CancelJobResponse),
  resolveJob: v2<Msg<typeof pb2.ResolveJobRequest>, Msg<typeof pb2.ResolveJobResponse>>('ResolveJob', pb2.ResolveJobRequest, pb2.ResolveJobResponse),
  estimateMigration: v2<Msg<typeof pb2.EstimateMigrationRequest>, Msg<typeof pb2.EstimateMigrationResponse>>('EstimateMigration', pb2.EstimateMigrationRequest, pb2.EstimateMigrationResponse),
  protect: v2<Msg<typeof pb2.ProtectRequest>, Msg<typeof pb2.ProtectResponse>>('Protect', pb2.ProtectRequest, pb2.ProtectResponse),
  unprotect: v2<Msg<typeof pb2.UnprotectRequest>, Msg<typeof pb2.UnprotectResponse>>('Unprotect', pb2.UnprotectRequest, pb2.UnprotectResponse),
  switchover: v2<Msg<typeof pb2.SwitchoverRequest>, Msg<typeof pb2.SwitchoverResponse>>('Switchover', pb2.SwitchoverRequest, pb2.SwitchoverResponse),
  failover: v2<Msg<typeof pb2.FailoverRequest>, Msg<typeof pb2.FailoverResponse>>('Failover', pb2.FailoverRequest, pb2.FailoverResponse),
  getProtection: v2<Msg<typeof pb2.GetProtectionRequest>, Msg<typeof pb2.Protection>>('GetProtection', pb2.GetProtectionRequest, pb2.Protection),
  listProtections: v2<Msg<typeof pb2.ListProtectionsRequest>, Msg<typeof pb2.ListProtectionsResponse>>('ListProtections', pb2.ListProtectionsRequest, pb2.ListProtectionsResponse),
  getOutputs: v2<Msg<typeof pb2.GetOutputsRequest>, Msg<typeof pb2.GetOutputsResponse>>('GetOutputs', pb2.GetOutputsRequest, pb2.GetOutputsResponse),
  getConsole: v2<Msg<typeof pb2.GetConsoleRequest>, Msg<typeof pb2.GetConsoleResponse>>('GetConsole', pb2.GetConsoleRequest, pb2.GetConsoleResponse),
  watchProtection: v2<Msg<typeof pb2.WatchProtectionRequest>, Msg<typeof pb2.Protection>>('WatchProtection', pb2.WatchProtectionRequest, pb2.Protection, true),
} satisfies grpc.ServiceDefinition;

/**
 * A copy of `service` whose serializers add every message's size (plus the 5-byte gRPC prefix)
 * to `counter`: the bytes a migration put on the wire between the agents, excluding HTTP/2 and
 * TCP headers.
 */
export function countingService<S extends object>(service: S, counter: ByteCounter, side: 'client' | 'server'): S {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, m] of Object.entries(service) as Array<[string, grpc.MethodDefinition<unknown, unknown>]>) {
    const outgoing = side === 'client' ? m.requestSerialize : m.responseSerialize;
    const incoming = side === 'client' ? m.responseDeserialize : m.requestDeserialize;
    const countedOut = (value: unknown) => {
      const b = outgoing(value);
      counter.sent += b.length + 5;
      if (counter.streams !== undefined) {
        const payload = value instanceof Preserialized ? value : null;
        const stream = counter.streams[payload?.stream ?? 'control'];
        stream.wireBytes += b.length + 5;
        stream.rawBytes += payload === null || payload.stream === 'control' ? b.length + 5 : payload.rawBytes;
      }
      return b;
    };
    const countedIn = (b: Buffer) => {
      counter.received += b.length + 5;
      if (counter.streams !== undefined) {
        counter.streams.control.wireBytes += b.length + 5;
        counter.streams.control.rawBytes += b.length + 5;
      }
      return incoming(b);
    };
    out[name] =
      side === 'client'
        ? { ...m, requestSerialize: countedOut, responseDeserialize: countedIn }
        : { ...m, responseSerialize: countedOut, requestDeserialize: countedIn };
  }
  return out as S;
}

const STATUS_OF: Record<ErrorCode, grpc.status> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  RESOURCE_EXHAUSTED: grpc.status.RESOURCE_EXHAUSTED,
  DATA_LOSS: grpc.status.DATA_LOSS,
  ABORTED: grpc.status.ABORTED,
  CANCELLED: grpc.status.CANCELLED,
  UNAVAILABLE: grpc.status.UNAVAILABLE,
  UNIMPLEMENTED: grpc.status.UNIMPLEMENTED,
  PERMISSION_DENIED: grpc.status.PERMISSION_DENIED,
  DEADLINE_EXCEEDED: grpc.status.DEADLINE_EXCEEDED,
};

/** The gRPC status an error becomes: its own code for an operating error, INTERNAL otherwise. */
export function statusOf(error: unknown): grpc.status {
  return error instanceof VmMigrateError ? STATUS_OF[error.code] : grpc.status.INTERNAL;
}

/**
 * An error in the shape a grpc-js handler passes to its callback or `destroy`: the status code,
 * the message cut to MESSAGE_CHARS_MAX, and the google.rpc.Status in the grpc-status-details-bin
 * trailer. Anything but an operating error is INTERNAL, reason INTERNAL_ERROR.
 */
export function toServiceError(error: unknown): grpc.StatusObject & Error {
  const message = bounded(error instanceof Error ? error.message : String(error), MESSAGE_CHARS_MAX);
  const code = statusOf(error);
  const metadata = new grpc.Metadata();
  metadata.set(STATUS_DETAILS_KEY, encodeStatus(code, message, detailsOf(error)));
  return Object.assign(new Error(message), { code, details: message, metadata });
}

export function statusName(code: number): string {
  return grpc.status[code] ?? `UNKNOWN(${code})`;
}

/**
 * Maps a gRPC status received from a peer back to the project's error classes, with the reason,
 * metadata and field violations the peer sent. Without a reason, the class's default stands, but
 * for a DEADLINE_EXCEEDED: that is the call's own deadline, a peer that did not answer in time.
 */
export function fromStatus(code: number, message: string, what: string, details: ErrorDetails = {}): VmMigrateError {
  // A peer's words, bounded: they go into job statistics, logs and watch events.
  const text = `${what}: ${bounded(message, MESSAGE_CHARS_MAX)}`;
  const options = { reason: details.reason, metadata: details.metadata };
  switch (code) {
    case grpc.status.INVALID_ARGUMENT:
      return new InvalidArgumentError(text, { ...options, fieldViolations: details.fieldViolations });
    case grpc.status.NOT_FOUND:
      return new NotFoundError(text, options);
    case grpc.status.ALREADY_EXISTS:
      return new AlreadyExistsError(text, options);
    case grpc.status.FAILED_PRECONDITION:
      return new InvalidStateError(text, options);
    case grpc.status.RESOURCE_EXHAUSTED:
      return details.reason === 'CAPACITY_REFUSED' ? new ReservationRefusedError(text, options) : new LimitExceededError(text, options);
    case grpc.status.DATA_LOSS:
      return new CorruptDataError(text, options);
    case grpc.status.CANCELLED:
    case grpc.status.ABORTED:
      return new AbortedError(text, options);
    case grpc.status.PERMISSION_DENIED:
    case grpc.status.UNAUTHENTICATED:
      return new PermissionDeniedError(text, options);
    case grpc.status.DEADLINE_EXCEEDED:
      return new DeadlineExceededError(text, { ...options, reason: details.reason ?? 'PEER_UNAVAILABLE' });
    case grpc.status.UNIMPLEMENTED:
      return new UnimplementedError(text, options);
    default:
      return new UnavailableError(`${text} (${statusName(code)})`, { ...options, reason: details.reason ?? (code === grpc.status.UNAVAILABLE ? 'PEER_UNAVAILABLE' : 'INTERNAL_ERROR') });
  }
}

/** Maps an error thrown by a grpc-js client call. */
export function fromServiceError(error: unknown, what: string): VmMigrateError {
  if (error instanceof VmMigrateError) return error;
  const e = error as Partial<grpc.ServiceError>;
  if (typeof e?.code === 'number') return fromStatus(e.code, e.details ?? e.message ?? '', what, detailsFromMetadata(e.metadata));
  return new UnavailableError(`${what}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
}

/** Deadline `ms` from now, for unary calls. */
export function deadline(ms: number): grpc.Deadline {
  return new Date(Date.now() + ms);
}

export function makeClient<S extends grpc.ServiceDefinition>(service: S, name: string, address: string, credentials: grpc.ChannelCredentials, options: grpc.ChannelOptions = {}): grpc.Client & Record<keyof S, (...args: never[]) => unknown> {
  const Ctor = grpc.makeGenericClientConstructor(service as grpc.ServiceDefinition, name);
  return new Ctor(address, credentials, { ...CHANNEL_OPTIONS, ...options }) as unknown as grpc.Client & Record<keyof S, (...args: never[]) => unknown>;
}

/** Promise form of a unary client call with a deadline, errors mapped. */
export function unary<Req, Res>(client: grpc.Client, m: grpc.MethodDefinition<Req, Res>, request: Req, timeoutMs: number, what: string): Promise<Res> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(m.path, m.requestSerialize, m.responseDeserialize, request, { deadline: deadline(timeoutMs) }, (error, response) => {
      if (error) reject(fromServiceError(error, what));
      else resolve(response as Res);
    });
  });
}
