// Calls from the CLI to an agent, and what their failures become for the person at the terminal:
// one line on stderr (what failed, the gRPC status name, the agent's message, a hint of what to
// do) and an exit code a script can act on.
//
// grpc.ts's `unary` maps statuses to the project's error classes, which have no UNAUTHENTICATED,
// UNIMPLEMENTED or UNKNOWN (they fold into PermissionDeniedError or UnavailableError); the stderr
// line names the status as received and `status` treats UNIMPLEMENTED as "not offered", so the
// calls here keep the status as received.

import { VmMigrateError } from '../shared/errors.js';
import { deadline, grpc, statusName } from '../shared/transport/grpc.js';

/** Exit codes of `vmmigrate` (documented in its --help and the README). */
export const EXIT = {
  ok: 0,
  /** The operation failed: a migration failed or was cancelled, an unknown job or guest, a refusal. */
  failed: 1,
  /** Usage or configuration: bad flags or values, missing TLS material, plaintext off loopback. */
  usage: 2,
  /** The agent could not be reached or did not answer in time. */
  unreachable: 3,
  /** The agent's security refused this client. */
  refused: 4,
} as const;

/** A call the agent (or the channel to it) failed with a gRPC status. */
export class CallError extends Error {
  constructor(
    /** What was being done, e.g. "listing guests on 127.0.0.1:7400". */
    readonly what: string,
    readonly code: grpc.status,
    readonly details: string,
  ) {
    super(`${what}: ${statusName(code)}: ${details}`);
    this.name = 'CallError';
  }
}

function callError(error: grpc.ServiceError | Error, what: string): CallError {
  const e = error as Partial<grpc.ServiceError>;
  if (typeof e.code === 'number') return new CallError(what, e.code, e.details || e.message || '');
  return new CallError(what, grpc.status.UNKNOWN, error.message);
}

/** A unary call with a deadline of `timeoutMs`; rejects with a CallError keeping the status. */
export function call<Req, Res>(client: grpc.Client, method: Pick<grpc.MethodDefinition<Req, Res>, 'path' | 'requestSerialize' | 'responseDeserialize'>, request: Req, timeoutMs: number, what: string): Promise<Res> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(method.path, method.requestSerialize, method.responseDeserialize, request, { deadline: deadline(timeoutMs) }, (error, response) => {
      if (error) reject(callError(error, what));
      else resolve(response as Res);
    });
  });
}

/**
 * A server stream as an async iterable (no deadline: it lasts as long as what it watches);
 * stream errors are rethrown as CallError. `onCall` receives the call, to cancel it.
 */
export async function* stream<Req, Res>(
  client: grpc.Client,
  method: grpc.MethodDefinition<Req, Res>,
  request: Req,
  what: string,
  onCall: (call: grpc.ClientReadableStream<Res>) => void = () => {},
): AsyncGenerator<Res> {
  const c = client.makeServerStreamRequest(method.path, method.requestSerialize, method.responseDeserialize, request);
  onCall(c);
  try {
    for await (const message of c as AsyncIterable<Res>) yield message;
  } catch (error) {
    throw callError(error as Error, what);
  }
}

/** The gRPC status name of an error: a CallError's status, an operating error's code, or null. */
export function statusNameOf(error: unknown): string | null {
  if (error instanceof CallError) return statusName(error.code);
  if (error instanceof VmMigrateError) return error.code;
  return null;
}

/** The exit code for a failure with gRPC status `name` (null: not a gRPC status). */
export function exitCodeForStatus(name: string | null): number {
  switch (name) {
    case 'UNAVAILABLE':
    case 'DEADLINE_EXCEEDED':
      return EXIT.unreachable;
    case 'UNAUTHENTICATED':
    case 'PERMISSION_DENIED':
      return EXIT.refused;
    // The request itself is wrong (a value out of range, an unknown profile): fix the command.
    case 'INVALID_ARGUMENT':
      return EXIT.usage;
    default:
      return EXIT.failed;
  }
}

/** What to do about a failure with status `name`, for the line on stderr. */
export function hintFor(name: string | null, agent: string): string {
  switch (name) {
    case 'UNAVAILABLE':
      return `is the agent running at ${agent}? check --agent, and --tls-ca/--tls-cert/--tls-key or --plaintext`;
    case 'DEADLINE_EXCEEDED':
      return `the agent at ${agent} did not answer in time; check --agent, or raise --timeout-ms if it is busy`;
    case 'UNAUTHENTICATED':
    case 'PERMISSION_DENIED':
      return `the agent refused this client; check that --tls-cert and --tls-key are a client certificate the agent trusts`;
    case 'NOT_FOUND':
      return `'vmmigrate jobs' and 'vmmigrate guests' list what this agent has`;
    case 'INVALID_ARGUMENT':
      return `see 'vmmigrate help <command>'`;
    case 'UNIMPLEMENTED':
      return `the agent at ${agent} does not offer this call; is it an older version?`;
    default:
      return '';
  }
}

/**
 * The one line on stderr for `error`, without the trailing newline. Only a call's failure gets a
 * hint: the CLI's own errors (usage, configuration) already say what to pass.
 */
export function errorLine(error: unknown, agent: string): string {
  // UNIMPLEMENTED from the agent itself (a method its driver cannot carry, a call its driver does
  // not offer) says why in its details; only gRPC's own answer means the call is not there at all.
  const unimplementedByAgent = error instanceof CallError && error.code === grpc.status.UNIMPLEMENTED && !/does not implement the method/i.test(error.details);
  const hint = error instanceof CallError && !unimplementedByAgent ? hintFor(statusNameOf(error), agent) : '';
  const text = error instanceof CallError ? `${error.what}: ${statusName(error.code)}: ${oneLine(error.details)}` : oneLine(error instanceof Error ? error.message : String(error));
  return `vmmigrate: ${text}${hint ? ` (${hint})` : ''}`;
}

function oneLine(text: string): string {
  // grpc-js ends some UNAVAILABLE details with an empty "Resolution note:".
  return text
    .replace(/\s*\n\s*/g, ' ')
    .replace(/\s*Resolution note:\s*$/, '')
    .trim();
}
