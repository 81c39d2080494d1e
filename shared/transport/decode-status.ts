// Requests that fail before any handler sees them: a message that does not decode, or a frame that
// does not decompress. grpc-js answers both itself, INTERNAL ("Error deserializing request",
// "Failed to decompress message"), as if the server were at fault. Here they get the status of
// what is wrong with the request: INVALID_ARGUMENT (MALFORMED_MESSAGE) with what the decoder
// said, and DATA_LOSS (CORRUPT_DATA), each with its details in the trailer like every other error.
//
// grpc-js sends these statuses from the bottom of its interceptor chain (the base call, in
// server-interceptors.js: decompressAndMaybePush), not through the interceptors, so no
// interceptor can see them go by. The first interceptor of the chain is handed that base call, and
// this one puts a filter in front of its sendStatus. What the filter recognizes is grpc-js's own
// wording and state, checked by test/hostile-peer.test.ts against the grpc-js in use: should a
// later grpc-js word them differently, they pass through unchanged (still INTERNAL), never worse.

import * as grpc from '@grpc/grpc-js';
import { CorruptDataError, InvalidArgumentError, type VmMigrateError } from '../errors.js';
import { detailsOf, encodeStatus, STATUS_DETAILS_KEY } from './status.js';

/** A status as grpc-js's server calls send it (its PartialStatusObject, which it does not export). */
type Status = { code: grpc.status; details?: string; metadata?: grpc.Metadata | null };

/** What grpc-js's base call says when the handler's deserializer threw, and when a frame would not decompress. */
const DESERIALIZE_DETAILS = 'Error deserializing request';
const DECOMPRESS_DETAILS = 'Failed to decompress message';

/**
 * The last request that failed to decode, set by the deserializer just before it throws. grpc-js
 * sends its status synchronously in the same turn (the deserializer's catch), so the filter that
 * runs next finds the error here and takes it.
 */
let undecoded: InvalidArgumentError | null = null;

/**
 * A server-side request deserializer: `decode`, whose failure becomes InvalidArgumentError
 * (MALFORMED_MESSAGE) naming `type` and what the decoder said.
 */
export function requestDecoder<T>(type: string, decode: (bytes: Uint8Array) => T): (bytes: Buffer) => T {
  return (bytes) => {
    try {
      return decode(bytes);
    } catch (error) {
      undecoded = new InvalidArgumentError(`a ${type} of ${bytes.length} bytes does not decode: ${error instanceof Error ? error.message : String(error)}`, {
        reason: 'MALFORMED_MESSAGE',
        metadata: { type, bytes: bytes.length },
      });
      throw undecoded;
    }
  };
}

/** The status of `error`, with its details in the trailer (as grpc.ts toServiceError makes it). */
function statusOf(code: grpc.status, error: VmMigrateError): Status {
  const metadata = new grpc.Metadata();
  metadata.set(STATUS_DETAILS_KEY, encodeStatus(code, error.message, detailsOf(error)));
  return { code, details: error.message, metadata };
}

type StatusSender = { sendStatus(status: Status): void; incomingEncoding?: string };

/** The status to send instead of `status`, if it is one of grpc-js's own about a request that did not decode. */
function precise(status: Status, encoding: string): Status {
  if (status.code !== grpc.status.INTERNAL) return status;
  if (status.details?.startsWith(DESERIALIZE_DETAILS)) {
    const error = undecoded ?? new InvalidArgumentError('a request message does not decode', { reason: 'MALFORMED_MESSAGE' });
    undecoded = null;
    return statusOf(grpc.status.INVALID_ARGUMENT, error);
  }
  if (status.details === DECOMPRESS_DETAILS) {
    return statusOf(grpc.status.DATA_LOSS, new CorruptDataError(`a request message compressed with ${encoding} does not decompress`, { reason: 'CORRUPT_DATA', metadata: { encoding } }));
  }
  return status;
}

/**
 * The interceptor to put first on a server (createServer does): requests that do not decode or
 * decompress end with INVALID_ARGUMENT or DATA_LOSS instead of INTERNAL.
 */
export const decodeStatusInterceptor: grpc.ServerInterceptor = (_method, call) => {
  const base = call as unknown as StatusSender;
  if (typeof base.sendStatus === 'function') {
    const send = base.sendStatus.bind(base);
    base.sendStatus = (status) => {
      const sent = precise(status, base.incomingEncoding ?? 'an unknown encoding');
      if (sent !== status) undecodedCalls.add(base);
      send(sent);
    };
  }
  return new grpc.ServerInterceptingCall(call);
};

/** Calls this server ended itself because a request did not decode or decompress. */
const undecodedCalls = new WeakSet<object>();

/**
 * Whether the server ended `stream` (a handler's call) itself, a request of it not decoding: the
 * handler then sees it cancelled, as if the peer had gone, and must not wait for the peer to come
 * back. Walks grpc-js's interceptor chain (each ServerInterceptingCall's nextCall) to the base call.
 */
export function endedByUndecodedRequest(stream: unknown): boolean {
  let call = (stream as { call?: unknown }).call;
  for (let depth = 0; depth < 16 && call !== null && typeof call === 'object'; depth++) {
    if (undecodedCalls.has(call)) return true;
    call = (call as { nextCall?: unknown }).nextCall;
  }
  return false;
}
