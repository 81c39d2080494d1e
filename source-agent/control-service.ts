// The Control gRPC service: what an orchestrator or the CLI asks of an agent. Guests on this
// host, capacity, and migration jobs (start, watch, get, list, cancel).

import type { Logger } from 'pino';
import { stopForGood } from './fence.js';
import type { GuestOutput, HypervisorDriver, SourceGuest } from '../shared/driver/types.js';
import type { IncomingJobs } from '../shared/incoming-job.js';
import { capacityMessage, guestMessage } from '../shared/messages.js';
import { echo, InvalidStateError, LimitExceededError, NotFoundError, UnimplementedError } from '../shared/errors.js';
import { checkGuestId, checkJobId } from '../shared/ids.js';
import type { AgentMetrics } from '../shared/metrics.js';
import { type controlService, type grpc, pb } from '../shared/transport/grpc.js';
import { systemClock } from '../shared/clock.js';
import { faultHooks } from './faults.js';
import { JobHistory } from './job-history.js';
import { checkGuestCapabilities } from './methods/capabilities.js';
import { createMethod, defaultMethodFor } from './methods/registry.js';
import { parseFaultInjection, parseStartRequest, type StartDefaults } from './start-request.js';
import { jobMessage, watchJob } from './watch-job.js';
import { type SourceOptions, SourceMigration } from './migration.js';
import type { ProtectionRequest } from './methods/method.js';
import { Estimator } from './estimate/estimator.js';
import { failStream, unaryHandlers } from '../shared/transport/handlers.js';

export interface ControlOptions extends StartDefaults {
  /** Jobs kept (finished ones are dropped oldest first past this). */
  jobsMax: number;
}

export const CONTROL_DEFAULTS: ControlOptions = {
  downtimeLimitMsDefault: 300,
  maxDurationMsDefault: 600_000,
  jobsMax: 1000,
  maxBandwidthBytesPerSecDefault: 0,
  nonConvergencePolicyDefault: 'abort',
  allowFaultInjection: false,
  plaintext: false,
};

type Handlers = { [K in keyof typeof controlService]: grpc.UntypedHandleCall };

export class ControlService {
  private readonly jobs = new Map<string, SourceMigration>();
  /** What each job went through, numbered (watchers of Control v2 start from it). */
  private readonly histories = new WeakMap<SourceMigration, JobHistory>();
  /** EstimateMigration's sampling of guests (Control v2). */
  readonly estimator: Estimator;

  constructor(
    private readonly driver: HypervisorDriver,
    private readonly sourceOptions: SourceOptions,
    readonly options: ControlOptions,
    private readonly log: Logger,
    private readonly metrics?: AgentMetrics,
    /** The migrations arriving here (the target side): a guest among them is not this agent's yet. */
    private readonly arrivals?: Pick<IncomingJobs, 'activeFor'>,
  ) {
    this.estimator = new Estimator(driver, sourceOptions, (guestId) => this.activeJobOf(guestId));
    metrics?.observeHost({
      guestStates: () => driver.listGuests().map((g) => g.state),
      memory: () => driver.capacity(),
    });
  }

  /** Starts a migration of a running guest; with `protection`, a protection of it (a CR/TR transfer without end). */
  startMigration(req: InstanceType<typeof pb.StartMigrationRequest>, protection?: ProtectionRequest): SourceMigration {
    checkGuestId(req.guestId, 'guest_id');
    this.checkNotArriving(req.guestId, 'migrate');
    const guest = this.driver.guest(req.guestId);
    // No method named: one the guest's driver can carry out (crtr for sim, qemu-native for qemu).
    const request = { ...parseStartRequest(req, this.options, defaultMethodFor(guest)), protection };
    for (const job of this.jobs.values()) {
      if (job.request.guestId === req.guestId && !job.isOver()) {
        const what = job.request.protection !== undefined ? 'protected' : 'migrated';
        throw new InvalidStateError(`guest '${req.guestId}' is already being ${what} by job ${job.id}`, { reason: 'GUEST_BUSY', metadata: { guestId: req.guestId, jobId: job.id } });
      }
    }
    // An estimate owns the guest's dirty tracking while it samples: pre-copy would share it.
    if (this.estimator.isSampling(req.guestId)) {
      throw new InvalidStateError(`guest '${req.guestId}' is being sampled by an estimate (EstimateMigration); migrate it when the estimate ends`, { reason: 'GUEST_BUSY', metadata: { guestId: req.guestId } });
    }
    if (guest.pagesMissing > 0) {
      throw new InvalidStateError(`guest '${req.guestId}' is still receiving pages of its own post-copy migration (${guest.pagesMissing} missing); try again when it has them`, {
        reason: 'GUEST_NOT_RUNNING',
        metadata: { guestId: req.guestId, missingPages: guest.pagesMissing },
      });
    }
    checkGuestCapabilities(createMethod(request.method), guest, this.driver.name);
    const state = guest.describe().state;
    if (state !== 'running') throw new InvalidStateError(`guest '${req.guestId}' is ${state}; only a running guest migrates`, { reason: 'GUEST_NOT_RUNNING', metadata: { guestId: req.guestId, state } });
    const faults = parseFaultInjection(req, this.options.allowFaultInjection);
    this.pruneJobs();
    const job = new SourceMigration(guest, request, this.sourceOptions, this.log, { hooks: faults === undefined ? undefined : faultHooks(faults) });
    this.jobs.set(job.id, job);
    this.histories.set(job, new JobHistory(job, systemClock));
    this.metrics?.trackOutgoing(job);
    const { method, downtimeLimitMs, maxDurationMs, policy } = request;
    this.log.info({ jobId: job.id, guestId: req.guestId, target: req.targetAddress, method, downtimeLimitMs, maxDurationMs, policy, protection, faultInjection: faults !== undefined }, protection === undefined ? 'migration started' : 'protection started');
    void job.run();
    return job;
  }

  /** StopGuest (v1 and v2), once it was allowed: discards `guest` and settles once it is gone (its hypervisor's process exited, its memory free). */
  async stopGuestNow(guest: SourceGuest): Promise<void> {
    guest.discard();
    await guest.stopped?.();
    this.log.info({ guestId: guest.id }, 'guest stopped');
  }

  /**
   * Refuses `operation` on guest `guestId` while it arrives here (an incoming migration not yet
   * activated, or a standby): it exists on this host, but is not this agent's to stop or move
   * until that job hands it over. A guest that runs here while its post-copy still brings its last
   * pages is not stopped either (its move checks the pages it misses). FAILED_PRECONDITION
   * (GUEST_BUSY) naming the job, for every driver.
   */
  checkNotArriving(guestId: string, operation: 'stop' | 'migrate'): void {
    const job = this.arrivals?.activeFor(guestId);
    if (job === undefined || (job.activated && operation === 'migrate')) return;
    const what = job.standby !== undefined
      ? `is the standby of a protection here (job ${job.jobId}): it is not this agent's to ${operation} until it fails over or the protection ends`
      : job.activated
        ? `runs here while its migration job ${job.jobId} still brings it (${job.phase}); ${operation} it once the job ended`
        : `is arriving here by migration job ${job.jobId} (${job.phase}), and is not this agent's to ${operation} until that job activates it here; cancel the job on its source agent, or ${operation} it once it arrived`;
    throw new InvalidStateError(`guest '${echo(guestId)}' ${what}`, { reason: 'GUEST_BUSY', metadata: { guestId, jobId: job.jobId } });
  }

  job(id: string): SourceMigration {
    checkJobId(id, 'job_id');
    const job = this.jobs.get(id);
    if (job === undefined) throw new NotFoundError(`no job '${echo(id)}' on this agent`, { reason: 'JOB_NOT_FOUND', metadata: { jobId: id } });
    return job;
  }

  /** Every job kept, oldest first. */
  listJobs(): SourceMigration[] {
    return [...this.jobs.values()];
  }

  /** The job's numbered history. */
  historyOf(job: SourceMigration): JobHistory {
    const history = this.histories.get(job);
    if (history === undefined) throw new Error(`job ${job.id} has no history`);
    return history;
  }

  /**
   * Stops guest `guestId` for good, with no job of it running (a protection fenced between two of
   * its jobs): what it holds is dropped, nothing more leaves, it is suspended and retired.
   */
  async stopFencedGuest(guestId: string): Promise<void> {
    return stopForGood(this.driver.guest(guestId));
  }

  /** The output device of guest `guestId` here, if its driver has one (NOT_FOUND if there is no guest). */
  outputOf(guestId: string): GuestOutput | undefined {
    return this.driver.guest(guestId).output;
  }

  /** The state of guest `guestId` here (NOT_FOUND if there is none). */
  guestState(guestId: string): string {
    return this.driver.guest(guestId).describe().state;
  }

  /** The job migrating `guestId` away now, if any. */
  activeJobOf(guestId: string): SourceMigration | undefined {
    for (const job of this.jobs.values()) if (job.request.guestId === guestId && !job.isOver()) return job;
    return undefined;
  }

  /**
   * Cancels every job not yet committed (agent shutdown) and waits for them to end. A job in doubt
   * stops asking its target: its guest is left suspended (the journal says so at the next start).
   */
  async shutdown(reason: string): Promise<void> {
    const running = [...this.jobs.values()].filter((j) => !j.isOver());
    for (const job of running) {
      try {
        job.cancel(reason);
      } catch {
        // Past its commit point: it finishes on its own, or (in doubt) stops asking.
        job.abandon(reason);
      }
    }
    await Promise.all(running.map((j) => new Promise<void>((resolve) => (j.isOver() ? resolve() : j.once('end', () => resolve())))));
  }

  private pruneJobs(): void {
    if (this.jobs.size < this.options.jobsMax) return;
    for (const [id, job] of this.jobs) {
      if (job.isOver()) this.jobs.delete(id);
      if (this.jobs.size < this.options.jobsMax) return;
    }
    throw new LimitExceededError(`${this.jobs.size} jobs in progress, the limit is ${this.options.jobsMax}`, { reason: 'LIMIT_EXCEEDED', metadata: { limit: this.options.jobsMax } });
  }

  handlers(): Handlers {
    const unaryHandler = unaryHandlers(this.log, 'Control');
    return {
      listGuests: unaryHandler(() => pb.ListGuestsResponse.create({ guests: this.driver.listGuests().map(guestMessage) })),
      startGuest: unaryHandler(async (req: InstanceType<typeof pb.StartGuestRequest>) => {
        if (this.driver.createGuest === undefined) {
          throw new UnimplementedError(`driver '${this.driver.name}' does not start guests; start them with the hypervisor's own tools`, { reason: 'NOT_SUPPORTED', metadata: { driver: this.driver.name } });
        }
        const guest = this.driver.createGuest({
          id: req.id || undefined,
          profile: req.profile,
          memoryBytes: req.memoryBytes,
          unitMs: req.unitMs || undefined,
          rates: Object.keys(req.rates ?? {}).length > 0 ? (req.rates as Record<string, number>) : undefined,
          environmentSeed: req.environmentSeed || undefined,
        });
        // A guest whose hypervisor fails at once is answered with why, and leaves nothing behind.
        await guest.started;
        this.log.info({ guestId: guest.id, profile: req.profile, memoryBytes: req.memoryBytes }, 'guest started');
        return pb.StartGuestResponse.create({ guest: guestMessage(guest.describe()) });
      }),
      // Answered once the guest is gone (a QEMU has exited, killed after its grace period at worst).
      stopGuest: unaryHandler(async (req: InstanceType<typeof pb.StopGuestRequest>) => {
        checkGuestId(req.id, 'id');
        this.checkNotArriving(req.id, 'stop');
        const guest = this.driver.guest(req.id);
        for (const job of this.jobs.values()) {
          if (job.request.guestId === req.id && !job.isOver()) {
            throw new InvalidStateError(`guest '${req.id}' is being migrated by job ${job.id}; cancel it first`, { reason: 'GUEST_BUSY', metadata: { guestId: req.id, jobId: job.id } });
          }
        }
        await this.stopGuestNow(guest);
        return pb.StopGuestResponse.create();
      }),
      getCapacity: unaryHandler(() => capacityMessage(this.driver.capacity())),
      startMigration: unaryHandler((req: InstanceType<typeof pb.StartMigrationRequest>) => pb.StartMigrationResponse.create({ jobId: this.startMigration(req).id })),
      getJob: unaryHandler((req: InstanceType<typeof pb.GetJobRequest>) => jobMessage(this.job(req.jobId))),
      listJobs: unaryHandler(() => pb.ListJobsResponse.create({ jobs: [...this.jobs.values()].map(jobMessage) })),
      cancelJob: unaryHandler((req: InstanceType<typeof pb.CancelJobRequest>) => {
        const job = this.job(req.jobId);
        job.cancel('cancelled by request');
        return pb.CancelJobResponse.create({ job: jobMessage(job) });
      }),
      watchJob: ((call: grpc.ServerWritableStream<InstanceType<typeof pb.WatchJobRequest>, InstanceType<typeof pb.JobEvent>>) => {
        let job: SourceMigration;
        try {
          job = this.job(call.request.jobId);
        } catch (error) {
          failStream(call, error);
          return;
        }
        watchJob(call, job);
      }) as grpc.handleServerStreamingCall<InstanceType<typeof pb.WatchJobRequest>, InstanceType<typeof pb.JobEvent>>,
    };
  }
}
