// The protection calls of Control v2 (proto/vmmigrate/v2/protection.proto). A protection is a
// CR/TR job whose transfer does not end on its own (methods/crtr.ts, `request.protection`); the
// DR agent keeps it as an incoming job with a standby (target-agent/standby.ts). Both agents
// answer for the protections they hold, each with its role.

import type { Logger } from 'pino';
import type { IncomingJob } from '../../shared/incoming-job.js';
import { checkGuestId } from '../../shared/ids.js';
import { echo, invalidField, NotFoundError } from '../../shared/errors.js';
import { protectionLogBatchMs, REPLAY_LAG_MS_MAX_DEFAULT, REPLAY_LAG_MS_MAX_MAX, REPLAY_LAG_MS_MAX_MIN, RPO_MS_MAX_DEFAULT, RPO_MS_MAX_MAX, RPO_MS_MAX_MIN } from '../../shared/rpo.js';
import { pb, pb2 } from '../../shared/transport/grpc.js';
import type { ControlService } from '../control-service.js';
import type { SourceMigration } from '../migration.js';
import type { ProtectionRequest } from '../methods/method.js';
import type { Arbiter, PrimaryTerm } from '../../shared/arbiter/index.js';

type Req<K extends keyof typeof pb2> = (typeof pb2)[K] extends abstract new (...args: never) => infer T ? T : never;
type ProtectionMessage = InstanceType<typeof pb2.Protection>;

/** What the DR side offers: its incoming jobs (standbys among them) and the failover. */
export interface StandbySide {
  list(): IncomingJob[];
  failover(guestId: string, force: boolean): Promise<{ jobId: string; unitsReplayed: number; failoverMs: number }>;
  /** Drops the standby of a guest whose primary is gone; returns its job id. */
  drop(guestId: string): string;
}

/** A protection whose standby was lost starts again after this, doubling up to the maximum. */
const RESYNC_BACKOFF_MS = 1_000;
const RESYNC_BACKOFF_MS_MAX = 30_000;

/** A protection the primary keeps up: its current job, and how often its standby was made again. */
interface Kept {
  req: Req<'ProtectRequest'>;
  protection: ProtectionRequest;
  term: PrimaryTerm | null;
  job: SourceMigration;
  resyncs: number;
  backoffMs: number;
  /** Ended for good (unprotected, switched over, failed over, fenced). */
  over: boolean;
  /** An unprotect asked for it to end (its job is being cancelled). */
  unprotected: boolean;
}

/** A standby whose primary has been silent this long is shown DEGRADED. */
const STANDBY_SILENCE_DEGRADED_MS = 3_000;

export class ProtectionControl {
  constructor(
    private readonly control: ControlService,
    private readonly standbys: StandbySide,
    private readonly checkAddress: (address: string) => void,
    private readonly log: Logger,
    /** With an arbiter, the primary holds its guest's term while it protects it (automatic failover). */
    private readonly arbiter: Arbiter | null = null,
  ) {}

  private readonly kept = new Map<string, Kept>();

  async protect(req: Req<'ProtectRequest'>): Promise<ProtectionMessage> {
    checkGuestId(req.guestId, 'guest_id');
    if (!req.drAddress) throw invalidField('dr_address', 'dr_address is required (host:port of the DR agent)');
    this.checkAddress(req.drAddress);
    const protection = protectionRequest(req);
    // The term first: a guest another agent holds is refused before anything moves.
    const term = this.arbiter === null ? null : await this.arbiter.claim(req.guestId);
    if (term !== null) protection.held = () => term.isHeld();
    let job: SourceMigration;
    try {
      job = this.start(req, protection);
    } catch (error) {
      await term?.release().catch(() => {});
      throw error;
    }
    const kept: Kept = { req, protection, term, job, resyncs: 0, backoffMs: RESYNC_BACKOFF_MS, over: false, unprotected: false };
    this.kept.set(req.guestId, kept);
    if (term !== null) {
      // Nothing leaves once the term is not known held, in sync or async mode, during a job or between two.
      const output = this.control.outputOf(req.guestId);
      if (output !== undefined) output.releaseWhile = () => term.isHeld();
      this.holdTerm(kept, term);
    }
    this.follow(kept);
    return primaryView(job);
  }

  /**
   * Keeps the protection up: a job that ends because its standby is gone (the DR agent dropped
   * or lost it) is started again, a new checkpoint to a new standby, with backoff; the guest runs
   * on meanwhile (a sync gate is open then). Unprotected, switched over or failed over, it ends.
   */
  private follow(kept: Kept): void {
    kept.job.once('end', () => {
      const s = kept.job.stats;
      const byRequest = kept.unprotected || s.status === 'cancelled' || s.status === 'completed' || s.errorReason === 'FAILED_OVER';
      const guestHere = this.control.activeJobOf(kept.req.guestId) === undefined && this.guestRuns(kept.req.guestId);
      if (kept.over || byRequest || !guestHere) return this.end(kept);
      this.log.warn({ guestId: kept.req.guestId, err: s.error, backoffMs: kept.backoffMs }, 'protection: the standby is lost; making it again by a new checkpoint');
      const timer = setTimeout(() => this.resync(kept), kept.backoffMs);
      timer.unref();
      kept.backoffMs = Math.min(RESYNC_BACKOFF_MS_MAX, kept.backoffMs * 2);
    });
  }

  private resync(kept: Kept): void {
    if (kept.over) return;
    try {
      kept.job = this.start(kept.req, kept.protection);
      kept.resyncs++;
      this.follow(kept);
      // A standby made again restores the backoff once it is usable.
      kept.job.once('phase', () => (kept.backoffMs = RESYNC_BACKOFF_MS));
    } catch (error) {
      this.log.error({ guestId: kept.req.guestId, err: String(error) }, 'protection: could not start it again; it ends');
      this.end(kept);
    }
  }

  /**
   * Fences now every term whose deadline passed (protection.ts's terms are otherwise fenced by a
   * timer, which after a pause of the process runs after the I/O that waited): a guest's state is
   * never answered "running" for a copy that already lost its term.
   */
  checkTerms(): void {
    for (const kept of this.kept.values()) kept.term?.checkDeadline();
  }

  /** The guest is still on this host (suspended, say), not migrated or stopped. */
  private guestKept(guestId: string): boolean {
    try {
      return this.control.guestState(guestId) !== 'discarded';
    } catch {
      return false;
    }
  }

  private guestRuns(guestId: string): boolean {
    try {
      return this.control.guestState(guestId) === 'running';
    } catch {
      return false;
    }
  }

  /**
   * The term lives as long as the protection: fenced (another agent went live, or the lease can
   * no longer be known alive), the primary stops its copy; ended otherwise, the records go (a
   * standby that sees them gone drops itself rather than go live).
   */
  private holdTerm(kept: Kept, term: PrimaryTerm): void {
    term.onFenced((event) => {
      this.log.error({ guestId: term.guestId, epoch: term.epoch, reason: event.reason }, `arbiter: ${event.message}; this copy stops`);
      this.end(kept);
      // The copy stops here and now (its outputs shut in, its vCPU told to stop), whatever its job
      // is doing: between two jobs (a resync waiting for its standby) there is none to do it.
      this.control.stopFencedGuest(kept.req.guestId).catch((error: unknown) => this.log.error({ guestId: term.guestId, err: String(error) }, 'protection: fenced, and the copy could not be stopped'));
      kept.job.fence(`fenced by the arbiter (${event.reason}): ${event.message}`);
    });
  }

  /**
   * The protection ends for good (once; never between a lost standby and its resync). Its term's
   * records are retired once its job ended (the standby heard the Abort first), unless the term
   * was fenced or the guest failed over: then the records belong to the new primary.
   */
  private end(kept: Kept): void {
    if (kept.over) return;
    kept.over = true;
    const term = kept.term;
    if (term === null || term.state !== 'held' || kept.job.stats.errorReason === 'FAILED_OVER') return;
    // The guest runs on unprotected here: its outputs no longer wait on the term.
    const output = this.guestKept(kept.req.guestId) ? this.control.outputOf(kept.req.guestId) : undefined;
    if (output !== undefined) {
      output.releaseWhile = null;
      output.openGate();
    }
    term.retire().catch((error: unknown) => this.log.warn({ guestId: term.guestId, err: String(error) }, 'arbiter: could not retire the protection records (the lease expires by its TTL)'));
  }

  private start(req: Req<'ProtectRequest'>, protection: ProtectionRequest): SourceMigration {
    return this.control.startMigration(
      pb.StartMigrationRequest.create({
        guestId: req.guestId,
        targetAddress: req.drAddress,
        method: 'crtr',
        downtimeLimitMs: req.downtimeLimitMs,
        maxBandwidthBytesPerSec: Number(req.maxBandwidthBytesPerSec),
        // The planned switchover, when it comes, converges or is forced.
        nonConvergencePolicy: 'force',
        logOnlyCatchUp: true,
      }),
      protection,
    );
  }

  /** On the primary: ends the protection (the guest runs on). On the DR agent: drops the standby of a primary that is gone. */
  unprotect(req: Req<'UnprotectRequest'>): ProtectionMessage {
    checkGuestId(req.guestId, 'guest_id');
    const kept = this.kept.get(req.guestId);
    if (kept !== undefined && !kept.over && kept.job.isOver()) {
      // Between a lost standby and its resync: nothing runs to cancel; it just ends.
      this.end(kept);
      return this.withResyncs(primaryView(kept.job));
    }
    const primary = this.control.activeJobOf(req.guestId);
    if (primary === undefined && this.standbys.list().some((j) => j.guestId === req.guestId && j.standby !== undefined && j.state === 'running')) {
      const jobId = this.standbys.drop(req.guestId);
      this.log.warn({ guestId: req.guestId, jobId }, 'standby dropped by request');
      return this.get(req.guestId);
    }
    const job = this.activePrimary(req.guestId);
    if (kept !== undefined) kept.unprotected = true;
    job.cancel('unprotected by request');
    this.log.info({ guestId: req.guestId, jobId: job.id }, 'protection ended by request: the standby is dropped, the guest runs on');
    return primaryView(job);
  }

  switchover(req: Req<'SwitchoverRequest'>): ProtectionMessage {
    const job = this.activePrimary(req.guestId);
    job.switchover('planned switchover by request');
    return primaryView(job);
  }

  async failover(req: Req<'FailoverRequest'>): Promise<InstanceType<typeof pb2.FailoverResponse>> {
    checkGuestId(req.guestId, 'guest_id');
    const result = await this.standbys.failover(req.guestId, req.force === true);
    const job = this.standbys.list().find((j) => j.jobId === result.jobId);
    return pb2.FailoverResponse.create({ protection: job === undefined ? undefined : standbyView(job), unitsReplayedAtFailover: result.unitsReplayed, failoverMs: result.failoverMs });
  }

  /** The guest's protection here: an active one first (primary, then standby), else the latest ended one. */
  get(guestId: string): ProtectionMessage {
    checkGuestId(guestId, 'guest_id');
    const all = this.list(guestId);
    const found = all.find((p) => !ended(p)) ?? all.at(-1);
    if (found === undefined) throw new NotFoundError(`no protection of guest '${echo(guestId)}' on this agent`, { reason: 'PROTECTION_NOT_FOUND', metadata: { guestId } });
    return found;
  }

  /** Every protection held here, or those of `guestId`, oldest first (a guest failed over and back has one of each role). */
  list(guestId?: string): ProtectionMessage[] {
    this.checkTerms();
    const of = (id: string) => guestId === undefined || id === guestId;
    const primaries = this.control.listJobs().filter((j) => j.request.protection !== undefined && of(j.request.guestId)).map((j) => ({ at: j.startedAtMs, view: this.withResyncs(primaryView(j), j) }));
    const standbys = this.standbys.list().filter((j) => j.standby !== undefined && of(j.guestId)).map((j) => ({ at: j.startedAtMs, view: standbyView(j) }));
    return [...primaries, ...standbys].sort((x, y) => x.at - y.at).map((x) => x.view);
  }

  /** The view with its protection's resyncs; a job ended for a resync shows as syncing again. */
  private withResyncs(view: ProtectionMessage, job?: SourceMigration): ProtectionMessage {
    const kept = this.kept.get(view.guestId);
    if (kept === undefined || (job !== undefined && job !== kept.job)) return view;
    view.resyncs = kept.resyncs;
    if (!kept.over && kept.job.isOver()) [view.state, view.detail] = [pb2.ProtectionState.PROTECTION_STATE_DEGRADED, `the standby was lost (${kept.job.stats.error}); making it again`];
    return view;
  }

  private activePrimary(guestId: string): SourceMigration {
    checkGuestId(guestId, 'guest_id');
    const job = this.control.activeJobOf(guestId);
    if (job === undefined || job.request.protection === undefined) {
      throw new NotFoundError(`guest '${echo(guestId)}' is not protected from this agent`, { reason: 'PROTECTION_NOT_FOUND', metadata: { guestId } });
    }
    return job;
  }
}

export function ended(p: ProtectionMessage): boolean {
  const s = pb2.ProtectionState;
  return p.state === s.PROTECTION_STATE_STOPPED || p.state === s.PROTECTION_STATE_FAILED_OVER;
}

/** The request's terms, checked (INVALID_ARGUMENT). */
function protectionRequest(req: Req<'ProtectRequest'>): ProtectionRequest {
  const rpoMsMax = req.rpoMsMax || RPO_MS_MAX_DEFAULT;
  if (rpoMsMax < RPO_MS_MAX_MIN || rpoMsMax > RPO_MS_MAX_MAX) throw invalidField('rpo_ms_max', `recovery point objective ${rpoMsMax} ms: expected 0 (the default, ${RPO_MS_MAX_DEFAULT}) or ${RPO_MS_MAX_MIN} to ${RPO_MS_MAX_MAX}`);
  const modes = pb2.ProtectionMode;
  if (req.mode !== modes.PROTECTION_MODE_UNSPECIFIED && req.mode !== modes.PROTECTION_MODE_SYNC && req.mode !== modes.PROTECTION_MODE_ASYNC) throw invalidField('mode', `protection mode ${req.mode} is not one of SYNC, ASYNC`);
  const policies = pb2.LinkLossPolicy;
  const linkLoss = req.linkLoss ?? policies.LINK_LOSS_POLICY_UNSPECIFIED;
  if (linkLoss !== policies.LINK_LOSS_POLICY_UNSPECIFIED && linkLoss !== policies.LINK_LOSS_POLICY_HOLD && linkLoss !== policies.LINK_LOSS_POLICY_RELEASE) throw invalidField('link_loss', `link loss policy ${linkLoss} is not one of HOLD, RELEASE`);
  const logBatchMs = protectionLogBatchMs(req.logBatchMs ?? 0, rpoMsMax);
  if (typeof logBatchMs === 'string') throw invalidField('log_batch_ms', logBatchMs);
  const replayLagMsMax = req.replayLagMsMax || REPLAY_LAG_MS_MAX_DEFAULT;
  if (replayLagMsMax < REPLAY_LAG_MS_MAX_MIN || replayLagMsMax > REPLAY_LAG_MS_MAX_MAX) {
    throw invalidField('replay_lag_ms_max', `replay lag bound ${replayLagMsMax} ms: expected 0 (the default, ${REPLAY_LAG_MS_MAX_DEFAULT}) or ${REPLAY_LAG_MS_MAX_MIN} to ${REPLAY_LAG_MS_MAX_MAX}`);
  }
  return { mode: req.mode === modes.PROTECTION_MODE_ASYNC ? 'async' : 'sync', rpoMsMax, onLinkLoss: linkLoss === policies.LINK_LOSS_POLICY_RELEASE ? 'release' : 'hold', logBatchMs, replayLagMsMax };
}

const MODE = { sync: pb2.ProtectionMode.PROTECTION_MODE_SYNC, async: pb2.ProtectionMode.PROTECTION_MODE_ASYNC } as const;

/** A protection as its primary sees it: the job's state and the standby's lag from its reports. */
export function primaryView(job: SourceMigration): ProtectionMessage {
  const s = job.refreshStats();
  const terms = job.request.protection!;
  const st = pb2.ProtectionState;
  let state: number;
  let detail = '';
  if (job.isOver()) {
    if (s.errorReason === 'FAILED_OVER') [state, detail] = [st.PROTECTION_STATE_FAILED_OVER, `failed over to the standby: this copy is stopped (${s.error})`];
    else if (s.status === 'completed') [state, detail] = [st.PROTECTION_STATE_STOPPED, 'switched over: the guest runs on the standby'];
    else if (s.status === 'cancelled') [state, detail] = [st.PROTECTION_STATE_STOPPED, s.error || 'unprotected'];
    else [state, detail] = [st.PROTECTION_STATE_STOPPED, `failed: ${s.error}`];
  } else if (s.phase === 'pre-migration' || s.phase === 'reservation' || s.phase === 'checkpoint') {
    state = st.PROTECTION_STATE_SYNCING;
  } else if (s.phase !== 'log-transfer' || job.switchingOver) {
    state = st.PROTECTION_STATE_SWITCHING_OVER;
  } else {
    const lagMs = s.lagUnitsReceived * s.unitMs;
    state = lagMs > terms.rpoMsMax ? st.PROTECTION_STATE_DEGRADED : st.PROTECTION_STATE_PROTECTED;
    if (state === st.PROTECTION_STATE_DEGRADED) detail = `the standby lags ${Math.round(lagMs)} ms, over the objective of ${terms.rpoMsMax} ms`;
    if (s.outputOverflows > 0) detail = [detail, `sync fell back to async ${s.outputOverflows} times (too many outputs held)`].filter((d) => d !== '').join('; ');
  }
  return pb2.Protection.create({
    guestId: job.request.guestId,
    role: pb2.ProtectionRole.PROTECTION_ROLE_PRIMARY,
    state,
    jobId: job.id,
    peer: job.request.targetAddress,
    mode: MODE[terms.mode],
    rpoMsMax: terms.rpoMsMax,
    logBatchMs: terms.logBatchMs,
    replayLagMsMax: terms.replayLagMsMax,
    lagUnitsReceived: s.lagUnitsReceived,
    lagUnitsReplayed: s.lagUnitsReplayed,
    lagReceivedMs: s.lagUnitsReceived * s.unitMs,
    lagReplayedMs: s.lagUnitsReplayed * s.unitMs,
    logBytesPerSec: s.logRateBytesPerSec,
    outputsHeld: s.outputsHeld,
    outputsReleased: s.outputsReleased,
    resumes: s.resumes,
    ageMs: s.totalTimeMs,
    throttle: s.throttle,
    detail,
    baseKind: s.baseKind,
    checkpointBytes: s.checkpointBytes,
    checkpointBytesSaved: s.checkpointBytesSaved,
  });
}

/** A protection as its DR agent sees it: the standby's phase and its replay backlog. */
export function standbyView(job: IncomingJob): ProtectionMessage {
  const standby = job.standby!;
  const st = pb2.ProtectionState;
  let state: number;
  let detail = '';
  if (standby.failedOver) [state, detail] = [st.PROTECTION_STATE_FAILED_OVER, 'failed over: the guest runs here'];
  else if (job.state === 'succeeded') [state, detail] = [st.PROTECTION_STATE_STOPPED, 'switched over: the guest runs here'];
  else if (job.state !== 'running') [state, detail] = [st.PROTECTION_STATE_STOPPED, job.error || job.state];
  else if (job.phase === 'reservation' || job.phase === 'checkpoint') state = st.PROTECTION_STATE_SYNCING;
  else if (standby.switchoverAsked || job.phase !== 'log-transfer') state = st.PROTECTION_STATE_SWITCHING_OVER;
  else if (standby.silentMs > STANDBY_SILENCE_DEGRADED_MS) [state, detail] = [st.PROTECTION_STATE_DEGRADED, `nothing from the primary for ${Math.round(standby.silentMs)} ms`];
  else state = st.PROTECTION_STATE_PROTECTED;
  const backlog = job.counters.remainingUnits ?? 0;
  return pb2.Protection.create({
    guestId: job.guestId,
    role: pb2.ProtectionRole.PROTECTION_ROLE_STANDBY,
    state,
    jobId: job.jobId,
    peer: job.peer,
    mode: MODE[standby.terms.mode],
    rpoMsMax: standby.terms.rpoMsMax,
    lagUnitsReplayed: backlog,
    lagReplayedMs: backlog * job.unitMs,
    ageMs: (job.endedAtMs || Date.now()) - job.startedAtMs,
    detail,
  });
}
