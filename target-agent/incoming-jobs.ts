// Incoming migrations as the Control API shows them on the target, by the source's job id: from
// the reservation to the end, then kept (the last JOBS_KEPT) so that GetJob still answers once it
// is over. Each keeps the phases it passed, as the session reports them.

import type { Clock } from '../shared/clock.js';
import type { IncomingJob, StandbyView } from '../shared/incoming-job.js';

export type { IncomingJob } from '../shared/incoming-job.js';
import type { MigrationMethod, MigrationPhase } from '../shared/stats.js';
import type { ProgressCounters } from './feedback.js';
import type { TransferPhase } from './receivers/context.js';
import type { Reservation } from './reservation.js';

/** Ended incoming jobs kept for GetJob and ListJobs. */
export const JOBS_KEPT = 1000;

/** What a session tells of itself (TargetSession.view). */
export interface TransferView {
  readonly phase: TransferPhase;
  readonly method: MigrationMethod | null;
  readonly counters: ProgressCounters;
  /** The source cancelled the migration. */
  readonly cancelled?: boolean;
  /** A protection's standby. */
  readonly standby?: StandbyView;
}

interface Entry {
  readonly reservation: Reservation;
  readonly reservedMemoryBytes: number;
  memoryReadyMs: number;
  readonly startedAtMs: number;
  endedAtMs: number;
  error: string;
  view: (() => TransferView) | null;
  last: TransferView;
  readonly phasesPassed: MigrationPhase[];
}

/** The phase of the migration a transfer phase stands for. */
export function migrationPhaseOf(phase: TransferPhase, method: MigrationMethod | null): MigrationPhase {
  switch (phase) {
    case 'open':
      return 'reservation';
    case 'restoring':
      return method === 'postcopy' ? 'stop-and-copy' : 'checkpoint';
    case 'replaying':
      // Pre-copy's replica is complete once restored: the source is in its stop-and-copy.
      return method === 'precopy' || method === 'qemu-native' ? 'stop-and-copy' : 'log-transfer';
    case 'postcopy':
      return 'page-push';
    case 'committed':
      return 'commitment';
    case 'activated':
      return 'activation';
    case 'ended':
      return 'done';
  }
}

export class IncomingJobs {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly clock: Clock) {}

  /** A reservation was made for job `reservation.migrationId`. */
  reserved(reservation: Reservation, reservedMemoryBytes: number): void {
    this.prune();
    this.entries.set(reservation.migrationId, {
      reservation,
      reservedMemoryBytes,
      memoryReadyMs: 0,
      startedAtMs: this.clock.epochMs(),
      endedAtMs: 0,
      error: '',
      view: null,
      last: { phase: 'open', method: null, counters: {} },
      phasesPassed: ['reservation'],
    });
  }

  /** The replica's memory of job `jobId` became ready `ms` after the reservation. */
  memoryReady(jobId: string, ms: number): void {
    const entry = this.entries.get(jobId);
    if (entry !== undefined) entry.memoryReadyMs = ms;
  }

  /** A transfer opened the job's reservation; `view` tells its state from now on. */
  opened(jobId: string, view: () => TransferView): void {
    const entry = this.entries.get(jobId);
    if (entry !== undefined) entry.view = view;
  }

  /** The job's transfer entered `phase`. */
  phaseChanged(jobId: string, phase: TransferPhase, method: MigrationMethod | null): void {
    const entry = this.entries.get(jobId);
    if (entry === undefined) return;
    const next = migrationPhaseOf(phase, method);
    if (entry.phasesPassed[entry.phasesPassed.length - 1] !== next) entry.phasesPassed.push(next);
  }

  /** The job ended (its session finished, or its reservation went unopened); the first call counts. */
  ended(jobId: string, reason: string): void {
    const entry = this.entries.get(jobId);
    if (entry === undefined || entry.endedAtMs !== 0) return;
    entry.last = entry.view?.() ?? entry.last;
    entry.view = null;
    entry.endedAtMs = this.clock.epochMs();
    if (!succeeded(entry.last.phase)) entry.error = reason;
    if (entry.phasesPassed[entry.phasesPassed.length - 1] !== 'done') entry.phasesPassed.push('done');
  }

  get(jobId: string): IncomingJob | undefined {
    const entry = this.entries.get(jobId);
    return entry === undefined ? undefined : this.describe(jobId, entry);
  }

  list(): IncomingJob[] {
    return [...this.entries].map(([jobId, entry]) => this.describe(jobId, entry));
  }

  /** The incoming job bringing `guestId` here now, if any. */
  activeFor(guestId: string): IncomingJob | undefined {
    for (const [jobId, entry] of this.entries) {
      if (entry.endedAtMs === 0 && entry.reservation.replica.id === guestId) return this.describe(jobId, entry);
    }
    return undefined;
  }

  private describe(jobId: string, entry: Entry): IncomingJob {
    const view = entry.view?.() ?? entry.last;
    if (entry.view !== null) entry.last = view;
    const over = entry.endedAtMs !== 0;
    const ok = succeeded(view.phase);
    return {
      jobId,
      guestId: entry.reservation.replica.id,
      reservationId: entry.reservation.id,
      reservedMemoryBytes: entry.reservedMemoryBytes,
      memoryReadyMs: entry.memoryReadyMs,
      method: view.method ?? entry.reservation.method,
      phase: over ? 'done' : migrationPhaseOf(view.phase, view.method),
      phasesPassed: [...entry.phasesPassed],
      state: !over ? 'running' : ok ? 'succeeded' : view.cancelled === true ? 'cancelled' : 'failed',
      error: entry.error,
      startedAtMs: entry.startedAtMs,
      endedAtMs: entry.endedAtMs,
      committed: view.phase === 'committed' || view.phase === 'activated',
      activated: view.phase === 'activated' || view.phase === 'postcopy',
      counters: view.counters,
      standby: view.standby,
      peer: entry.reservation.peer,
      unitMs: entry.reservation.unitMs,
    };
  }

  private prune(): void {
    if (this.entries.size < JOBS_KEPT) return;
    for (const [jobId, entry] of this.entries) {
      if (entry.endedAtMs !== 0) this.entries.delete(jobId);
      if (this.entries.size < JOBS_KEPT) return;
    }
  }
}

function succeeded(phase: TransferPhase): boolean {
  return phase === 'activated' || phase === 'committed';
}
