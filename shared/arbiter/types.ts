// The arbiter's interface: what a protected guest's primary and its standby ask of it. The
// semantics, and the timing argument behind fencing, are in index.ts.

/** Who holds a guest's primary role, as the arbiter records it. */
export interface PrimaryRecord {
  /** The term's number: 1 for the first claim, one more at every claim and every go-live. */
  epoch: number;
  /** The holding agent's identity (ArbiterOptions.holderId). */
  holder: string;
  /** The holding agent's site, a label for people (ArbiterOptions.site). */
  site: string;
  /** When the epoch was granted, by the holder's clock (milliseconds since the Unix epoch). */
  atUnixMs: number;
}

/**
 * Why a term ended without its holder letting it go:
 * - superseded: the record moved to a newer epoch (another agent went live) or was removed;
 * - lease-expired: the arbiter said the term's lease is gone (expired, or revoked by a forced
 *   go-live elsewhere);
 * - lease-unknown: the holder could not renew its lease for so long that it can no longer know
 *   the lease alive (its local deadline passed; the arbiter may be unreachable).
 */
export type FenceReason = 'superseded' | 'lease-expired' | 'lease-unknown';

/** Told to a term's holder once, when its term is fenced: stop running this copy of the guest. */
export interface FenceEvent {
  guestId: string;
  epoch: number;
  reason: FenceReason;
  /** A sentence for the log: what was seen, with the numbers. */
  message: string;
  /** The record that superseded this term, when the arbiter showed it. */
  newer?: PrimaryRecord;
}

/**
 * A term's life: held (its lease is kept alive) until fenced (involuntary, final) or released
 * (its holder let it go, or retired the guest's records). Neither ending ever goes back to held.
 */
export type TermState = 'held' | 'fenced' | 'released';

/** One agent's primary role over one guest, for one epoch. */
export interface PrimaryTerm {
  readonly guestId: string;
  readonly epoch: number;
  readonly record: Readonly<PrimaryRecord>;
  readonly state: TermState;
  /**
   * Synchronous and local: held, and the lease known alive at this instant (the local deadline,
   * measured from the last successful renewal, has not passed). Check it right before anything a
   * client could see (releasing an output, resuming the guest): after an event-loop pause longer
   * than the margin it is already false, before the fence callback had a chance to run.
   */
  isHeld(): boolean;
  /**
   * Fences the term now if its local deadline has passed (its timer may not have run yet: after a
   * pause of the process, I/O that waited is served before timers). Call it before answering
   * anything about the guest's state.
   */
  checkDeadline(): void;
  /** Resolves once, when the term is fenced; stays pending if the term is released instead. */
  readonly fenced: Promise<FenceEvent>;
  /**
   * Calls `listener` synchronously when the term is fenced (at once if it already is). Returns a
   * function that removes it.
   */
  onFenced(listener: (event: FenceEvent) => void): () => void;
  /**
   * Lets the term go: stops renewing and revokes the lease, so that a standby may go live at once
   * with this epoch. The record keeps naming this holder (a later claim by it is allowed). Call it
   * only once this copy is stopped. Rejects UNAVAILABLE if the revoke did not reach the arbiter
   * (the lease then expires by its TTL).
   */
  release(): Promise<void>;
  /**
   * Removes the guest's records (the guest is no longer protected), then releases. ABORTED
   * (ARBITER_EPOCH_CONFLICT) if the record moved on since this term began.
   */
  retire(): Promise<void>;
}

/** What the arbiter holds about a guest, as of one linearizable read. */
export interface GuestView {
  /** The last epoch granted, or null when the guest has no record (never claimed, or retired). */
  record: PrimaryRecord | null;
  /** The record's holder has a live lease: no one may go live without force. */
  primaryAlive: boolean;
  /** The arbiter's revision at the read. */
  revision: number;
}

export interface GoLiveOptions {
  /**
   * Take over even though the current primary's lease is alive: the compare-and-swap, then the
   * old lease revoked, then a wait of the old lease's TTL (by when the old primary, reachable or
   * not, has fenced itself) before the term is returned. For an operator's forced failover.
   */
  force?: boolean;
  /** Gives up the wait of a forced go-live (the term won is released). */
  signal?: AbortSignal;
}

export interface WaitForVacancyOptions {
  signal?: AbortSignal;
  /** Bound on the wait; DEADLINE_EXCEEDED past it. Default WAIT_MS_DEFAULT. */
  timeoutMs?: number;
}

/**
 * A per-guest lease and epoch arbiter with fencing. One instance per agent, named by its holder
 * identity; EtcdArbiter and MemoryArbiter implement it with the same semantics.
 */
export interface Arbiter {
  /** This agent's identity in the records. */
  readonly holderId: string;
  /** The TTL this arbiter asks for its leases, milliseconds (the arbiter may grant more). */
  readonly leaseTtlMs: number;
  /**
   * Becomes the guest's primary: allowed when the guest has no record, or when its record names
   * this holder; writes epoch + 1 under a new lease kept alive until the term ends. A term this
   * arbiter already holds for the guest is returned as it is. FAILED_PRECONDITION
   * (ARBITER_PRIMARY_HELD) when another agent holds the record; ABORTED (ARBITER_EPOCH_CONFLICT)
   * when the record changed during the claim.
   */
  claim(guestId: string): Promise<PrimaryTerm>;
  /**
   * Compare-and-swap: if the guest's epoch is still `expectedEpoch` (0: no record) and no other
   * agent's lease is alive for it, writes epoch + 1 for this holder under a new lease. Of two
   * agents going live from the same epoch exactly one wins; the other gets ABORTED
   * (ARBITER_EPOCH_CONFLICT). A live primary elsewhere: FAILED_PRECONDITION (ARBITER_PRIMARY_HELD)
   * unless `force`.
   */
  goLive(guestId: string, expectedEpoch: number, options?: GoLiveOptions): Promise<PrimaryTerm>;
  /**
   * From the arbiter (a linearizable read) and this arbiter's own term: true only if the record
   * is at `epoch` for this holder, its lease is alive, and the local term is held. For a check
   * right before a resume. Rejects UNAVAILABLE when the arbiter cannot answer (do not resume).
   */
  stillPrimary(guestId: string, epoch: number): Promise<boolean>;
  /** The guest's record and whether its primary's lease is alive (a linearizable read). */
  read(guestId: string): Promise<GuestView>;
  /**
   * Resolves as soon as the guest has no live primary lease (at once if it has none): the view
   * then holds the epoch to pass to goLive. For a standby's automatic failover. Keeps trying
   * while the arbiter cannot be reached; DEADLINE_EXCEEDED after timeoutMs, ABORTED (CANCELLED)
   * when the signal aborts or the arbiter closes.
   */
  waitForVacancy(guestId: string, options?: WaitForVacancyOptions): Promise<GuestView>;
  /** Releases every term still held, ends every wait, closes the connection. Idempotent. */
  close(): Promise<void>;
}

/** Longest holder identity or site label. */
export const HOLDER_CHARS_MAX = 256;
/** Longest key prefix. */
export const KEY_PREFIX_CHARS_MAX = 256;
/** Terms one arbiter holds at once (one per protected guest it is primary for). */
export const TERMS_MAX = 10_000;
/** Waits for vacancy one arbiter runs at once. */
export const WAITS_MAX = 10_000;
/** Default bound on a wait for vacancy: one hour. */
export const WAIT_MS_DEFAULT = 3_600_000;
/** Longest wait for vacancy: one day. */
export const WAIT_MS_MAX = 86_400_000;
/** Shortest and longest lease TTL. */
export const LEASE_TTL_MS_MIN = 100;
export const LEASE_TTL_MS_MAX = 600_000;
