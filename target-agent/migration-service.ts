// The target side of a migration: the Migration gRPC service. Phase 1 (capacity), phase 2
// (reservation, with the version handshake; the reservations themselves are in reservation.ts),
// and phases 3 to 7 on the Transfer stream, one TargetSession per stream (session.ts).

import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { type Clock, systemClock, type Timer } from '../shared/clock.js';
import type { GuestDescription, HypervisorDriver, TargetReplica } from '../shared/driver/types.js';
import { baseImageMessage, baseSourceFor } from './base-image.js';
import { echo, InvalidStateError, invalidField, LimitExceededError, NotFoundError, UnavailableError } from '../shared/errors.js';
import { checkGuestId, checkJobId } from '../shared/ids.js';
import type { AgentMetrics } from '../shared/metrics.js';
import { capacityMessage } from '../shared/messages.js';
import { AGENT_VERSION, PROTOCOL_VERSION } from '../shared/protocol.js';
import type { MigrationMethod } from '../shared/stats.js';
import { grpc, type migrationService, pb } from '../shared/transport/grpc.js';
import type { TargetOptions } from './options.js';
import { type Reservation, ReservationRegistry } from './reservation.js';
import { IncomingJobs, type TransferView } from './incoming-jobs.js';
import type { TransferPhase } from './receivers/context.js';
import { type SessionHost, TargetSession } from './session.js';
import type { FailoverResult } from './standby.js';
import { AutoFailover } from './auto-failover.js';
import type { Arbiter } from '../shared/arbiter/index.js';
import { type ProtectionTerms, RPO_MS_MAX_DEFAULT, RPO_MS_MAX_MAX, RPO_MS_MAX_MIN } from '../shared/rpo.js';
import { failStream, unaryHandlers } from '../shared/transport/handlers.js';
import { peerIdentity } from '../shared/transport/tls.js';
import { ProbeReceiver } from './probe.js';
import { type DecisionJournal, openJournal } from '../shared/journal.js';
import { TargetDecisions } from './decisions.js';
import { NativeStreamEndpoints, type NativeStreamServerCall } from './native-streams.js';

export { TARGET_DEFAULTS, type TargetOptions } from './options.js';

type Handlers = { [K in keyof typeof migrationService]: grpc.UntypedHandleCall };

/** Incoming transfers at once: each holds a replica of a guest's size. */
const SESSIONS_MAX = 64;
/**
 * How long Reserve waits for the replica's memory to be ready before it answers anyway (the source's
 * calls have a 10 s deadline by default). Measured here: 1 GiB takes 0.35 to 1.3 s when fresh, 20 to
 * 30 ms from the segment pool; 4 GiB 3 to 8.5 s fresh. Past the wait the rest is made ready in the
 * background, and a restore that gets there first faults its pages in as it writes them.
 */
const RESERVE_MEMORY_WAIT_MS_MAX = 5_000;
/** The downtime limits a reservation accepts. */
const DOWNTIME_LIMIT_MS_MIN = 1;
const DOWNTIME_LIMIT_MS_MAX = 600_000;

export class MigrationService implements SessionHost {
  private readonly reservations: ReservationRegistry;
  /** Transfer streams open, with the peer of each. */
  private readonly auto: AutoFailover | null;
  private readonly sessions = new Map<TargetSession, string>();
  /** Incoming migrations by job id, for the Control API. */
  readonly incoming: IncomingJobs;
  /** Bandwidth probes from sources estimating a migration here. */
  private readonly probes: ProbeReceiver;
  /** Commit decisions, in the agent's journal, and the outcome queries answered from them. */
  readonly decisions: TargetDecisions;
  /** qemu-native transfers waiting for their hypervisor's stream. */
  readonly nativeStreams: NativeStreamEndpoints;

  constructor(
    private readonly driver: HypervisorDriver,
    readonly options: TargetOptions,
    private readonly log: Logger,
    readonly metrics?: AgentMetrics,
    private readonly clock: Clock = systemClock,
    journal: DecisionJournal = openJournal(undefined),
    /** With an arbiter, standbys fail over on their own when their primary's lease is gone. */
    arbiter: Arbiter | null = null,
  ) {
    this.auto = arbiter === null ? null : new AutoFailover(arbiter, log, (guestId) => this.stopFenced(guestId));
    this.incoming = new IncomingJobs(clock);
    this.probes = new ProbeReceiver(clock);
    this.decisions = new TargetDecisions(journal, options.agentInstanceId ?? '', clock, log);
    this.decisions.recoverAtStart();
    this.nativeStreams = new NativeStreamEndpoints(log);
    this.reservations = new ReservationRegistry(options, clock, log, metrics, (r, reason) => {
      this.nativeStreams.drop(r.id);
      this.decisions.dropped(r.migrationId, r.replica.id, r.opened, reason);
      if (!r.opened) this.incoming.ended(r.migrationId, reason);
    });
    // In progress: reserved and not yet opened, or on a transfer stream that holds its reservation.
    metrics?.observeIncoming(() => this.reservations.waiting + [...this.sessions.keys()].filter((s) => s.opened).length);
  }

  capacity(): InstanceType<typeof pb.Capacity> {
    const message = capacityMessage(this.driver.capacity(), this.options.agentInstanceId);
    // The source's pings read it: the clocks' offset, for the downtime the guest saw.
    message.clockMs = this.clock.now();
    return message;
  }

  /** QueryOutcome: what became of a migration here; one not committed is fenced first (decisions.ts). */
  queryOutcome(request: InstanceType<typeof pb.OutcomeRequest>): InstanceType<typeof pb.OutcomeResponse> {
    const migrationId = request.migrationId;
    if (!migrationId) throw invalidField('migration_id', 'outcome query without a migration id');
    checkJobId(migrationId, 'migration_id');
    const sessions = () => [...this.sessions.keys()].filter((s) => s.jobId === migrationId);
    const answer = this.decisions.outcome(
      migrationId,
      Number.isFinite(request.startedAtUnixMs) ? request.startedAtUnixMs : 0,
      {
        live: (guestId) => {
          const running = sessions().map((s) => s.missingPages).find((n) => n !== null);
          if (running !== undefined && running !== null) return { missingPages: running };
          // A post-copy whose transfer ended (failed) with pages still missing: the guest says so itself.
          const guest = this.driver.listGuests().some((g) => g.id === guestId) ? this.driver.guest(guestId) : null;
          return guest !== null && guest.pagesMissing > 0 ? { missingPages: guest.pagesMissing } : null;
        },
        // A guest blocked on its broken post-copy is here all the same (it lacks pages, reported above).
        present: (guestId) => this.driver.listGuests().some((g) => g.id === guestId && (g.state === 'running' || g.state === 'blocked')),
      },
      (reason) => {
        for (const s of sessions()) s.abort(reason);
        for (const r of this.reservations.byMigration(migrationId)) this.reservations.release(r.id, reason);
      },
    );
    this.log.info({ jobId: migrationId, outcome: pb.OutcomeResponse.Outcome[answer.outcome], detail: answer.detail }, 'answered an outcome query');
    return answer;
  }

  async reserve(request: InstanceType<typeof pb.ReserveRequest>, peer = ''): Promise<InstanceType<typeof pb.ReserveResponse>> {
    if (request.protocolVersion !== PROTOCOL_VERSION) {
      throw new InvalidStateError(`protocol version ${request.protocolVersion} is not supported: this agent (${AGENT_VERSION}) speaks version ${PROTOCOL_VERSION}`, {
        reason: 'PEER_VERSION_MISMATCH',
        metadata: { protocolVersion: PROTOCOL_VERSION, peerProtocolVersion: request.protocolVersion, agentVersion: AGENT_VERSION },
      });
    }
    const g = request.guest;
    if (!g || !g.id) throw invalidField(g ? 'guest.id' : 'guest', 'reservation without a guest description');
    checkGuestId(g.id, 'guest.id');
    if (!request.migrationId) throw invalidField('migration_id', 'reservation without a migration id');
    checkJobId(request.migrationId, 'migration_id');
    // Asked again (the answer to the first was lost on the way): the same reservation, not a second.
    const again = this.reservations.byMigration(request.migrationId).find((r) => !r.opened && r.replica.id === g.id);
    if (again !== undefined) {
      this.log.info({ jobId: request.migrationId, reservationId: again.id }, 'reservation asked again: answered with the one made');
      return this.reserveResponse(again.id, again.protection !== undefined, again.replica);
    }
    this.decisions.checkUndecided(request.migrationId);
    const downtimeLimitMs = request.downtimeLimitMs;
    if (!(downtimeLimitMs >= DOWNTIME_LIMIT_MS_MIN && downtimeLimitMs <= DOWNTIME_LIMIT_MS_MAX)) {
      throw invalidField('downtime_limit_ms', `downtime limit ${downtimeLimitMs} ms: expected ${DOWNTIME_LIMIT_MS_MIN} to ${DOWNTIME_LIMIT_MS_MAX}`);
    }
    const description: GuestDescription = {
      id: g.id,
      driver: g.driver ?? '',
      memoryBytes: g.memoryBytes ?? 0,
      vcpus: g.vcpus ?? 0,
      unitMs: g.unitMs ?? 0,
      state: 'running',
      machineConfig: g.machineConfig ?? new Uint8Array(0),
      summary: g.summary ?? '',
    };
    this.checkPeerQuota(peer, description.memoryBytes);
    const base = request.acceptBase === true ? baseSourceFor(g.id, peer, request.protection != null, this.sessions.entries(), this.driver) : undefined;
    const replica = this.driver.reserve(description, base);
    const id = randomUUID();
    const reservation = this.reservations.reserve(id, {
      migrationId: request.migrationId,
      replica,
      peer,
      memoryBytes: description.memoryBytes,
      downtimeLimitMs,
      unitMs: g.unitMs ?? 0,
      maxDurationMs: request.maxDurationMs ?? 0,
      protection: protectionTerms(request.protection),
    });
    this.incoming.reserved(reservation, description.memoryBytes);
    try {
      this.decisions.reserved(request.migrationId, g.id, '');
    } catch (error) {
      this.reservations.release(id, 'the journal could not record it');
      throw new UnavailableError(`cannot record the reservation in the journal: ${(error as Error).message}`, { reason: 'JOURNAL_UNAVAILABLE' });
    }
    const startMs = this.clock.now();
    // Shown on its own in the job's target view, however long Reserve waited for it.
    replica.memoryReady?.then(
      () => this.incoming.memoryReady(request.migrationId, Math.max(1, Math.round(this.clock.now() - startMs))),
      () => {},
    );
    const ready = await this.memoryReady(reservation);
    const memoryReadyMs = Math.round(this.clock.now() - startMs);
    if (this.reservations.get(id) === undefined) throw new UnavailableError(`the reservation for guest '${g.id}' was released while its memory was being made ready`);
    const baseKind = replica.base?.kind ?? '';
    this.log.info({ jobId: request.migrationId, guestId: g.id, reservationId: id, memoryBytes: g.memoryBytes, memoryReady: ready, memoryReadyMs, baseKind }, 'reserved room for an incoming guest');
    return this.reserveResponse(id, reservation.protection !== undefined, replica);
  }

  private reserveResponse(reservationId: string, protection: boolean, replica: TargetReplica): InstanceType<typeof pb.ReserveResponse> {
    const { chunkWindow, unitWindow, unitWindowBytes, resumeWindowMs } = this.options;
    const base = baseImageMessage(replica);
    return pb.ReserveResponse.create({ protocolVersion: PROTOCOL_VERSION, agentVersion: AGENT_VERSION, reservationId, chunkWindow, unitWindow, unitWindowBytes, earlyCommit: true, resumeWindowMs, protection, base });
  }

  /**
   * Resumes the standby of protected guest `guestId` here (a failover): NOT_FOUND
   * (PROTECTION_NOT_FOUND) when no standby of it is kept here; see standby.ts for the rest.
   */
  async failover(guestId: string, force: boolean): Promise<{ jobId: string } & FailoverResult> {
    const s = this.standbyOf(guestId);
    // With an arbiter, the arbiter decides: going live is refused while the primary's lease
    // lives (unless forced: then its lease is revoked and its TTL waited out before the resume).
    if (this.auto !== null) return { jobId: s.jobId!, ...(await this.auto.goLive(guestId, force, () => s.failover(true))) };
    return { jobId: s.jobId!, ...s.failover(force) };
  }

  /** Drops the standby of `guestId` (its primary is gone and will not unprotect it): the replica is discarded. */
  dropStandby(guestId: string): string {
    const s = this.standbyOf(guestId);
    s.abort('standby dropped by request (unprotect at the DR agent)');
    return s.jobId!;
  }

  private standbyOf(guestId: string): TargetSession {
    for (const s of this.sessions.keys()) if (s.jobId !== null && s.guestId === guestId && s.view().standby !== undefined && s.opened) return s;
    throw new NotFoundError(`no standby of guest '${echo(guestId)}' on this agent`, { reason: 'PROTECTION_NOT_FOUND', metadata: { guestId } });
  }

  /**
   * Refuses (RESOURCE_EXHAUSTED, PEER_QUOTA_EXCEEDED) a reservation that would give `peer` more
   * than its share of this host: peerMemoryPercent of its memory, peerTransfersMax reservations.
   */
  private checkPeerQuota(peer: string, memoryBytes: number): void {
    const { peerMemoryPercent, peerTransfersMax } = this.options;
    const held = this.reservations.heldBy(peer);
    const memoryBytesMax = Math.floor((this.driver.capacity().memoryBytesTotal * peerMemoryPercent) / 100);
    if (held.count < peerTransfersMax && held.memoryBytes + memoryBytes <= memoryBytesMax) return;
    throw new LimitExceededError(
      `peer ${echo(peer)} holds ${held.count} reservations of ${held.memoryBytes} bytes; another of ${memoryBytes} bytes would pass its share of this host (${peerTransfersMax} reservations, ${peerMemoryPercent}% of memory: ${memoryBytesMax} bytes)`,
      { reason: 'PEER_QUOTA_EXCEEDED', metadata: { peer, heldBytes: held.memoryBytes, memoryBytes, memoryBytesMax, reservations: held.count, reservationsMax: peerTransfersMax } },
    );
  }

  /**
   * Waits, at most RESERVE_MEMORY_WAIT_MS_MAX, for the replica's memory to be ready; returns whether
   * it is. A replica whose memory cannot be had is released and the reservation refused.
   */
  private async memoryReady(reservation: Reservation): Promise<boolean> {
    const ready = reservation.replica.memoryReady;
    if (ready === undefined) return true;
    let timer: Timer | undefined;
    const waited = new Promise<false>((resolve) => (timer = this.clock.timeout(RESERVE_MEMORY_WAIT_MS_MAX, () => resolve(false))));
    try {
      return await Promise.race([ready.then(() => true), waited]);
    } catch (error) {
      this.reservations.release(reservation.id, `its memory could not be had: ${String(error)}`);
      throw error;
    } finally {
      timer?.cancel();
    }
  }

  /** Releases a reservation and discards its replica (unless it was activated, or `keepReplica`: handed over as a base). */
  release(id: string, reason: string, keepReplica = false): void {
    this.reservations.release(id, reason, keepReplica);
  }

  /** The transfer of `reservationId` whose stream broke and waits for the source to resume it. */
  waitingForResume(reservationId: string, migrationId: string, attempt: number): TargetSession | undefined {
    for (const s of this.sessions.keys()) if (s.waitingForResume(reservationId, migrationId, attempt)) return s;
    return undefined;
  }

  /** Takes a reservation for a Transfer stream of `method`. */
  open(id: string, method: MigrationMethod): Reservation {
    return this.reservations.open(id, method);
  }

  phaseChanged(jobId: string, phase: TransferPhase, method: MigrationMethod | null, view: () => TransferView): void {
    this.incoming.opened(jobId, view);
    this.incoming.phaseChanged(jobId, phase, method);
    if (this.auto !== null && phase === 'replaying' && view().standby !== undefined) {
      const s = [...this.sessions.keys()].find((x) => x.jobId === jobId);
      if (s !== undefined) {
        this.auto.watch({ guestId: s.guestId!, jobId, usable: () => s.view().phase === 'replaying', failover: () => s.failover(true), drop: (reason) => s.abort(reason), ended: s.done });
      }
    }
  }

  /** Forgets a reservation whose replica was activated (the guest now belongs to the driver). */
  forget(id: string): void {
    this.reservations.forget(id);
  }

  /** Stops a guest failed over here that was fenced: suspended and retired, it never runs again (a fail back may take it as a base). */
  private async stopFenced(guestId: string): Promise<void> {
    if (!this.driver.listGuests().some((g) => g.id === guestId)) return;
    const guest = this.driver.guest(guestId);
    if (guest.describe().state === 'running') await guest.suspend();
    guest.retire?.();
  }

  /** Discards a guest that runs on this host (a post-copy whose commit failed). */
  discardGuest(id: string): void {
    try {
      this.driver.guest(id).discard();
    } catch (error) {
      this.log.warn({ guestId: id, err: String(error) }, 'could not discard the guest');
    }
  }

  /** Aborts every session and releases every reservation (agent shutdown). */
  shutdown(reason: string): void {
    for (const s of [...this.sessions.keys()]) s.abort(reason);
    this.reservations.releaseAll(reason);
  }

  /** Why a new transfer stream of `peer` is refused (RESOURCE_EXHAUSTED), or null. */
  private transferRefusal(peer: string): LimitExceededError | null {
    if (this.sessions.size >= SESSIONS_MAX) return new LimitExceededError(`${this.sessions.size} incoming transfers in progress, the limit is ${SESSIONS_MAX}`, { metadata: { limit: SESSIONS_MAX } });
    const ofPeer = [...this.sessions.values()].filter((p) => p === peer).length;
    const limit = this.options.peerTransfersMax;
    if (ofPeer < limit) return null;
    return new LimitExceededError(`peer ${echo(peer)} has ${ofPeer} transfer streams open, its limit is ${limit}`, { reason: 'PEER_QUOTA_EXCEEDED', metadata: { peer, limit } });
  }

  handlers(): Handlers {
    const unaryHandler = unaryHandlers(this.log, 'Migration');
    return {
      getCapacity: unaryHandler(() => this.capacity()),
      reserve: unaryHandler((req: InstanceType<typeof pb.ReserveRequest>, call) => this.reserve(req, peerIdentity(call))),
      release: unaryHandler((req: InstanceType<typeof pb.ReleaseRequest>) => {
        const reservationId = req.reservationId;
        if (!reservationId && req.migrationId) {
          // The source gave the migration up (before the commit) and its stream may not say so: a
          // transfer still open for it ends too, its replica discarded.
          checkJobId(req.migrationId, 'migration_id');
          const reason = req.reason || 'released by the source';
          for (const s of [...this.sessions.keys()]) if (s.jobId === req.migrationId) s.giveUp(reason);
          for (const r of this.reservations.byMigration(req.migrationId)) if (!r.opened) this.release(r.id, reason);
          return pb.ReleaseResponse.create();
        }
        const r = this.reservations.get(reservationId);
        if (r === undefined) throw new NotFoundError(`no reservation '${echo(reservationId)}' on this agent`, { reason: 'RESERVATION_NOT_FOUND', metadata: { reservationId } });
        if (r.opened) throw new InvalidStateError(`reservation '${echo(reservationId)}' is in use by a transfer; abort the transfer instead`, { reason: 'PROTOCOL_VIOLATION', metadata: { reservationId } });
        this.release(reservationId, req.reason || 'released by the source');
        return pb.ReleaseResponse.create();
      }),
      transfer: ((call: grpc.ServerDuplexStream<InstanceType<typeof pb.SourceMessage>, InstanceType<typeof pb.TargetMessage>>) => {
        const peer = peerIdentity(call);
        const refusal = this.transferRefusal(peer);
        if (refusal !== null) return failStream(call, refusal);
        const session = new TargetSession(call, this, this.log, this.clock);
        this.sessions.set(session, peer);
        void session.done.finally(() => {
          this.sessions.delete(session);
          const jobId = session.jobId;
          if (jobId !== null) this.incoming.ended(jobId, session.reasonEnded);
        });
      }) as grpc.handleBidiStreamingCall<InstanceType<typeof pb.SourceMessage>, InstanceType<typeof pb.TargetMessage>>,
      queryOutcome: unaryHandler((req: InstanceType<typeof pb.OutcomeRequest>) => this.queryOutcome(req)),
      probe: ((call, callback) => this.probes.handle(call, callback)) as grpc.handleClientStreamingCall<InstanceType<typeof pb.ProbeData>, InstanceType<typeof pb.ProbeResult>>,
      nativeStream: ((call: NativeStreamServerCall) => this.nativeStreams.handle(call)) as grpc.handleBidiStreamingCall<InstanceType<typeof pb.NativeSourceMessage>, InstanceType<typeof pb.NativeTargetMessage>>,
    };
  }
}

/** A Reserve's protection terms (none: a migration). */
function protectionTerms(p: { mode?: number | null; rpoMsMax?: number | null } | null | undefined): ProtectionTerms | undefined {
  if (p === null || p === undefined) return undefined;
  const rpoMsMax = (p.rpoMsMax ?? 0) || RPO_MS_MAX_DEFAULT;
  if (!(rpoMsMax >= RPO_MS_MAX_MIN && rpoMsMax <= RPO_MS_MAX_MAX)) throw invalidField('protection.rpo_ms_max', `recovery point objective ${rpoMsMax} ms: expected ${RPO_MS_MAX_MIN} to ${RPO_MS_MAX_MAX}`);
  return { mode: p.mode === pb.Protection.Mode.ASYNC ? 'async' : 'sync', rpoMsMax };
}
