// Room set aside for an incoming guest (phase 2), from Reserve until a Transfer opens it, and on
// until its replica is committed or discarded. A reservation that no Transfer opens in time is
// released, so that a source that went away does not hold the target's memory.

import type { Logger } from 'pino';
import type { Clock, Timer } from '../shared/clock.js';
import type { TargetReplica } from '../shared/driver/types.js';
import { echo, InvalidStateError, NotFoundError } from '../shared/errors.js';
import type { AgentMetrics } from '../shared/metrics.js';
import type { MigrationMethod } from '../shared/stats.js';
import type { ProtectionTerms } from '../shared/rpo.js';

export interface Reservation {
  readonly id: string;
  /** The source's job id (logged as jobId on both agents). */
  readonly migrationId: string;
  readonly replica: TargetReplica;
  /** Who reserved it (transport/tls.ts peerIdentity), and how much memory it holds: per-peer quotas. */
  readonly peer: string;
  readonly memoryBytes: number;
  readonly downtimeLimitMs: number;
  readonly unitMs: number;
  /** The source's maximum duration, and when the reservation was made (clock time): the switchover's deadline. */
  readonly maxDurationMs: number;
  readonly reservedAtMs: number;
  /** A Transfer took it (see ReservationRegistry.open). */
  readonly opened: boolean;
  /** Known once a transfer opened the reservation. */
  readonly method: MigrationMethod | null;
  /** Set for a protection: the replica is a standby (standby.ts). */
  readonly protection?: ProtectionTerms;
}

/** What a reservation is made of; the registry adds its id and state. */
export type ReservationRequest = Pick<Reservation, 'migrationId' | 'replica' | 'peer' | 'memoryBytes' | 'downtimeLimitMs' | 'unitMs' | 'maxDurationMs' | 'protection'>;

interface Entry extends Reservation {
  opened: boolean;
  method: MigrationMethod | null;
  /** Releases the reservation unless a Transfer opens it first. */
  timer: Timer;
}

export interface ReservationRegistryOptions {
  /** A reservation not opened by a Transfer within this time is released. */
  reservationTimeoutMs: number;
}

export class ReservationRegistry {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly options: ReservationRegistryOptions,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly metrics?: Pick<AgentMetrics, 'incomingEnded'>,
    /** Told of every release (a timeout included), with its reason. */
    private readonly onReleased: (reservation: Reservation, reason: string) => void = () => {},
  ) {}

  /** Reservations not yet opened by a Transfer. */
  get waiting(): number {
    let count = 0;
    for (const r of this.entries.values()) if (!r.opened) count++;
    return count;
  }

  /** What `peer` holds: its reservations, opened or not, and their memory. */
  heldBy(peer: string): { count: number; memoryBytes: number } {
    let count = 0;
    let memoryBytes = 0;
    for (const r of this.entries.values()) {
      if (r.peer !== peer) continue;
      count++;
      memoryBytes += r.memoryBytes;
    }
    return { count, memoryBytes };
  }

  get(id: string): Reservation | undefined {
    return this.entries.get(id);
  }

  /** The reservations made for migration `migrationId` (one, normally). */
  byMigration(migrationId: string): Reservation[] {
    return [...this.entries.values()].filter((r) => r.migrationId === migrationId);
  }

  /** Registers the replica `request.replica` under `id`, released if not opened in time. */
  reserve(id: string, request: ReservationRequest): Reservation {
    const timeoutMs = this.options.reservationTimeoutMs;
    const entry: Entry = {
      ...request,
      reservedAtMs: this.clock.now(),
      id,
      opened: false,
      method: null,
      timer: this.clock.timeout(timeoutMs, () => {
        if (!entry.opened) this.release(id, `not opened within ${timeoutMs} ms`);
      }),
    };
    this.entries.set(id, entry);
    return entry;
  }

  /** Takes a reservation for a Transfer stream of `method`. */
  open(id: string, method: MigrationMethod): Reservation {
    const r = this.entries.get(id);
    if (r === undefined) throw new NotFoundError(`no reservation '${echo(id)}' on this agent (expired or released?)`, { reason: 'RESERVATION_NOT_FOUND', metadata: { reservationId: id } });
    if (r.opened) throw new InvalidStateError(`reservation '${id}' is already in use by another transfer`, { reason: 'PROTOCOL_VIOLATION', metadata: { reservationId: id } });
    r.opened = true;
    r.method = method;
    r.timer.cancel();
    return r;
  }

  /**
   * Releases a reservation and discards its replica (unless it was activated); with `keepReplica`
   * the replica is left whole, for a new reservation that adopts it as its base (base-image.ts).
   */
  release(id: string, reason: string, keepReplica = false): void {
    const r = this.entries.get(id);
    if (r === undefined) return;
    r.timer.cancel();
    this.entries.delete(id);
    if (!keepReplica) r.replica.discard();
    this.metrics?.incomingEnded(r.method ?? 'unknown', 'discarded');
    this.log.info({ jobId: r.migrationId, guestId: r.replica.id, reservationId: id, reason, keepReplica }, 'released reservation');
    this.onReleased(r, reason);
  }

  /** Forgets a reservation whose replica was activated (the guest now belongs to the driver). */
  forget(id: string): void {
    this.entries.get(id)?.timer.cancel();
    this.entries.delete(id);
  }

  releaseAll(reason: string): void {
    for (const id of [...this.entries.keys()]) this.release(id, reason);
  }
}
