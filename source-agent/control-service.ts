// The Control gRPC service: what an orchestrator or the CLI asks of an agent. Guests on this
// host, capacity, and migration jobs (start, watch, get, list, cancel).

import type { Logger } from 'pino';
import { NON_CONVERGENCE_POLICIES, type NonConvergencePolicy } from '../shared/convergence.js';
import type { HypervisorDriver } from '../shared/driver/types.js';
import { capacityMessage, guestMessage } from '../shared/messages.js';
import { InvalidArgumentError, InvalidStateError, LimitExceededError, NotFoundError, UnimplementedError, VmMigrateError } from '../shared/errors.js';
import type { AgentMetrics } from '../shared/metrics.js';
import { ABORTABLE_PHASES, type MigrationPhase, type MigrationStats } from '../shared/stats.js';
import { type controlService, grpc, pb, toServiceError } from '../shared/transport/grpc.js';
import { hostOf, isLoopbackHost } from '../shared/transport/tls.js';
import { type FaultInjection, faultHooks } from './faults.js';
import { checkGuestCapabilities } from './methods/capabilities.js';
import { createMethod } from './methods/registry.js';
import { type SourceOptions, SourceMigration } from './migration.js';

export interface ControlOptions {
  downtimeLimitMsDefault: number;
  maxDurationMsDefault: number;
  /** Jobs kept (finished ones are dropped oldest first past this). */
  jobsMax: number;
  /** Bandwidth cap of a migration that asks for none (0: unlimited). */
  maxBandwidthBytesPerSecDefault: number;
  /** Policy of a migration that names none. */
  nonConvergencePolicyDefault: NonConvergencePolicy;
  /** Honour fault injection in StartMigration (tests only). */
  allowFaultInjection: boolean;
  /** This agent runs without TLS: it migrates guests to loopback targets only. */
  plaintext: boolean;
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
type Job = InstanceType<typeof pb.Job>;

export class ControlService {
  private readonly jobs = new Map<string, SourceMigration>();

  constructor(
    private readonly driver: HypervisorDriver,
    private readonly sourceOptions: SourceOptions,
    readonly options: ControlOptions,
    private readonly log: Logger,
    private readonly metrics?: AgentMetrics,
  ) {
    metrics?.observeHost({
      guestStates: () => driver.listGuests().map((g) => g.state),
      memory: () => driver.capacity(),
    });
  }

  startMigration(req: InstanceType<typeof pb.StartMigrationRequest>): SourceMigration {
    const guest = this.driver.guest(req.guestId);
    if (!req.targetAddress) throw new InvalidArgumentError('targetAddress is required (host:port of the target agent)');
    if (this.options.plaintext && !isLoopbackHost(hostOf(req.targetAddress))) {
      throw new InvalidArgumentError(`this agent runs without TLS (tls.plaintext), so it migrates guests to loopback targets only, not to ${req.targetAddress}; configure mutual TLS`);
    }
    const method = createMethod(req.method || 'crtr');
    const policy = (req.nonConvergencePolicy || this.options.nonConvergencePolicyDefault) as NonConvergencePolicy;
    if (!NON_CONVERGENCE_POLICIES.includes(policy)) throw new InvalidArgumentError(`nonConvergencePolicy '${req.nonConvergencePolicy}': expected ${NON_CONVERGENCE_POLICIES.join(', ')}`);
    const downtimeLimitMs = req.downtimeLimitMs || this.options.downtimeLimitMsDefault;
    if (downtimeLimitMs < 1 || downtimeLimitMs > 600_000) throw new InvalidArgumentError(`downtimeLimitMs ${downtimeLimitMs}: expected 1 to 600000`);
    const maxDurationMs = req.maxDurationMs || this.options.maxDurationMsDefault;
    if (maxDurationMs < 100 || maxDurationMs > 24 * 3600_000) throw new InvalidArgumentError(`maxDurationMs ${maxDurationMs}: expected 100 ms to 24 h`);
    for (const job of this.jobs.values()) {
      if (job.request.guestId === req.guestId && !job.isOver()) throw new InvalidStateError(`guest '${req.guestId}' is already being migrated by job ${job.id}`);
    }
    if (guest.pagesMissing > 0) {
      throw new InvalidStateError(`guest '${req.guestId}' is still receiving ${guest.pagesMissing} pages of its own post-copy migration; try again when it has them`);
    }
    const bandwidth = req.maxBandwidthBytesPerSec || this.options.maxBandwidthBytesPerSecDefault;
    if (bandwidth !== 0 && (bandwidth < 125_000 || bandwidth > 1e12)) {
      throw new InvalidArgumentError(`maxBandwidthBytesPerSec ${bandwidth}: expected 0 (unlimited) or 125000 (1 Mbit/s) to 1e12`);
    }
    checkGuestCapabilities(method, guest, this.driver.name);
    if (guest.describe().state !== 'running') throw new InvalidStateError(`guest '${req.guestId}' is ${guest.describe().state}; only a running guest migrates`);
    let faults: FaultInjection | undefined;
    const f = req.faultInjection;
    if (f && (f.abortAtPhase || (f.corruptChunkIndex ?? 0) > 0 || (f.corruptUnitSequence ?? 0) > 0 || f.corruptCommitDigest)) {
      if (!this.options.allowFaultInjection) throw new InvalidArgumentError('fault injection is disabled on this agent (start it with --allow-fault-injection)');
      if (f.abortAtPhase && !ABORTABLE_PHASES.includes(f.abortAtPhase as MigrationPhase)) {
        throw new InvalidArgumentError(`abortAtPhase '${f.abortAtPhase}': expected one of ${ABORTABLE_PHASES.join(', ')}`);
      }
      faults = {
        abortAtPhase: (f.abortAtPhase || undefined) as MigrationPhase | undefined,
        corruptChunkIndex: (f.corruptChunkIndex ?? 0) > 0 ? (f.corruptChunkIndex ?? undefined) : undefined,
        corruptUnitSequence: (f.corruptUnitSequence ?? 0) > 0 ? (f.corruptUnitSequence ?? undefined) : undefined,
        corruptCommitDigest: f.corruptCommitDigest ?? false,
      };
    }
    this.pruneJobs();
    const job = new SourceMigration(
      guest,
      { guestId: req.guestId, targetAddress: req.targetAddress, method: method.name, downtimeLimitMs, maxBandwidthBytesPerSec: bandwidth, policy, maxDurationMs, disableCompression: req.disableCompression },
      this.sourceOptions,
      this.log,
      { hooks: faults === undefined ? undefined : faultHooks(faults) },
    );
    this.jobs.set(job.id, job);
    this.metrics?.trackOutgoing(job);
    this.log.info(
      { jobId: job.id, guestId: req.guestId, target: req.targetAddress, method: method.name, downtimeLimitMs, maxDurationMs, policy, faultInjection: faults !== undefined },
      'migration started',
    );
    void job.run();
    return job;
  }

  job(id: string): SourceMigration {
    const job = this.jobs.get(id);
    if (job === undefined) throw new NotFoundError(`no job '${id}' on this agent`);
    return job;
  }

  /** Cancels every job not yet committed (agent shutdown) and waits for them to end. */
  async shutdown(reason: string): Promise<void> {
    const running = [...this.jobs.values()].filter((j) => !j.isOver());
    for (const job of running) {
      try {
        job.cancel(reason);
      } catch {
        // Past its commit point: it finishes on its own.
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
    throw new LimitExceededError(`${this.jobs.size} jobs in progress, the limit is ${this.options.jobsMax}`);
  }

  handlers(): Handlers {
    const unaryHandler =
      <Req, Res>(fn: (req: Req) => Res | Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
      (call, callback) => {
        Promise.resolve()
          .then(() => fn(call.request))
          .then(
            (res) => callback(null, res),
            (error: unknown) => {
              if (!(error instanceof VmMigrateError)) this.log.error({ err: error }, 'unexpected error in a Control call');
              callback(toServiceError(error));
            },
          );
      };
    return {
      listGuests: unaryHandler(() => pb.ListGuestsResponse.create({ guests: this.driver.listGuests().map(guestMessage) })),
      startGuest: unaryHandler((req: InstanceType<typeof pb.StartGuestRequest>) => {
        if (this.driver.createGuest === undefined) throw new UnimplementedError(`driver '${this.driver.name}' does not start guests; start them with the hypervisor's own tools`);
        const guest = this.driver.createGuest({
          id: req.id || undefined,
          profile: req.profile,
          memoryBytes: req.memoryBytes,
          unitMs: req.unitMs || undefined,
          rates: Object.keys(req.rates ?? {}).length > 0 ? (req.rates as Record<string, number>) : undefined,
          environmentSeed: req.environmentSeed || undefined,
        });
        this.log.info({ guestId: guest.id, profile: req.profile, memoryBytes: req.memoryBytes }, 'guest started');
        return pb.StartGuestResponse.create({ guest: guestMessage(guest.describe()) });
      }),
      stopGuest: unaryHandler((req: InstanceType<typeof pb.StopGuestRequest>) => {
        const guest = this.driver.guest(req.id);
        for (const job of this.jobs.values()) {
          if (job.request.guestId === req.id && !job.isOver()) throw new InvalidStateError(`guest '${req.id}' is being migrated by job ${job.id}; cancel it first`);
        }
        guest.discard();
        this.log.info({ guestId: req.id }, 'guest stopped');
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
          // grpc-js sends the status of a server stream on 'error' (destroy() sends none).
          call.emit('error', toServiceError(error));
          return;
        }
        const intervalMs = Math.max(20, call.request.intervalMs || 200);
        // Progress and round events are skipped while the watcher has not read the previous ones
        // (a slow reader must not make us buffer without bound); phase and final events always go.
        let backlogged = false;
        call.on('drain', () => (backlogged = false));
        const send = (kind: string, message = '') => {
          if ((kind === 'progress' || kind === 'round') && backlogged) return;
          if (!call.write(pb.JobEvent.create({ job: jobMessage(job), kind, message }))) backlogged = true;
        };
        const onPhase = (phase: MigrationPhase) => send('phase', phase);
        const onRound = (what: string) => send('round', what);
        const timer = setInterval(() => send('progress'), intervalMs);
        const finish = () => {
          clearInterval(timer);
          job.off('phase', onPhase);
          job.off('round', onRound);
          const s = job.stats.status;
          send(s === 'completed' ? 'completed' : s === 'cancelled' ? 'cancelled' : 'failed', job.stats.error);
          call.end();
        };
        job.on('phase', onPhase);
        job.on('round', onRound);
        call.on('cancelled', () => {
          clearInterval(timer);
          job.off('phase', onPhase);
          job.off('round', onRound);
          job.off('end', finish);
        });
        send('progress');
        if (job.isOver()) finish();
        else job.once('end', finish);
      }) as grpc.handleServerStreamingCall<InstanceType<typeof pb.WatchJobRequest>, InstanceType<typeof pb.JobEvent>>,
    };
  }
}

export function jobMessage(job: SourceMigration): Job {
  const stats: MigrationStats = job.isOver() ? job.stats : job.refreshStats();
  return pb.Job.create({
    jobId: job.id,
    guestId: job.request.guestId,
    targetAddress: job.request.targetAddress,
    stats: { ...stats },
    startedAtMs: job.startedAtMs,
  });
}
