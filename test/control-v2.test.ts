// The Control API v2 end to end, between two agents started in this process: typed requests and
// enums, a job seen from both ends by one id, a watch joined late that starts from a snapshot, a
// watch resumed after a sequence, byte counts that add up, guests with their roles and workload.
import t from 'tap';
import { type Agent, GUEST_BYTES, sleep, startTestAgent } from './support/agents.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';

type Job = InstanceType<typeof pb2.Job>;
type JobEvent = InstanceType<typeof pb2.JobEvent>;
const { Phase, JobState, JobRole, JobEventKind, Method, GuestRole, GuestState, NonConvergencePolicy } = pb2;

function v2(t: Parameters<typeof startTestAgent>[0], a: Agent): grpc.Client {
  const client = makeClient(controlServiceV2, 'Control', a.address, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  return client;
}

async function watch(client: grpc.Client, jobId: string, afterSequence = 0, onEvent: (e: JobEvent) => void = () => {}): Promise<JobEvent[]> {
  const m = controlServiceV2.watchJob;
  const call = client.makeServerStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, pb2.WatchJobRequest.create({ jobId, intervalMs: 50, afterSequence }));
  const timer = setTimeout(() => call.cancel(), 120_000);
  const events: JobEvent[] = [];
  try {
    for await (const event of call as AsyncIterable<JobEvent>) {
      events.push(event);
      onEvent(event);
    }
  } finally {
    clearTimeout(timer);
  }
  return events;
}

t.test('a CR/TR migration through Control v2: enums, both ends, a late watch, reconciled bytes', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  const src = v2(t, source);
  const dst = v2(t, target);

  const capacity = await unary(src, controlServiceV2.getCapacity, pb2.GetCapacityRequest.create(), 10_000, 'capacity');
  t.same(capacity.methods, [Method.METHOD_CRTR, Method.METHOD_PRECOPY, Method.METHOD_POSTCOPY], 'the sim driver carries every method');
  t.match(capacity.agentInstanceId, /^[0-9a-f-]{36}$/);

  const started = await unary(src, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'vm-v2', profile: 'web', memoryBytes: GUEST_BYTES }), 30_000, 'start guest');
  t.equal(started.guest?.state, GuestState.GUEST_STATE_RUNNING);
  t.equal(started.guest?.sim?.profile, 'web', 'the workload is a field, not a summary string');
  t.ok((started.guest?.sim?.rates?.packetsPerSec ?? 0) > 0, 'with its rates');
  await sleep(200);

  const { jobId, job: first } = await unary(
    src,
    controlServiceV2.startMigration,
    pb2.StartMigrationRequest.create({ guestId: 'vm-v2', targetAddress: target.address, nonConvergencePolicy: NonConvergencePolicy.NON_CONVERGENCE_POLICY_FORCE }),
    10_000,
    'start migration',
  );
  t.equal(first?.role, JobRole.JOB_ROLE_SOURCE);
  t.equal(first?.method, Method.METHOD_CRTR, 'UNSPECIFIED took the default method');

  // Watch the target's view and the source's while it runs.
  let targetSaw: Job | null = null;
  let rolesSeen = '';
  const done = watch(src, jobId, 0, (e) => {
    if (e.kind === JobEventKind.JOB_EVENT_KIND_PHASE && e.phase === Phase.PHASE_LOG_TRANSFER && targetSaw === null) {
      void unary(dst, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'target job').then((j) => (targetSaw = j));
      void unary(dst, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 10_000, 'target guests').then((g) => {
        const guest = g.guests.find((x) => x.id === 'vm-v2');
        rolesSeen = `${guest?.role}/${guest?.jobId}`;
      });
    }
  });
  const events = await done;
  t.equal(events[0].kind, JobEventKind.JOB_EVENT_KIND_SNAPSHOT, 'a watch starts with a snapshot');
  const last = events[events.length - 1];
  t.equal(last.kind, JobEventKind.JOB_EVENT_KIND_END);
  const job = last.job!;
  t.equal(job.state, JobState.JOB_STATE_SUCCEEDED, job.errorMessage ?? '');
  t.same(job.phasesPassed, [
    Phase.PHASE_PRE_MIGRATION,
    Phase.PHASE_RESERVATION,
    Phase.PHASE_CHECKPOINT,
    Phase.PHASE_LOG_TRANSFER,
    Phase.PHASE_STOP_AND_COPY,
    Phase.PHASE_COMMITMENT,
    Phase.PHASE_ACTIVATION,
    Phase.PHASE_DONE,
  ]);
  const sequences = events.filter((e) => e.kind !== JobEventKind.JOB_EVENT_KIND_PROGRESS && e.kind !== JobEventKind.JOB_EVENT_KIND_SNAPSHOT).map((e) => Number(e.sequence));
  t.same(sequences, sequences.map((_, i) => sequences[0] + i), 'kept events are numbered without gaps');

  const s = job.source!;
  t.equal(s.checkpointPercent, 100);
  const b = s.bytes!;
  const wireSum = Number(b.checkpoint!.wireBytes) + Number(b.log!.wireBytes) + Number(b.pages!.wireBytes) + Number(b.control!.wireBytes);
  t.equal(wireSum, Number(b.transferredBytes), 'the streams add up to the bytes transferred');
  t.ok(Number(b.checkpoint!.rawBytes) > 0 && Number(b.log!.wireBytes) > 0 && Number(b.control!.wireBytes) > 0);
  t.ok(s.crtr !== null && s.crtr !== undefined && s.precopy == null, 'CR/TR figures under CR/TR names');
  t.ok((s.crtr?.unitsReplayed ?? 0) > 0);
  // The guest's disruption, over the window from the start to the resume on the target.
  const d = s.disruption as InstanceType<typeof pb2.GuestDisruption>;
  t.ok(d.windowMs > s.downtimeMs! && d.windowMs <= s.totalTimeMs! + s.downtimeMs!, `window ${d.windowMs} ms: past the suspend, within the migration`);
  t.ok(Number(d.unitsDue) === Math.floor(d.windowMs / s.crtr!.unitMs!), `units due ${d.unitsDue} over the window`);
  t.ok(Number(d.unitsRun) > 0 && Number(d.unitsRun) <= Number(d.unitsDue) + 1, `units run ${d.unitsRun} of ${d.unitsDue} due`);
  t.equal(d.sourceStallMs, s.crtr!.stallMs, 'the stall the CR/TR figures show');
  t.equal(d.targetStallMs, 0, 'no page fetched on the target');
  const terms = s.downtimeMs! + d.sourceStallMs + d.targetStallMs + d.throttledMs + d.lostScheduleMs;
  t.ok(Math.abs(d.disruptionMs - terms) < 1e-6 && d.disruptionMs >= s.downtimeMs!, `disruption ${d.disruptionMs.toFixed(1)} ms = its terms, at least the downtime ${s.downtimeMs!.toFixed(1)} ms`);

  t.ok(targetSaw !== null, 'the target answered GetJob for the same job id');
  const seen = targetSaw as unknown as Job;
  t.equal(seen.role, JobRole.JOB_ROLE_TARGET);
  t.equal(seen.state, JobState.JOB_STATE_RUNNING);
  t.match(seen.target?.reservationId, /^[0-9a-f-]{36}$/);
  t.equal(rolesSeen, `${GuestRole.GUEST_ROLE_MIGRATING_IN}/${jobId}`, "the target's ListGuests shows the guest arriving");

  await sleep(100);
  const onTarget = await unary(dst, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'target job, after');
  t.equal(onTarget.state, JobState.JOB_STATE_SUCCEEDED, 'the target keeps the ended job');
  t.equal(onTarget.target?.activated, true);
  t.ok((onTarget.target?.unitsReplayed ?? 0) > 0);
  t.ok((onTarget.target?.memoryReadyMs ?? 0) > 0, `the replica's memory was ready ${onTarget.target?.memoryReadyMs} ms after the reservation`);
  const listed = await unary(dst, controlServiceV2.listJobs, pb2.ListJobsRequest.create({ role: JobRole.JOB_ROLE_TARGET }), 10_000, 'target jobs');
  t.same(listed.jobs.map((j) => j.jobId), [jobId]);

  // A watcher that joins after the end: the snapshot says everything, then the end.
  const late = await watch(src, jobId);
  t.same(late.map((e) => e.kind), [JobEventKind.JOB_EVENT_KIND_SNAPSHOT, JobEventKind.JOB_EVENT_KIND_END]);
  t.equal(late[0].job?.phasesPassed?.length, 8, 'the snapshot carries the phases passed');
  // A watcher that resumes after sequence 3 gets the kept events from 4 on, then the end.
  const resumed = await watch(src, jobId, 3);
  const replayed = resumed.slice(1).map((e) => Number(e.sequence));
  t.equal(replayed[0], 4, 'resumed right after the last sequence seen');
  t.equal(resumed[resumed.length - 1].kind, JobEventKind.JOB_EVENT_KIND_END);
});

t.test('Control v2 refuses impossible requests at once', async (t) => {
  const a = await startTestAgent(t);
  const client = v2(t, a);
  const refuse = async (request: Partial<InstanceType<typeof pb2.StartMigrationRequest>>, code: number, message: RegExp, what: string) => {
    const error = await unary(client, controlServiceV2.startMigration, pb2.StartMigrationRequest.create(request), 10_000, 'start').then(
      () => null,
      (e: unknown) => e as { code: string; message: string },
    );
    t.ok(error !== null, `${what}: refused`);
    t.match(error?.message, message, what);
    t.equal(error?.code, grpc.status[code], what);
    return error as unknown as { reason: string; fieldViolations?: Array<{ field: string }> };
  };
  await refuse({ targetAddress: '127.0.0.1:1' }, grpc.status.INVALID_ARGUMENT, /guest_id is required/, 'an empty guest id');
  await refuse({ guestId: 'vm-x' }, grpc.status.INVALID_ARGUMENT, /target_address is required/, 'an empty target');
  const self = await refuse({ guestId: 'vm-x', targetAddress: a.address }, grpc.status.INVALID_ARGUMENT, /is this agent itself/, 'the agent itself');
  t.equal(self.reason, 'TARGET_IS_SELF', 'the reason travels in the status details');
  t.same(self.fieldViolations?.map((v) => v.field), ['target_address']);
  await refuse({ guestId: 'nope', targetAddress: '127.0.0.1:1' }, grpc.status.NOT_FOUND, /no guest 'nope'/, 'an unknown guest');
  const stopped = await unary(client, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId: '' }), 10_000, 'job').catch((e: { code: string }) => e);
  t.equal((stopped as { code: string }).code, 'INVALID_ARGUMENT', 'GetJob without an id');
});

t.test('a failed migration as both ends show it: the reason on the source, the end on the target', async (t) => {
  const source = await startTestAgent(t, ['--allow-fault-injection']);
  const target = await startTestAgent(t);
  const src = v2(t, source);
  const dst = v2(t, target);
  await unary(src, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'vm-bad', memoryBytes: GUEST_BYTES }), 30_000, 'start guest');
  // Fault injection is a test facility of Control v1 only (it is not part of v2).
  const { controlService, pb } = await import('../shared/transport/grpc.js');
  const { jobId } = await unary(source.ctl, controlService.startMigration, pb.StartMigrationRequest.create({ guestId: 'vm-bad', targetAddress: target.address, faultInjection: { corruptChunkIndex: 2 } }), 10_000, 'start');
  const events = await watch(src, jobId);
  const job = events[events.length - 1].job!;
  t.equal(job.state, JobState.JOB_STATE_FAILED);
  t.match(job.errorMessage, /checkpoint chunk 2/);
  t.equal(job.phasesPassed?.at(-1), Phase.PHASE_DONE);
  await sleep(100);
  const onTarget = await unary(dst, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'target job');
  t.equal(onTarget.role, JobRole.JOB_ROLE_TARGET);
  t.equal(onTarget.state, JobState.JOB_STATE_FAILED);
  t.match(onTarget.errorMessage, /checkpoint chunk 2/, 'the target says why it dropped the replica');
  t.same(onTarget.phasesPassed, [Phase.PHASE_RESERVATION, Phase.PHASE_CHECKPOINT, Phase.PHASE_DONE]);
  const watched = await watch(dst, jobId);
  t.same(watched.map((e) => e.kind), [JobEventKind.JOB_EVENT_KIND_SNAPSHOT, JobEventKind.JOB_EVENT_KIND_END], 'a watch of an ended incoming job');
  const guests = await unary(dst, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 10_000, 'guests');
  t.same(guests.guests.map((g) => g.id), [], 'no replica left on the target');
});

t.test('0 means the default; a forced downtime over the limit is flagged on a successful job', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  const src = v2(t, source);
  const { guest } = await unary(src, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'vm-defaults' }), 30_000, 'start guest');
  t.equal(Number(guest?.memoryBytes), 512 * 2 ** 20, 'memory 0: 512 MiB');
  t.equal(guest?.sim?.profile, 'idle', 'profile empty: idle');
  t.equal(guest?.unitMs, 10, "unit 0: the agent's default");
  await unary(src, controlServiceV2.stopGuest, pb2.StopGuestRequest.create({ id: 'vm-defaults' }), 10_000, 'stop');
  await unary(src, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'vm-tight', memoryBytes: GUEST_BYTES, profile: 'web' }), 30_000, 'start guest');
  // A 1 ms limit no switchover can meet: the force policy stops and copies anyway, and says so.
  const { jobId } = await unary(
    src,
    controlServiceV2.startMigration,
    pb2.StartMigrationRequest.create({ guestId: 'vm-tight', targetAddress: target.address, downtimeLimitMs: 1, nonConvergencePolicy: NonConvergencePolicy.NON_CONVERGENCE_POLICY_FORCE }),
    10_000,
    'start migration',
  );
  const events = await watch(src, jobId);
  const job = events[events.length - 1].job!;
  t.equal(job.state, JobState.JOB_STATE_SUCCEEDED, job.errorMessage ?? '');
  t.ok((job.source?.downtimeMs ?? 0) > 1, `downtime ${job.source?.downtimeMs} ms`);
  // The reservation (the target makes the replica's memory ready) is its own figure, part of setup and total time.
  const reservationMs = job.source?.reservationMs ?? 0;
  t.ok(reservationMs > 0 && reservationMs <= (job.source?.setupTimeMs ?? 0), `reservation ${reservationMs} ms within setup ${job.source?.setupTimeMs} ms`);
  t.equal(job.source?.downtimeLimitExceeded, true);
  t.equal(job.errorReason, pb2.ErrorReason.DOWNTIME_LIMIT_EXCEEDED, 'the reason says the limit was exceeded');
});

t.test('a cancelled migration is cancelled on both ends', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  const src = v2(t, source);
  const dst = v2(t, target);
  await unary(src, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'vm-cancel', memoryBytes: GUEST_BYTES, profile: 'web' }), 30_000, 'start guest');
  // 4 MB/s: the 64 MiB checkpoint takes long enough to cancel it part-way.
  const { jobId } = await unary(src, controlServiceV2.startMigration, pb2.StartMigrationRequest.create({ guestId: 'vm-cancel', targetAddress: target.address, maxBandwidthBytesPerSec: 4_000_000 }), 10_000, 'start');
  let cancelled = false;
  const events = await watch(src, jobId, 0, (e) => {
    if (!cancelled && e.phase === Phase.PHASE_CHECKPOINT) {
      cancelled = true;
      void unary(src, controlServiceV2.cancelJob, pb2.CancelJobRequest.create({ jobId }), 10_000, 'cancel');
    }
  });
  t.ok(cancelled, 'cancelled during the checkpoint');
  t.equal(events[events.length - 1].job?.state, JobState.JOB_STATE_CANCELLED);
  t.equal(events[events.length - 1].job?.errorReason, pb2.ErrorReason.CANCELLED);
  await sleep(100);
  const onTarget = await unary(dst, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'target job');
  t.equal(onTarget.state, JobState.JOB_STATE_CANCELLED, 'the target says cancelled, not failed');
  t.match(onTarget.errorMessage, /^cancelled by the source: cancelled by request$/);
  const incoming = await unary(dst, controlServiceV2.cancelJob, pb2.CancelJobRequest.create({ jobId }), 10_000, 'cancel on target').catch((e: { code: string; message: string }) => e);
  t.match((incoming as { message: string }).message, /is incoming here; cancel it on its source agent/);
});
