// The target's decisions about incoming migrations, kept in the agent's journal (shared/journal.ts),
// and the answers to outcome queries (Migration.QueryOutcome) drawn from them.
//
// The commit record is written before the commit is answered and before the guest resumes here:
// once a source could believe the guest is ours, the journal says so. A migration not committed
// when its outcome is asked is fenced: recorded `discarded`, its transfer ended and its
// reservation freed, so that the answer NOT_COMMITTED can never turn false. An agent that
// restarts finds migrations it had reserved and not decided: their replicas went with the
// process, so they are recorded `discarded` before the agent serves anyone.

import type { Logger } from 'pino';
import type { Clock } from '../shared/clock.js';
import { InvalidStateError, UnavailableError } from '../shared/errors.js';
import { type DecisionJournal, type JournalRecord, type JournalState } from '../shared/journal.js';
import { pb } from '../shared/transport/grpc.js';

type OutcomeResponse = InstanceType<typeof pb.OutcomeResponse>;
const { Outcome } = pb.OutcomeResponse;

/** A wall-clock disagreement between two hosts that an outcome answer still allows for. */
const WALL_CLOCK_SKEW_MS = 60_000;

/** What an outcome query needs to know of a migration still in progress here. */
export interface LiveMigration {
  /** Post-copy: the guest runs here and lacks this many pages. */
  missingPages: number;
}

/** What the host says of a migration's guest: a live transfer, and whether the guest runs here. */
export interface GuestHere {
  live(guestId: string): LiveMigration | null;
  present(guestId: string): boolean;
}

export class TargetDecisions {
  /** When each committed guest resumed (this agent's clock), for the source's downtime. */
  private readonly resumedAt = new Map<string, number>();
  /** When this agent started, on the injected clock (a simulation replays it). */
  private readonly startedAtUnixMs: number;
  /** Migrations answered UNKNOWN: fenced since (so nothing commits them), and still answered UNKNOWN. */
  private readonly unknown = new Set<string>();

  constructor(
    readonly journal: DecisionJournal,
    private readonly agentInstanceId: string,
    private readonly clock: Clock,
    private readonly log: Logger,
  ) {
    this.startedAtUnixMs = clock.epochMs();
  }

  /** At start: migrations reserved by an earlier run and never decided did not commit (their replicas went with it). */
  recoverAtStart(): number {
    let recovered = 0;
    for (const r of this.journal.entries()) {
      if (r.role !== 'target' || r.state !== 'reserved') continue;
      this.journal.append({ ...r, atMs: undefined, state: 'discarded', detail: 'the agent restarted before the migration committed; the replica went with it' });
      recovered++;
    }
    if (recovered > 0) this.log.warn({ migrations: recovered }, 'incoming migrations left open by the last run recorded as discarded (never committed here)');
    return recovered;
  }

  /** Refuses a Reserve for a migration already decided here (committed, or fenced). */
  checkUndecided(migrationId: string): void {
    const r = this.journal.latest('target', migrationId);
    if (r !== undefined && r.state !== 'reserved') {
      throw new InvalidStateError(`migration ${migrationId} was already decided on this agent (${r.state}${r.detail ? `: ${r.detail}` : ''}); start a new migration`, {
        reason: 'MIGRATION_DECIDED',
        metadata: { jobId: migrationId, state: r.state },
      });
    }
  }

  reserved(migrationId: string, guestId: string, peer: string): void {
    this.record(migrationId, guestId, peer, 'reserved');
  }

  /** The commit point: recorded before anyone is told. Throws JOURNAL_UNAVAILABLE when it cannot be. */
  committed(migrationId: string, guestId: string): void {
    try {
      this.record(migrationId, guestId, '', 'committed');
    } catch (error) {
      throw new UnavailableError(`cannot record the commit decision in the journal (${(error as Error).message}): not committed`, { reason: 'JOURNAL_UNAVAILABLE', metadata: { jobId: migrationId } });
    }
  }

  resumed(migrationId: string, atMs: number): void {
    this.resumedAt.set(migrationId, atMs);
    // Bounded by the journal's own bound on what it remembers.
    if (this.resumedAt.size > 10_000) this.resumedAt.delete(this.resumedAt.keys().next().value!);
  }

  /** A replica dropped before any commit (`opened`: a transfer had it), or a committed post-copy guest discarded. */
  dropped(migrationId: string, guestId: string, opened: boolean, reason: string): void {
    const latest = this.journal.latest('target', migrationId);
    if (latest !== undefined && latest.state !== 'reserved' && latest.state !== 'committed') return;
    try {
      this.record(migrationId, guestId, '', opened || latest?.state === 'committed' ? 'discarded' : 'released', reason);
    } catch (error) {
      // Nothing was committed: a missing record only makes a later outcome answer fence it again.
      this.log.error({ jobId: migrationId, err: String(error) }, 'could not record a discarded migration in the journal');
    }
  }

  /**
   * The outcome of `migrationId`. `fence` ends whatever this agent still holds for it (a transfer,
   * a reservation) and returns what a live transfer says, or null when there is none; it is called
   * only for a migration not committed, which is then recorded as discarded.
   */
  outcome(migrationId: string, startedAtUnixMs: number, here: GuestHere, fence: (reason: string) => void): OutcomeResponse {
    const base = { agentInstanceId: this.agentInstanceId, durable: this.journal.durable };
    const latest = this.journal.latest('target', migrationId);
    if (latest?.state === 'committed') {
      const state = here.live(latest.guestId);
      const guestPresent = here.present(latest.guestId);
      const detail = guestPresent ? 'committed here; the guest runs here' : 'committed here, but the guest is no longer here (this agent restarted since, and its guests with it)';
      return pb.OutcomeResponse.create({ ...base, outcome: Outcome.COMMITTED, detail, decidedAtUnixMs: latest.atMs, resumedAtMs: this.resumedAt.get(migrationId) ?? 0, missingPages: state?.missingPages ?? 0, guestPresent });
    }
    if (latest !== undefined && latest.state !== 'reserved' && !this.unknown.has(migrationId)) {
      return pb.OutcomeResponse.create({ ...base, outcome: Outcome.NOT_COMMITTED, detail: `${latest.state}${latest.detail ? `: ${latest.detail}` : ''}`, decidedAtUnixMs: latest.atMs });
    }
    // Not decided yet, or never heard of: fenced now, so that it never commits.
    const reason = 'fenced by an outcome query from the source (its commit answer was lost)';
    fence(reason);
    const unknown = this.unknown.has(migrationId) || (latest === undefined && !this.journal.durable && !(this.startedAtUnixMs < startedAtUnixMs - WALL_CLOCK_SKEW_MS));
    const record = this.fence(migrationId, latest, reason);
    if (unknown) {
      this.unknown.add(migrationId);
      if (this.unknown.size > 10_000) this.unknown.delete(this.unknown.keys().next().value!);
      return pb.OutcomeResponse.create({ ...base, outcome: Outcome.UNKNOWN, detail: 'no record here, and this agent keeps no durable journal (no stateDir) and started after the migration did: it may have committed it before a restart' });
    }
    return pb.OutcomeResponse.create({ ...base, outcome: Outcome.NOT_COMMITTED, detail: latest === undefined ? 'never reserved or committed here' : 'not committed; fenced now', decidedAtUnixMs: record?.atMs ?? 0 });
  }

  private fence(migrationId: string, latest: JournalRecord | undefined, reason: string): JournalRecord | undefined {
    const now = this.journal.latest('target', migrationId);
    if (now !== undefined && now.state !== 'reserved') return now;
    return this.journal.append({ migrationId, role: 'target', state: 'discarded', guestId: latest?.guestId ?? '', peer: latest?.peer ?? '', detail: reason });
  }

  private record(migrationId: string, guestId: string, peer: string, state: JournalState, detail?: string): void {
    this.journal.append({ migrationId, role: 'target', state, guestId, peer, detail });
    this.log.debug({ jobId: migrationId, state, atMs: this.clock.now() }, 'decision recorded');
  }
}
