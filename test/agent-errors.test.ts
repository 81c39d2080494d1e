// Errors as a client of a real agent sees them: the status code, and the google.rpc.Status in
// the grpc-status-details-bin trailer (error.metadata), decoded with the generated google.rpc
// types as any client would. And the reason a failed job gives in its statistics, and a guest that
// is arriving by migration answered as busy (not missing) on its target.
import { randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { type Agent, GUEST_BYTES, startGuest, startMigration, startTestAgent, sleep } from './support/agents.js';
import { controlService, controlServiceV2, grpc, makeClient, pb, pb2, rpc, unary } from '../shared/transport/grpc.js';

type Method = (typeof controlService)[keyof typeof controlService];

/** The error a unary call ends with, unmapped: as grpc-js hands it to any client. */
function failedCall(a: Agent, method: Method, request: unknown): Promise<grpc.ServiceError> {
  return new Promise((resolve, reject) => {
    const m = method as grpc.MethodDefinition<unknown, unknown>;
    a.ctl.makeUnaryRequest(m.path, m.requestSerialize, m.responseDeserialize, request, { deadline: new Date(Date.now() + 10_000) }, (error) => {
      if (error) resolve(error);
      else reject(new Error(`${m.path} succeeded; expected it to fail`));
    });
  });
}

/** The error a server stream ends with. */
function failedStream(a: Agent, method: Method, request: unknown): Promise<grpc.ServiceError> {
  return new Promise((resolve, reject) => {
    const m = method as grpc.MethodDefinition<unknown, unknown>;
    const call = a.ctl.makeServerStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, request, { deadline: new Date(Date.now() + 10_000) });
    call.on('data', () => {});
    call.on('error', resolve);
    call.on('end', () => reject(new Error(`${m.path} ended without an error`)));
  });
}

/** ErrorInfo and BadRequest from the trailer of `error`. */
function details(error: grpc.ServiceError) {
  const [bytes] = error.metadata.get('grpc-status-details-bin');
  if (!Buffer.isBuffer(bytes)) throw new Error(`no grpc-status-details-bin on ${error.message}`);
  const status = rpc.Status.decode(bytes);
  const any = (name: string) => status.details.find((d) => d.type_url === `type.googleapis.com/google.rpc.${name}`)?.value;
  const info = any('ErrorInfo');
  const badRequest = any('BadRequest');
  return {
    status,
    info: info ? rpc.ErrorInfo.decode(info) : undefined,
    fieldViolations: badRequest ? rpc.BadRequest.decode(badRequest).fieldViolations.map((v) => ({ field: v.field, description: v.description })) : [],
  };
}

/** INVALID_ARGUMENT with reason INVALID_FIELD and one field violation, on `field`. */
function expectInvalidField(t: Test, error: grpc.ServiceError, field: string, what: string): void {
  t.equal(error.code, grpc.status.INVALID_ARGUMENT, `${what}: INVALID_ARGUMENT (got ${grpc.status[error.code]}: ${error.details.slice(0, 200)})`);
  const d = details(error);
  t.equal(d.status.code, grpc.status.INVALID_ARGUMENT, `${what}: Status.code`);
  t.equal(d.info?.reason, 'INVALID_FIELD', `${what}: reason`);
  t.equal(d.info?.domain, 'vmmigrate', `${what}: domain`);
  t.same(
    d.fieldViolations.map((v) => v.field),
    [field],
    `${what}: the field violation names ${field}`,
  );
  t.equal(d.fieldViolations[0]?.description, error.details, `${what}: described as the message says`);
}

async function jobWhenOver(a: Agent, jobId: string, timeoutMs = 60_000): Promise<InstanceType<typeof pb.MigrationStats>> {
  const until = performance.now() + timeoutMs;
  for (;;) {
    const job = await unary(a.ctl, controlService.getJob, pb.GetJobRequest.create({ jobId }), 10_000, 'get');
    const s = job.stats!;
    if (s.status === 'completed' || s.status === 'failed' || s.status === 'cancelled') return s as InstanceType<typeof pb.MigrationStats>;
    if (performance.now() > until) throw new Error(`job ${jobId} still ${s.status} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

t.test('an empty guest id is INVALID_ARGUMENT with a field violation, not NOT_FOUND', async (t) => {
  const a = await startTestAgent(t);
  expectInvalidField(t, await failedCall(a, controlService.startMigration, pb.StartMigrationRequest.create({ guestId: '', targetAddress: '127.0.0.1:1' })), 'guest_id', 'StartMigration');
  expectInvalidField(t, await failedCall(a, controlService.stopGuest, pb.StopGuestRequest.create({ id: '' })), 'id', 'StopGuest');
  expectInvalidField(t, await failedCall(a, controlService.getJob, pb.GetJobRequest.create({ jobId: '' })), 'job_id', 'GetJob');
  expectInvalidField(t, await failedCall(a, controlService.cancelJob, pb.CancelJobRequest.create({ jobId: '' })), 'job_id', 'CancelJob');
  expectInvalidField(t, await failedStream(a, controlService.watchJob, pb.WatchJobRequest.create({ jobId: '' })), 'job_id', 'WatchJob');
});

t.test('an unknown job is NOT_FOUND, JOB_NOT_FOUND, with the job id in the metadata', async (t) => {
  const a = await startTestAgent(t);
  const jobId = randomUUID();
  for (const [what, error] of [
    ['GetJob', await failedCall(a, controlService.getJob, pb.GetJobRequest.create({ jobId }))],
    ['CancelJob', await failedCall(a, controlService.cancelJob, pb.CancelJobRequest.create({ jobId }))],
    ['WatchJob', await failedStream(a, controlService.watchJob, pb.WatchJobRequest.create({ jobId }))],
  ] as const) {
    t.equal(error.code, grpc.status.NOT_FOUND, `${what}: NOT_FOUND`);
    t.equal(error.details, `no job '${jobId}' on this agent`, `${what}: message`);
    const d = details(error);
    t.equal(d.info?.reason, 'JOB_NOT_FOUND', `${what}: reason`);
    t.same(d.info?.metadata, { jobId }, `${what}: metadata`);
    t.same(d.fieldViolations, [], `${what}: no field violation`);
  }
  const guest = await failedCall(a, controlService.startMigration, pb.StartMigrationRequest.create({ guestId: 'no-such-guest', targetAddress: '127.0.0.1:1' }));
  t.equal(guest.code, grpc.status.NOT_FOUND);
  t.equal(details(guest).info?.reason, 'GUEST_NOT_FOUND');
  t.same(details(guest).info?.metadata, { guestId: 'no-such-guest' });
});

t.test('a 10 KB id: INVALID_ARGUMENT with a short message, never RESOURCE_EXHAUSTED', async (t) => {
  const a = await startTestAgent(t);
  const id = 'g'.repeat(10 * 1024);
  const cases: Array<[string, Promise<grpc.ServiceError>, string]> = [
    ['StartMigration', failedCall(a, controlService.startMigration, pb.StartMigrationRequest.create({ guestId: id, targetAddress: '127.0.0.1:1' })), 'guest_id'],
    ['StopGuest', failedCall(a, controlService.stopGuest, pb.StopGuestRequest.create({ id })), 'id'],
    ['StartGuest', failedCall(a, controlService.startGuest, pb.StartGuestRequest.create({ id, profile: 'idle', memoryBytes: GUEST_BYTES })), 'id'],
    ['GetJob', failedCall(a, controlService.getJob, pb.GetJobRequest.create({ jobId: id })), 'job_id'],
  ];
  for (const [what, call, field] of cases) {
    const error = await call;
    expectInvalidField(t, error, field, what);
    t.ok(error.details.length < 1100, `${what}: a message of ${error.details.length} characters`);
    const trailerBytes = (error.metadata.get('grpc-status-details-bin')[0] as Buffer).length;
    t.ok(trailerBytes < 2048, `${what}: status details of ${trailerBytes} bytes`);
  }
});

t.test('request checks name their field: StartMigration, StartGuest, WatchJob', async (t) => {
  const a = await startTestAgent(t);
  await startGuest(a, 'vm-fields', 'idle');
  const start = (request: Partial<InstanceType<typeof pb.StartMigrationRequest>>) => failedCall(a, controlService.startMigration, pb.StartMigrationRequest.create({ guestId: 'vm-fields', targetAddress: '127.0.0.1:1', ...request }));
  expectInvalidField(t, await start({ targetAddress: '' }), 'target_address', 'no target');
  expectInvalidField(t, await start({ method: 'teleport' }), 'method', 'unknown method');
  expectInvalidField(t, await start({ nonConvergencePolicy: 'pray' }), 'non_convergence_policy', 'unknown policy');
  expectInvalidField(t, await start({ downtimeLimitMs: 600_001 }), 'downtime_limit_ms', 'downtime limit');
  expectInvalidField(t, await start({ maxDurationMs: 99 }), 'max_duration_ms', 'maximum duration');
  expectInvalidField(t, await start({ maxBandwidthBytesPerSec: 10 }), 'max_bandwidth_bytes_per_sec', 'bandwidth');
  expectInvalidField(t, await start({ faultInjection: { abortAtPhase: 'checkpoint' } }), 'fault_injection', 'fault injection not allowed');
  expectInvalidField(t, await start({ method: 'precopy', noFinalApproach: true }), 'no_final_approach', "CR/TR's switch with pre-copy");
  expectInvalidField(t, await start({ method: 'postcopy', logOnlyCatchUp: true }), 'log_only_catch_up', "CR/TR's switch with post-copy");
  const startGuestWith = (request: Partial<InstanceType<typeof pb.StartGuestRequest>>) => failedCall(a, controlService.startGuest, pb.StartGuestRequest.create({ profile: 'idle', memoryBytes: GUEST_BYTES, ...request }));
  expectInvalidField(t, await startGuestWith({ profile: 'nope' }), 'profile', 'StartGuest profile');
  expectInvalidField(t, await startGuestWith({ memoryBytes: 1 }), 'memory_bytes', 'StartGuest memory');
  expectInvalidField(t, await startGuestWith({ unitMs: 1000 }), 'unit_ms', 'StartGuest unit');
  expectInvalidField(t, await startGuestWith({ rates: { bogus: 1 } }), 'rates', 'StartGuest rates');
  expectInvalidField(t, await startGuestWith({ id: 'has space' }), 'id', 'StartGuest id');

  const exists = await failedCall(a, controlService.startGuest, pb.StartGuestRequest.create({ id: 'vm-fields', profile: 'idle', memoryBytes: GUEST_BYTES }));
  t.equal(exists.code, grpc.status.ALREADY_EXISTS);
  t.match(details(exists).info, { reason: 'GUEST_EXISTS', metadata: { guestId: 'vm-fields' } });

  const jobId = await startMigration(a, { guestId: 'vm-fields', targetAddress: '127.0.0.1:1', maxDurationMs: 60_000 });
  expectInvalidField(t, await failedStream(a, controlService.watchJob, pb.WatchJobRequest.create({ jobId, intervalMs: 2 ** 32 - 1 })), 'interval_ms', 'WatchJob interval');
  await jobWhenOver(a, jobId);
});

t.test("a failed job's statistics give its reason: CAPACITY_REFUSED, MAX_DURATION_EXCEEDED", async (t) => {
  const source = await startTestAgent(t);
  const small = await startTestAgent(t, ['--memory-mib', '32']);
  await startGuest(source, 'vm-big', 'idle');
  const refused = await jobWhenOver(source, await startMigration(source, { guestId: 'vm-big', targetAddress: small.address, maxDurationMs: 60_000 }));
  t.equal(refused.status, 'failed');
  t.equal(refused.errorCode, 'RESOURCE_EXHAUSTED');
  t.equal(refused.errorReason, 'CAPACITY_REFUSED');

  // A checkpoint that cannot finish in time: 64 MiB at 1 Mbit/s against a 500 ms maximum.
  const target = await startTestAgent(t);
  await startGuest(source, 'vm-slow', 'idle');
  const slow = await jobWhenOver(source, await startMigration(source, { guestId: 'vm-slow', targetAddress: target.address, maxDurationMs: 500, maxBandwidthBytesPerSec: 125_000 }));
  t.equal(slow.status, 'failed');
  t.equal(slow.errorCode, 'DEADLINE_EXCEEDED');
  t.equal(slow.errorReason, 'MAX_DURATION_EXCEEDED', 'the maximum duration, not non-convergence');
  t.match(slow.error, /^migration ran \d+ ms, its maximum is 500 ms \(still in the checkpoint phase\)$/);

  // While a job runs, its guest is busy.
  await startGuest(source, 'vm-busy', 'idle');
  const jobId = await startMigration(source, { guestId: 'vm-busy', targetAddress: target.address, maxDurationMs: 60_000, maxBandwidthBytesPerSec: 125_000 });
  const busy = await failedCall(source, controlService.stopGuest, pb.StopGuestRequest.create({ id: 'vm-busy' }));
  t.equal(busy.code, grpc.status.FAILED_PRECONDITION);
  t.match(details(busy).info, { reason: 'GUEST_BUSY', metadata: { guestId: 'vm-busy', jobId } });
  const cancelled = await unary(source.ctl, controlService.cancelJob, pb.CancelJobRequest.create({ jobId }), 10_000, 'cancel');
  t.equal(cancelled.job?.jobId, jobId);
  const s = await jobWhenOver(source, jobId);
  t.equal(s.status, 'cancelled');
  t.equal(s.errorReason, 'CANCELLED');
});

t.test('a guest arriving here exists but is not this agent\'s yet: stop and migrate answer FAILED_PRECONDITION naming the incoming job, in v1 and v2', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  const onward = await startTestAgent(t);
  const v2 = makeClient(controlServiceV2, 'Control', target.address, grpc.credentials.createInsecure());
  t.teardown(() => v2.close());
  await startGuest(source, 'vm-arriving', 'idle');
  // 64 MiB at 1 Mbit/s: the checkpoint lasts long enough to ask.
  const jobId = await startMigration(source, { guestId: 'vm-arriving', targetAddress: target.address, maxDurationMs: 60_000, maxBandwidthBytesPerSec: 125_000 });
  for (let i = 0; i < 200; i++) {
    const { jobs } = await unary(v2, controlServiceV2.listJobs, pb2.ListJobsRequest.create(), 10_000, 'jobs');
    if (jobs.some((j) => j.jobId === jobId)) break;
    await sleep(25);
  }
  const busy = { code: 'FAILED_PRECONDITION', reason: 'GUEST_BUSY', metadata: { guestId: 'vm-arriving', jobId }, message: new RegExp(`guest 'vm-arriving' is arriving here by migration job ${jobId}`) };
  const v1Stop = await failedCall(target, controlService.stopGuest, pb.StopGuestRequest.create({ id: 'vm-arriving' }));
  t.equal(v1Stop.code, grpc.status.FAILED_PRECONDITION, `v1 StopGuest: FAILED_PRECONDITION (${v1Stop.details})`);
  t.match(details(v1Stop).info, { reason: 'GUEST_BUSY', metadata: { guestId: 'vm-arriving', jobId } }, 'naming the incoming job');
  const v1Migrate = await failedCall(target, controlService.startMigration, pb.StartMigrationRequest.create({ guestId: 'vm-arriving', targetAddress: onward.address }));
  t.equal(v1Migrate.code, grpc.status.FAILED_PRECONDITION, `v1 StartMigration: FAILED_PRECONDITION (${v1Migrate.details})`);
  t.match(details(v1Migrate).info, { reason: 'GUEST_BUSY', metadata: { jobId } });
  await t.rejects(unary(v2, controlServiceV2.stopGuest, pb2.StopGuestRequest.create({ id: 'vm-arriving' }), 10_000, 'stop'), busy, 'v2 StopGuest');
  await t.rejects(unary(v2, controlServiceV2.startMigration, pb2.StartMigrationRequest.create({ guestId: 'vm-arriving', targetAddress: onward.address }), 10_000, 'migrate'), busy, 'v2 StartMigration');
  await t.rejects(unary(v2, controlServiceV2.stopGuest, pb2.StopGuestRequest.create({ id: 'vm-nowhere' }), 10_000, 'stop'), { code: 'NOT_FOUND' }, 'a guest neither here nor arriving is still NOT_FOUND');
  await unary(source.ctl, controlService.cancelJob, pb.CancelJobRequest.create({ jobId }), 10_000, 'cancel');
  t.equal((await jobWhenOver(source, jobId)).status, 'cancelled');
});
