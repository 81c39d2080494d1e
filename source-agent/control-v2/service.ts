// The Control API v2 (proto/vmmigrate/v2/control.proto): guests with their roles, capacity with
// the methods the driver can carry, migrations started with typed requests, and jobs seen from
// both ends by one job id: outgoing ones (this agent is the source) and incoming ones (it is the
// target). Starting, cancelling and the checks behind them are the ones Control v1 applies
// (control-service.ts): v2 is another face of the same jobs.

import type { Logger } from 'pino';
import type { HypervisorDriver, SourceGuest } from '../../shared/driver/types.js';
import { AbortedError, echo, InvalidArgumentError, InvalidStateError, invalidField, LimitExceededError, NotFoundError, UnimplementedError, VmMigrateError } from '../../shared/errors.js';
import { checkGuestId, checkJobId } from '../../shared/ids.js';
import { type controlServiceV2, type grpc, pb, pb2, toServiceError } from '../../shared/transport/grpc.js';
import { hostOf, isLoopbackHost } from '../../shared/transport/tls.js';
import type { ControlService } from '../control-service.js';
import { METHOD_NAMES, createMethod } from '../methods/registry.js';
import { methodName, policyName, resolveActionName } from './enums.js';
import { capacityMessage, guestMessage, type GuestRoleOf, incomingJobMessage, sourceJobMessage } from './views.js';
import type { IncomingJobs } from '../../shared/incoming-job.js';
import { watchIncomingJob, watchSourceJob } from './watch.js';
import { failStream, unaryHandlers } from '../../shared/transport/handlers.js';
import { parseEstimateRequest } from '../estimate/estimator.js';
import { estimateMessage } from './estimate-view.js';
import { ProtectionControl, type StandbySide } from './protection.js';
import { gaugeView, outputsMessage, watchProtection } from './protection-reads.js';
import { consoleMessage } from './console.js';
import type { ProtectionGaugeView } from '../../shared/protection-metrics.js';
import type { Arbiter } from '../../shared/arbiter/index.js';

/** Memory of a StartGuest that asks for 0. */
const GUEST_MEMORY_BYTES_DEFAULT = 512 * 2 ** 20;
const GUEST_PROFILE_DEFAULT = 'idle';
const WATCH_INTERVAL_MS_DEFAULT = 200;
const WATCH_INTERVAL_MS_MIN = 20;
const WATCH_INTERVAL_MS_MAX = 60_000;
/** WatchJob streams open at once on one agent. */
const WATCHES_MAX = 256;


export interface ControlV2Options {
  /** Random at every start of the agent (Capacity.agent_instance_id). */
  agentInstanceId: string;
  /** host:port this agent listens on: a migration to it is refused at once. */
  listenAddress(): string;
}

type Handlers = { [K in keyof typeof controlServiceV2]: grpc.UntypedHandleCall };
type Req<K extends keyof typeof pb2> = (typeof pb2)[K] extends abstract new (...args: never) => infer T ? T : never;

export class ControlServiceV2 {
  private readonly protections: ProtectionControl;

  constructor(
    private readonly control: ControlService,
    private readonly incoming: IncomingJobs,
    private readonly driver: HypervisorDriver,
    private readonly options: ControlV2Options,
    private readonly log: Logger,
    /** The DR side's failover and drop (none: this agent keeps no standbys). */
    dr?: Pick<StandbySide, 'failover' | 'drop'>,
    arbiter: Arbiter | null = null,
  ) {
    const none = (guestId: string): never => {
      throw new NotFoundError(`no standby of guest '${echo(guestId)}' on this agent`, { reason: 'PROTECTION_NOT_FOUND', metadata: { guestId } });
    };
    const standbys: StandbySide = { list: () => incoming.list(), failover: dr?.failover ?? none, drop: dr?.drop ?? none };
    this.protections = new ProtectionControl(control, standbys, (address) => this.checkTargetAddress(address, 'dr_address'), log, arbiter);
  }

  /** The protections held here, as the metrics read them. */
  protectionGauges(): ProtectionGaugeView[] {
    return this.protections.list().map(gaugeView);
  }

  /** WatchJob streams open now. */
  private watches = 0;

  listGuests(): InstanceType<typeof pb2.ListGuestsResponse> {
    this.protections.checkTerms();
    const local = this.driver.listGuests();
    const guests = local.map((d) => {
      const message = guestMessage(d, this.roleOf(d.id));
      const runner = this.driver.guest(d.id).runnerStats?.();
      if (runner !== undefined) [message.unitsRun, message.stallMs, message.throttledMs, message.instructionsRun] = [runner.unitsRun, runner.stallMs, runner.throttledMs, runner.instructionsRun ?? 0];
      return message;
    });
    const here = new Set(local.map((d) => d.id));
    // Incoming guests not yet the driver's: their replicas, restoring or replaying.
    for (const job of this.incoming.list()) {
      if (job.state !== 'running' || here.has(job.guestId)) continue;
      const state = job.phase === 'reservation' || job.phase === 'checkpoint' ? 'restoring' : 'replica';
      const description = { id: job.guestId, driver: this.driver.name, memoryBytes: job.reservedMemoryBytes, vcpus: 0, unitMs: 0, state, machineConfig: new Uint8Array(0), summary: '' } as const;
      guests.push(guestMessage(description, { role: job.standby !== undefined && !job.standby.switchoverAsked ? 'standby' : 'migrating-in', jobId: job.jobId }));
    }
    return pb2.ListGuestsResponse.create({ guests });
  }

  /** Boots a guest and answers once it runs (a QEMU that fails at once is answered with why, leaving nothing). */
  async startGuest(req: Req<'StartGuestRequest'>): Promise<InstanceType<typeof pb2.StartGuestResponse>> {
    if (this.driver.createGuest === undefined) throw new UnimplementedError(`driver '${this.driver.name}' does not start guests; start them with the hypervisor's own tools`);
    // A driver without workloads (qemu) gets no profile unless the caller named one (which it refuses).
    const profile = req.profile || (this.driver.runsWorkloads === false ? '' : GUEST_PROFILE_DEFAULT);
    const guest = this.driver.createGuest({
      id: req.id || undefined,
      profile,
      memoryBytes: Number(req.memoryBytes) || GUEST_MEMORY_BYTES_DEFAULT,
      unitMs: req.unitMs || undefined,
      rates: Object.keys(req.rates ?? {}).length > 0 ? (req.rates as Record<string, number>) : undefined,
      environmentSeed: req.environmentSeed || undefined,
    });
    await guest.started;
    this.log.info({ guestId: guest.id, profile: profile || undefined }, 'guest started');
    return pb2.StartGuestResponse.create({ guest: guestMessage(guest.describe(), this.roleOf(guest.id)) });
  }

  /** Stops a guest and answers once it is gone: its hypervisor's process exited, its memory free. */
  async stopGuest(req: Req<'StopGuestRequest'>): Promise<InstanceType<typeof pb2.StopGuestResponse>> {
    checkGuestId(req.id, 'id');
    this.control.checkNotArriving(req.id, 'stop');
    const guest = this.guest(req.id, 'id');
    const role = this.roleOf(guest.id);
    if (role.role !== 'none') {
      throw new InvalidStateError(`guest '${guest.id}' is ${role.role.replace('-', ' ')} (job ${role.jobId}); cancel the job first`, { reason: 'GUEST_BUSY', metadata: { guestId: guest.id, jobId: role.jobId } });
    }
    await this.control.stopGuestNow(guest);
    return pb2.StopGuestResponse.create();
  }

  capacity(): InstanceType<typeof pb2.Capacity> {
    const capabilities = this.driver.capabilities;
    const methods = METHOD_NAMES.filter((name) => createMethod(name).needs.source.every((c) => capabilities.includes(c)));
    return capacityMessage(this.driver.capacity(), this.options.agentInstanceId, methods);
  }

  startMigration(req: Req<'StartMigrationRequest'>): InstanceType<typeof pb2.StartMigrationResponse> {
    checkGuestId(req.guestId, 'guest_id');
    this.checkTargetAddress(req.targetAddress);
    const job = this.control.startMigration(
      pb.StartMigrationRequest.create({
        guestId: req.guestId,
        targetAddress: req.targetAddress,
        method: methodName(req.method),
        downtimeLimitMs: req.downtimeLimitMs,
        maxBandwidthBytesPerSec: Number(req.maxBandwidthBytesPerSec),
        nonConvergencePolicy: policyName(req.nonConvergencePolicy),
        maxDurationMs: req.maxDurationMs,
        disableCompression: req.disableCompression,
        logOnlyCatchUp: req.logOnlyCatchUp,
        noFinalApproach: req.noFinalApproach,
        nativePostcopy: req.nativePostcopy,
      }),
    );
    return pb2.StartMigrationResponse.create({ jobId: job.id, job: sourceJobMessage(job, this.control.historyOf(job)) });
  }

  /** Samples the guest and the link, then predicts each method's cost; nothing moves. */
  async estimateMigration(req: Req<'EstimateMigrationRequest'>, signal: AbortSignal): Promise<InstanceType<typeof pb2.EstimateMigrationResponse>> {
    checkGuestId(req.guestId, 'guest_id');
    this.checkTargetAddress(req.targetAddress);
    const request = parseEstimateRequest(req, this.control.options);
    const result = await this.control.estimator.estimate(request, signal);
    const p = result.prediction;
    this.log.info({ guestId: req.guestId, target: req.targetAddress, recommended: p.recommended, elapsedMs: Math.round(result.elapsedMs) }, 'migration estimated');
    return estimateMessage(result);
  }

  getJob(req: Req<'GetJobRequest'>): InstanceType<typeof pb2.Job> {
    checkJobId(req.jobId, 'job_id');
    const outgoing = this.outgoing(req.jobId);
    if (outgoing !== undefined) return sourceJobMessage(outgoing, this.control.historyOf(outgoing));
    const incoming = this.incoming.get(req.jobId);
    if (incoming !== undefined) return incomingJobMessage(incoming);
    throw jobNotFound(req.jobId);
  }

  listJobs(req: Req<'ListJobsRequest'>): InstanceType<typeof pb2.ListJobsResponse> {
    const role = req.role;
    const jobs: Array<InstanceType<typeof pb2.Job>> = [];
    if (role !== pb2.JobRole.JOB_ROLE_TARGET) for (const job of this.control.listJobs()) jobs.push(sourceJobMessage(job, this.control.historyOf(job)));
    if (role !== pb2.JobRole.JOB_ROLE_SOURCE) for (const job of this.incoming.list()) jobs.push(incomingJobMessage(job));
    return pb2.ListJobsResponse.create({ jobs });
  }

  cancelJob(req: Req<'CancelJobRequest'>): InstanceType<typeof pb2.CancelJobResponse> {
    checkJobId(req.jobId, 'job_id');
    const job = this.outgoing(req.jobId);
    if (job === undefined) {
      if (this.incoming.get(req.jobId) !== undefined) {
        throw new InvalidStateError(`job '${req.jobId}' is incoming here; cancel it on its source agent`, { reason: 'PROTOCOL_VIOLATION', metadata: { jobId: req.jobId } });
      }
      throw jobNotFound(req.jobId);
    }
    job.cancel('cancelled by request');
    return pb2.CancelJobResponse.create({ job: sourceJobMessage(job, this.control.historyOf(job)) });
  }

  /** ResolveJob: an operator's action on an in-doubt job (see in-doubt.ts). */
  resolveJob(req: Req<'ResolveJobRequest'>): InstanceType<typeof pb2.ResolveJobResponse> {
    checkJobId(req.jobId, 'job_id');
    const action = resolveActionName(req.action);
    const job = this.outgoing(req.jobId);
    if (job === undefined) {
      if (this.incoming.get(req.jobId) !== undefined) {
        throw new InvalidStateError(`job '${req.jobId}' is incoming here; an in-doubt job is resolved on its source agent`, { reason: 'PROTOCOL_VIOLATION', metadata: { jobId: req.jobId } });
      }
      throw jobNotFound(req.jobId);
    }
    job.resolve(action, req.force === true);
    this.log.info({ jobId: req.jobId, action, force: req.force === true }, 'in-doubt job: operator action');
    return pb2.ResolveJobResponse.create({ job: sourceJobMessage(job, this.control.historyOf(job)) });
  }

  handlers(): Handlers {
    const unary = unaryHandlers(this.log, 'Control v2');
    return {
      listGuests: unary(() => this.listGuests()),
      startGuest: unary((req: Req<'StartGuestRequest'>) => this.startGuest(req)),
      stopGuest: unary((req: Req<'StopGuestRequest'>) => this.stopGuest(req)),
      getCapacity: unary(() => this.capacity()),
      startMigration: unary((req: Req<'StartMigrationRequest'>) => this.startMigration(req)),
      getJob: unary((req: Req<'GetJobRequest'>) => this.getJob(req)),
      listJobs: unary((req: Req<'ListJobsRequest'>) => this.listJobs(req)),
      cancelJob: unary((req: Req<'CancelJobRequest'>) => this.cancelJob(req)),
      resolveJob: unary((req: Req<'ResolveJobRequest'>) => this.resolveJob(req)),
      estimateMigration: this.estimateHandler(),
      protect: unary(async (req: Req<'ProtectRequest'>) => pb2.ProtectResponse.create({ protection: await this.protections.protect(req) })),
      unprotect: unary((req: Req<'UnprotectRequest'>) => pb2.UnprotectResponse.create({ protection: this.protections.unprotect(req) })),
      switchover: unary((req: Req<'SwitchoverRequest'>) => pb2.SwitchoverResponse.create({ protection: this.protections.switchover(req) })),
      failover: unary((req: Req<'FailoverRequest'>) => this.protections.failover(req)),
      getProtection: unary((req: Req<'GetProtectionRequest'>) => this.protections.get(req.guestId)),
      listProtections: unary(() => pb2.ListProtectionsResponse.create({ protections: this.protections.list() })),
      getOutputs: unary((req: Req<'GetOutputsRequest'>) => outputsMessage(this.guest(req.guestId, 'guest_id'), req)),
      getConsole: unary((req: Req<'GetConsoleRequest'>) => consoleMessage(this.guest(req.guestId, 'guest_id'), this.driver.name, req.maxBytes)),
      watchProtection: ((call: grpc.ServerWritableStream<Req<'WatchProtectionRequest'>, InstanceType<typeof pb2.Protection>>) => {
        try {
          const { guestId, intervalMs } = call.request;
          this.protections.get(guestId);
          if (intervalMs !== 0 && (intervalMs < WATCH_INTERVAL_MS_MIN || intervalMs > WATCH_INTERVAL_MS_MAX)) throw invalidField('interval_ms', `interval_ms ${intervalMs}: expected 0 (1000) or ${WATCH_INTERVAL_MS_MIN} to ${WATCH_INTERVAL_MS_MAX}`);
          this.countWatch(call);
          watchProtection(call, () => this.protections.get(guestId), intervalMs || 1_000);
        } catch (error) {
          failStream(call, error);
        }
      }) as grpc.handleServerStreamingCall<Req<'WatchProtectionRequest'>, InstanceType<typeof pb2.Protection>>,
      watchJob: ((call: grpc.ServerWritableStream<Req<'WatchJobRequest'>, InstanceType<typeof pb2.JobEvent>>) => {
        try {
          this.watch(call);
        } catch (error) {
          failStream(call, error);
        }
      }) as grpc.handleServerStreamingCall<Req<'WatchJobRequest'>, InstanceType<typeof pb2.JobEvent>>,
    };
  }

  private watch(call: grpc.ServerWritableStream<Req<'WatchJobRequest'>, InstanceType<typeof pb2.JobEvent>>): void {
    const { jobId, intervalMs: asked } = call.request;
    checkJobId(jobId, 'job_id');
    if (asked !== 0 && (asked < WATCH_INTERVAL_MS_MIN || asked > WATCH_INTERVAL_MS_MAX)) {
      throw invalidField('interval_ms', `interval_ms ${asked}: expected 0 (the default, ${WATCH_INTERVAL_MS_DEFAULT}) or ${WATCH_INTERVAL_MS_MIN} to ${WATCH_INTERVAL_MS_MAX}`);
    }
    const intervalMs = asked || WATCH_INTERVAL_MS_DEFAULT;
    const outgoing = this.outgoing(jobId);
    if (outgoing === undefined && this.incoming.get(jobId) === undefined) throw jobNotFound(jobId);
    this.countWatch(call);
    if (outgoing !== undefined) watchSourceJob(call, outgoing, this.control.historyOf(outgoing), intervalMs);
    else watchIncomingJob(call, () => this.incoming.get(jobId), intervalMs);
  }

  /** Each watch holds a timer and builds a message per event: a bounded number of them (WatchJob and WatchProtection). */
  private countWatch(call: { once(event: 'finish' | 'cancelled' | 'close', listener: () => void): unknown }): void {
    if (this.watches >= WATCHES_MAX) {
      throw new LimitExceededError(`${this.watches} watch streams open on this agent, the limit is ${WATCHES_MAX}; close one, or poll`, { metadata: { limit: WATCHES_MAX } });
    }
    this.watches++;
    let open = true;
    const closed = () => {
      if (open) this.watches--;
      open = false;
    };
    call.once('finish', closed);
    call.once('cancelled', closed);
    call.once('close', closed);
  }

  /** Refuses a missing target address, or this agent's own. */
  private checkTargetAddress(address: string, field = 'target_address'): void {
    if (!address) throw invalidField(field, `${field} is required (host:port of the target agent)`);
    if (sameAddress(address, this.options.listenAddress())) {
      throw new InvalidArgumentError(`${field} ${echo(address)} is this agent itself; migrate to another agent`, {
        reason: 'TARGET_IS_SELF',
        metadata: { targetAddress: address },
        fieldViolations: [{ field, description: 'this agent listens there' }],
      });
    }
  }

  /** EstimateMigration's handler: a caller that goes away cancels the sampling. */
  private estimateHandler(): grpc.handleUnaryCall<Req<'EstimateMigrationRequest'>, InstanceType<typeof pb2.EstimateMigrationResponse>> {
    return (call, callback) => {
      const cancel = new AbortController();
      call.once('cancelled', () => cancel.abort(new AbortedError('the caller cancelled the estimate')));
      this.estimateMigration(call.request, cancel.signal).then(
        (response) => callback(null, response),
        (error: unknown) => {
          if (!(error instanceof VmMigrateError)) this.log.error({ err: error }, 'unexpected error in a Control v2 call');
          callback(toServiceError(error));
        },
      );
    };
  }

  private outgoing(jobId: string) {
    try {
      return this.control.job(jobId);
    } catch (error) {
      if (error instanceof NotFoundError) return undefined;
      throw error;
    }
  }

  private guest(id: string, field: string): SourceGuest {
    checkGuestId(id, field);
    return this.driver.guest(id);
  }

  private roleOf(guestId: string): GuestRoleOf {
    const out = this.control.activeJobOf(guestId);
    if (out !== undefined) return { role: out.request.protection !== undefined && !out.switchingOver ? 'protected' : 'migrating-out', jobId: out.id };
    const incoming = this.incoming.activeFor(guestId);
    if (incoming !== undefined) return { role: incoming.standby !== undefined && !incoming.standby.switchoverAsked ? 'standby' : 'migrating-in', jobId: incoming.jobId };
    return { role: 'none', jobId: '' };
  }
}

function jobNotFound(jobId: string): NotFoundError {
  return new NotFoundError(`no job '${echo(jobId)}' on this agent`, { reason: 'JOB_NOT_FOUND', metadata: { jobId } });
}

/** Whether two host:port addresses name the same listener (loopback names and addresses alike). */
function sameAddress(a: string, b: string): boolean {
  const port = (address: string) => address.slice(address.lastIndexOf(':') + 1);
  if (port(a) !== port(b)) return false;
  const host = (address: string) => (isLoopbackHost(hostOf(address)) ? 'loopback' : hostOf(address).toLowerCase());
  return host(a) === host(b);
}
