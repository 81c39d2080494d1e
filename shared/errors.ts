// Operating errors: things that go wrong in a correct program (a corrupt frame, a refused
// reservation, an unknown guest). Each is a named class carrying a `code` that the transport maps
// to one precise gRPC status, and a message with the numbers that broke the rule, so a person
// can act on it. Programmer errors are not here: they are assertions (see assert.ts).

/** Which gRPC status an operating error becomes on the wire. */
export type ErrorCode =
  | 'INVALID_ARGUMENT' // the request itself is malformed or out of range
  | 'NOT_FOUND' // an unknown guest, job or reservation
  | 'FAILED_PRECONDITION' // valid request, wrong moment: wrong guest state, unit out of order
  | 'RESOURCE_EXHAUSTED' // a limit: no room for a reservation, an oversized message
  | 'DATA_LOSS' // corrupt or truncated data, or a replica that diverged
  | 'ABORTED' // the operation was cancelled or aborted part-way
  | 'UNAVAILABLE' // a peer that cannot be reached
  | 'ALREADY_EXISTS' // the guest, job or reservation is already there
  | 'PERMISSION_DENIED' // a peer not allowed to do this
  | 'DEADLINE_EXCEEDED' // a bound on duration ran out
  | 'UNIMPLEMENTED'; // this agent's driver cannot do what was asked (a missing capability)

export abstract class VmMigrateError extends Error {
  abstract readonly code: ErrorCode;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Bytes that fail their checksum, do not decode, or end early. Nothing was applied. */
export class CorruptDataError extends VmMigrateError {
  readonly code = 'DATA_LOSS' as const;
}

/** A log unit that is a duplicate of one already applied, or skips ahead. Nothing was applied. */
export class UnitOrderError extends VmMigrateError {
  readonly code = 'FAILED_PRECONDITION' as const;
  constructor(
    message: string,
    readonly kind: 'duplicate' | 'gap' | 'position',
    readonly expectedSequence: number,
    readonly receivedSequence: number,
  ) {
    super(message);
  }
}

/** A replica whose execution no longer matches the recorded log: it must be discarded. */
export class ReplayDivergenceError extends VmMigrateError {
  readonly code = 'DATA_LOSS' as const;
}

/** The operation is valid, but not in the guest's (or migration's) current state. */
export class InvalidStateError extends VmMigrateError {
  readonly code = 'FAILED_PRECONDITION' as const;
}

/** A parameter out of its documented range, named in the message. */
export class InvalidArgumentError extends VmMigrateError {
  readonly code = 'INVALID_ARGUMENT' as const;
}

/** The target cannot host the guest; the reason says what is missing. */
export class ReservationRefusedError extends VmMigrateError {
  readonly code = 'RESOURCE_EXHAUSTED' as const;
}

/** A message, queue or buffer would exceed its configured limit. */
export class LimitExceededError extends VmMigrateError {
  readonly code = 'RESOURCE_EXHAUSTED' as const;
}

/** An unknown guest, job or reservation id. */
export class NotFoundError extends VmMigrateError {
  readonly code = 'NOT_FOUND' as const;
}

/** The operation was cancelled before it finished; what it had started was undone. */
export class AbortedError extends VmMigrateError {
  readonly code = 'ABORTED' as const;
}

/** The guest (or reservation) already exists where it was to be created. */
export class AlreadyExistsError extends VmMigrateError {
  readonly code = 'ALREADY_EXISTS' as const;
}

/** A peer that cannot be reached, or a connection that broke. */
export class UnavailableError extends VmMigrateError {
  readonly code = 'UNAVAILABLE' as const;
}

/** A caller whose certificate names no identity this agent allows for what it called. */
export class PermissionDeniedError extends VmMigrateError {
  readonly code = 'PERMISSION_DENIED' as const;
}

/** A migration (or call) that ran past its maximum duration. */
export class DeadlineExceededError extends VmMigrateError {
  readonly code = 'DEADLINE_EXCEEDED' as const;
}

/** What this agent's driver cannot do at all: a method whose capability it lacks, StartGuest on a driver without guest creation. */
export class UnimplementedError extends VmMigrateError {
  readonly code = 'UNIMPLEMENTED' as const;
}
