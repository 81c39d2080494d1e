// Operating errors: things that go wrong in a correct program (a corrupt frame, a refused
// reservation, an unknown guest). Each is a named class carrying a `code` that the transport maps
// to one precise gRPC status, a `reason` for clients to branch on (never on the text), the values
// involved as `metadata`, and a message with the numbers that broke the rule, so a person can act
// on it. Programmer errors are not here: they are assertions (see assert.ts).

import { assert } from './assert.js';
import type { vmmigrate } from './proto/generated.js';

/** Which gRPC status an operating error becomes on the wire. */
export type ErrorCode =
  | 'INVALID_ARGUMENT' // the request itself is malformed or out of range
  | 'NOT_FOUND' // an unknown guest, job or reservation
  | 'FAILED_PRECONDITION' // valid request, wrong moment: wrong guest state, unit out of order
  | 'RESOURCE_EXHAUSTED' // a limit: no room for a reservation, an oversized message
  | 'DATA_LOSS' // corrupt or truncated data, or a replica that diverged
  | 'ABORTED' // the operation was cancelled or aborted part-way
  | 'CANCELLED' // the peer ended a stream before it was whole
  | 'UNAVAILABLE' // a peer that cannot be reached
  | 'ALREADY_EXISTS' // the guest, job or reservation is already there
  | 'PERMISSION_DENIED' // a peer not allowed to do this
  | 'DEADLINE_EXCEEDED' // a bound on duration ran out
  | 'UNIMPLEMENTED'; // this agent's driver cannot do what was asked (a missing capability)

/**
 * Why an operation failed: a name of vmmigrate.v2.ErrorReason (proto/vmmigrate/v2/errors.proto,
 * where each is documented), sent as google.rpc.ErrorInfo.reason.
 */
export type ErrorReason = Exclude<keyof typeof vmmigrate.v2.ErrorReason, 'ERROR_REASON_UNSPECIFIED'>;

/** A bad request field: its name as in the .proto (snake_case, e.g. 'target_address'), and what is wrong with it. */
export interface FieldViolation {
  field: string;
  description: string;
}

export interface VmMigrateErrorOptions {
  cause?: unknown;
  /** Default: the class's `defaultReason`. */
  reason?: ErrorReason;
  /** The values involved (guestId, jobId, limit, capability, ...); each cut to ECHO_CHARS_MAX. */
  metadata?: Record<string, string | number>;
}

/** Longest value (an id, an address, a name from a request) echoed in a message or in metadata. */
export const ECHO_CHARS_MAX = 256;
/** Longest error message sent to a client. */
export const MESSAGE_CHARS_MAX = 1024;
/** Most metadata entries, and most field violations, one error carries. */
export const DETAILS_ENTRIES_MAX = 16;

/**
 * `text` cut to at most `charsMax` characters; a cut one ends saying how long it was. Keeps
 * errors small: C-core clients refuse trailers over 8 KB, and see RESOURCE_EXHAUSTED instead.
 */
export function bounded(text: string, charsMax: number): string {
  if (text.length <= charsMax) return text;
  const suffix = `... (${text.length} characters)`;
  let end = Math.max(0, charsMax - suffix.length);
  // Never split a surrogate pair.
  const last = text.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--;
  return text.slice(0, end) + suffix;
}

/** A value from a request or a peer, as echoed in a message or metadata: at most ECHO_CHARS_MAX characters. */
export function echo(value: string | number): string {
  return bounded(String(value), ECHO_CHARS_MAX);
}

export abstract class VmMigrateError extends Error {
  abstract readonly code: ErrorCode;
  /** The reason of an error whose thrower names none. */
  static readonly defaultReason: ErrorReason = 'INTERNAL_ERROR';
  readonly reason: ErrorReason;
  readonly metadata: Readonly<Record<string, string>>;

  constructor(message: string, options: VmMigrateErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.reason = options.reason ?? (new.target as unknown as typeof VmMigrateError).defaultReason;
    const entries = Object.entries(options.metadata ?? {});
    assert(entries.length <= DETAILS_ENTRIES_MAX, () => `${entries.length} metadata entries on one error, the limit is ${DETAILS_ENTRIES_MAX}`);
    this.metadata = Object.freeze(Object.fromEntries(entries.map(([key, value]) => [key, echo(value)])));
  }
}

/** Bytes that fail their checksum, do not decode, or end early. Nothing was applied. */
export class CorruptDataError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'CORRUPT_DATA';
  readonly code = 'DATA_LOSS' as const;
}

/** A log unit that is a duplicate of one already applied, or skips ahead. Nothing was applied. */
export class UnitOrderError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'PROTOCOL_VIOLATION';
  readonly code = 'FAILED_PRECONDITION' as const;
  constructor(
    message: string,
    readonly kind: 'duplicate' | 'gap' | 'position',
    readonly expectedSequence: number,
    readonly receivedSequence: number,
    options?: VmMigrateErrorOptions,
  ) {
    super(message, options);
  }
}

/**
 * A replica whose execution no longer matches the recorded log: it must be discarded. Its state
 * differs from the source's, as a digest mismatch at commitment would show.
 */
export class ReplayDivergenceError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'DIGEST_MISMATCH';
  readonly code = 'DATA_LOSS' as const;
}

/** The operation is valid, but not in the guest's (or migration's) current state. */
export class InvalidStateError extends VmMigrateError {
  /** The most common case: a message out of order on the transfer stream. */
  static override readonly defaultReason: ErrorReason = 'PROTOCOL_VIOLATION';
  readonly code = 'FAILED_PRECONDITION' as const;
}

export interface InvalidArgumentOptions extends VmMigrateErrorOptions {
  /** The request fields at fault (google.rpc.BadRequest on the wire). */
  fieldViolations?: readonly FieldViolation[];
}

/** A parameter out of its documented range, named in the message. */
export class InvalidArgumentError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'INVALID_FIELD';
  readonly code = 'INVALID_ARGUMENT' as const;
  readonly fieldViolations: readonly FieldViolation[];

  constructor(message: string, options: InvalidArgumentOptions = {}) {
    super(message, options);
    const violations = options.fieldViolations ?? [];
    assert(violations.length <= DETAILS_ENTRIES_MAX, () => `${violations.length} field violations on one error, the limit is ${DETAILS_ENTRIES_MAX}`);
    this.fieldViolations = Object.freeze(violations.map((v) => ({ field: v.field, description: bounded(v.description, MESSAGE_CHARS_MAX) })));
  }
}

/**
 * The request field `field` (as named in the .proto) is missing, malformed or out of range:
 * INVALID_FIELD, with `description` as both the message and the field violation's description.
 */
export function invalidField(field: string, description: string, metadata?: Record<string, string | number>): InvalidArgumentError {
  return new InvalidArgumentError(description, { reason: 'INVALID_FIELD', metadata, fieldViolations: [{ field, description }] });
}

/** The target cannot host the guest; the reason says what is missing. */
export class ReservationRefusedError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'CAPACITY_REFUSED';
  readonly code = 'RESOURCE_EXHAUSTED' as const;
}

/** A message, queue or buffer would exceed its configured limit. */
export class LimitExceededError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'LIMIT_EXCEEDED';
  readonly code = 'RESOURCE_EXHAUSTED' as const;
}

/** An unknown guest, job or reservation id; the reason says which (the default: a guest). */
export class NotFoundError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'GUEST_NOT_FOUND';
  readonly code = 'NOT_FOUND' as const;
}

/** A protected guest was failed over to its standby: the primary's copy must stop and never run again. */
export class FailedOverError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'FAILED_OVER';
  readonly code = 'FAILED_PRECONDITION' as const;
}

/** The operation was cancelled before it finished; what it had started was undone. */
export class AbortedError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'CANCELLED';
  readonly code = 'ABORTED' as const;
}

/** The peer ended a stream (its half-close) before what it carries was whole. */
export class StreamEndedError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'PEER_ENDED_STREAM';
  readonly code = 'CANCELLED' as const;
}

/** The guest (or reservation) already exists where it was to be created. */
export class AlreadyExistsError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'GUEST_EXISTS';
  readonly code = 'ALREADY_EXISTS' as const;
}

/** A peer that cannot be reached, or a connection that broke. */
export class UnavailableError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'PEER_UNAVAILABLE';
  readonly code = 'UNAVAILABLE' as const;
}

/** A caller whose certificate names no identity this agent allows for what it called. */
export class PermissionDeniedError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'SECURITY_REFUSED';
  readonly code = 'PERMISSION_DENIED' as const;
}

/** A migration (or call) that ran past its maximum duration; the reason says which bound. */
export class DeadlineExceededError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'MAX_DURATION_EXCEEDED';
  readonly code = 'DEADLINE_EXCEEDED' as const;
}

/**
 * What this agent's driver cannot do at all: StartGuest on a driver without guest creation
 * (NOT_SUPPORTED, the default), a method whose capability it lacks (CAPABILITY_MISSING).
 */
export class UnimplementedError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'NOT_SUPPORTED';
  readonly code = 'UNIMPLEMENTED' as const;
}
