// EstimateMigration end to end, between two agents started in this process on loopback: it
// answers with measured inputs and per-method predictions, moves nothing, and refuses what it
// cannot do with precise statuses; a target without the bandwidth probe, and the probe's bounds.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { type Agent, GUEST_BYTES, MiB, sleep, startTestAgent } from './support/agents.js';
import { controlServiceV2, createServer, deadline, grpc, makeClient, migrationService, pb, pb2, unary } from '../shared/transport/grpc.js';
import { PROBE_BYTES_MAX } from '../shared/protocol.js';

const { Method, InputSource, JobState } = pb2;
type EstimateRequest = Partial<InstanceType<typeof pb2.EstimateMigrationRequest>>;
/** A message with every field present (proto3 fills them in on decode). */
type Full<T> = { [K in keyof T]-?: NonNullable<T[K]> };

function v2(t: Parameters<typeof startTestAgent>[0], a: Agent): grpc.Client {
  const client = makeClient(controlServiceV2, 'Control', a.address, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  return client;
}

const estimate = (client: grpc.Client, request: EstimateRequest) =>
  unary(client, controlServiceV2.estimateMigration, pb2.EstimateMigrationRequest.create({ sampleMs: 500, probeBytes: 2 * MiB, ...request }), 60_000, 'estimate');

async function startGuest(client: grpc.Client, id: string, profile: string): Promise<void> {
  await unary(client, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id, profile, memoryBytes: GUEST_BYTES }), 30_000, 'start guest');
}

t.test('an idle guest over loopback: measured inputs, every method predicted, CR/TR converges', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  const src = v2(t, source);
  await startGuest(src, 'vm-idle', 'idle');
  await sleep(200);
  const res = await estimate(src, { guestId: 'vm-idle', targetAddress: target.address });

  const g = res.guest as Full<InstanceType<typeof pb2.GuestMeasurements>>;
  t.equal(Number(g.memoryBytes), GUEST_BYTES);
  t.equal(g.dirtyWindows.length, 2, 'two windows: 250 ms and the 500 ms period');
  t.ok(Number(g.dirtyWindows[1].windowMs) > Number(g.dirtyWindows[0].windowMs), 'each longer than the one before');
  t.ok(g.sampleMs >= 500, `sampled ${g.sampleMs} ms`);
  t.ok(g.sampledPages > 0 && g.nonZeroFraction > 0 && g.nonZeroFraction <= 1, `${g.sampledPages} pages sampled, ${g.nonZeroFraction} not zero`);
  t.ok(g.pageWireRatio > 0 && g.pageWireRatio <= 1.01, `lz4 ratio ${g.pageWireRatio}`);
  t.equal(g.dirtySource, InputSource.INPUT_SOURCE_MEASURED);
  t.equal(g.busySource, InputSource.INPUT_SOURCE_MEASURED);
  t.equal(g.logSource, InputSource.INPUT_SOURCE_MODELLED, 'the log rate is modelled, and says so');
  t.ok(g.logBytesPerSec > 0 && g.replayRate > 1, `log ${g.logBytesPerSec} B/s, replay ${g.replayRate}x`);

  const l = res.link as Full<InstanceType<typeof pb2.LinkMeasurements>>;
  t.ok(l.rttMs > 0, `round trip ${l.rttMs} ms`);
  t.equal(l.rttSamples, 5);
  t.equal(Number(l.probeBytes), 2 * MiB, 'the target received the whole probe');
  t.equal(l.bandwidthSource, InputSource.INPUT_SOURCE_MEASURED);
  t.ok(l.measuredBandwidthBytesPerSec > 1e6, `measured ${(l.measuredBandwidthBytesPerSec / 1e6).toFixed(0)} MB/s`);
  t.equal(l.bandwidthBytesPerSec, l.measuredBandwidthBytesPerSec, 'no cap: the measured link is used');

  t.same(res.methods.map((m) => m.method), [Method.METHOD_CRTR, Method.METHOD_CRTR, Method.METHOD_PRECOPY, Method.METHOD_POSTCOPY]);
  t.same(res.methods.map((m) => m.logOnlyCatchUp), [false, true, false, false], 'CR/TR hybrid (both make deltas), then log-only for comparison');
  type Estimate = Full<InstanceType<typeof pb2.MethodEstimate>>;
  const crtr = res.methods[0] as Estimate;
  t.ok(crtr.available && crtr.converges, crtr.reason);
  t.ok(crtr.downtimeMs > 0 && crtr.downtimeMs < 300, `CR/TR downtime ${crtr.downtimeMs} ms`);
  t.ok(crtr.totalTimeMs > crtr.downtimeMs && Number.isFinite(crtr.totalTimeMs));
  t.ok(crtr.transferredBytes > 0 && crtr.transferredBytes < GUEST_BYTES * 1.1, `CR/TR ${crtr.transferredBytes} bytes`);
  t.ok(res.methods.every((m) => m.available), 'the sim driver carries every method at both ends');
  t.not(res.recommendedMethod, Method.METHOD_UNSPECIFIED, res.recommendationReason ?? '');
  t.equal(res.downtimeLimitMs, 300, "the agent's default limit");

  // Nothing moved: no job, and the guest still runs here.
  const jobs = await unary(src, controlServiceV2.listJobs, pb2.ListJobsRequest.create(), 10_000, 'jobs');
  t.same(jobs.jobs, [], 'no job was started');
  const onTarget = await unary(v2(t, target), controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 10_000, 'guests');
  t.same(onTarget.guests, [], 'nothing was reserved on the target');
});

t.test('a web guest dirties pages; the bandwidth cap limits the link used', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  const src = v2(t, source);
  await startGuest(src, 'vm-web', 'web');
  const res = await estimate(src, { guestId: 'vm-web', targetAddress: target.address, maxBandwidthBytesPerSec: 1_000_000, downtimeLimitMs: 100 });
  const g = res.guest as Full<InstanceType<typeof pb2.GuestMeasurements>>;
  t.ok(Number(g.dirtyWindows?.at(-1)?.pages) > 0, `${g.dirtyWindows?.at(-1)?.pages} pages dirtied in ${g.dirtyWindows?.at(-1)?.windowMs} ms`);
  t.ok(g.dirtyPagesPerSec > 0 && Number(g.workingSetPages) > 0);
  t.equal(res.link?.bandwidthBytesPerSec, 1_000_000, 'the cap is below the measured link');
  t.equal(res.downtimeLimitMs, 100);
  const postcopy = res.methods[3] as Full<InstanceType<typeof pb2.MethodEstimate>>;
  t.ok(postcopy.disruptionMs > postcopy.downtimeMs, `post-copy faults: ${postcopy.reason}`);
});

t.test('EstimateMigration refuses what it cannot do, with precise statuses', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  const src = v2(t, source);
  await startGuest(src, 'vm-r', 'idle');
  const refuse = async (request: EstimateRequest, code: string, message: RegExp, what: string) => {
    const error = (await estimate(src, request).then(
      () => null,
      (e: unknown) => e,
    )) as { code: string; message: string; reason: string; fieldViolations?: Array<{ field: string }> } | null;
    t.ok(error !== null, `${what}: refused`);
    t.equal(error?.code, code, what);
    t.match(error?.message, message, what);
    return error!;
  };
  await refuse({ guestId: 'nope', targetAddress: target.address }, 'NOT_FOUND', /no guest 'nope'/, 'an unknown guest');
  const bad = await refuse({ guestId: 'vm-r', targetAddress: target.address, sampleMs: 100 }, 'INVALID_ARGUMENT', /sample_ms 100/, 'a sample too short');
  t.same(bad.fieldViolations?.map((v) => v.field), ['sample_ms']);
  const probe = await refuse({ guestId: 'vm-r', targetAddress: target.address, probeBytes: PROBE_BYTES_MAX + 1 }, 'INVALID_ARGUMENT', /probe_bytes/, 'a probe too large');
  t.same(probe.fieldViolations?.map((v) => v.field), ['probe_bytes']);
  const limit = await refuse({ guestId: 'vm-r', targetAddress: target.address, downtimeLimitMs: 700_000 }, 'INVALID_ARGUMENT', /downtimeLimitMs 700000/, 'a limit out of range');
  t.same(limit.fieldViolations?.map((v) => v.field), ['downtime_limit_ms']);
  await refuse({ guestId: 'vm-r' }, 'INVALID_ARGUMENT', /target_address is required/, 'no target');
  const self = await refuse({ guestId: 'vm-r', targetAddress: source.address }, 'INVALID_ARGUMENT', /this agent itself/, 'the agent itself');
  t.equal(self.reason, 'TARGET_IS_SELF');
  const down = await refuse({ guestId: 'vm-r', targetAddress: '127.0.0.1:1' }, 'UNAVAILABLE', /capacity of the target 127\.0\.0\.1:1/, 'an unreachable target');
  t.equal(down.reason, 'PEER_UNAVAILABLE');

  // While an estimate samples the guest, neither a second estimate nor a migration of it starts.
  const running = estimate(src, { guestId: 'vm-r', targetAddress: target.address, sampleMs: 3000 });
  await sleep(500);
  const twice = await refuse({ guestId: 'vm-r', targetAddress: target.address }, 'FAILED_PRECONDITION', /already being estimated/, 'a second estimate');
  t.equal(twice.reason, 'GUEST_BUSY');
  const migrate = await unary(src, controlServiceV2.startMigration, pb2.StartMigrationRequest.create({ guestId: 'vm-r', targetAddress: target.address }), 10_000, 'migrate').catch((e: unknown) => e as { code: string; reason: string });
  t.match(migrate, { code: 'FAILED_PRECONDITION', reason: 'GUEST_BUSY' }, 'a migration waits for the estimate');
  await running;

  // And a guest being migrated is not estimated.
  const { jobId } = await unary(src, controlServiceV2.startMigration, pb2.StartMigrationRequest.create({ guestId: 'vm-r', targetAddress: target.address }), 10_000, 'migrate');
  const busy = await refuse({ guestId: 'vm-r', targetAddress: target.address }, 'FAILED_PRECONDITION', /being migrated by job/, 'a guest being migrated');
  t.equal(busy.reason, 'GUEST_BUSY');
  for (let i = 0; i < 600; i++) {
    const job = await unary(src, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'job');
    if (job.state !== JobState.JOB_STATE_RUNNING) break;
    await sleep(100);
  }
});

t.test('a target without the bandwidth probe: the bandwidth is the configured one, and says so', async (t) => {
  const source = await startTestAgent(t);
  const src = v2(t, source);
  await startGuest(src, 'vm-old', 'idle');
  // An older target: GetCapacity only.
  const server = createServer();
  const capacity = pb.Capacity.create({ driver: 'sim', memoryBytesTotal: 4096 * MiB, memoryBytesFree: 4096 * MiB, protocolVersion: 1, agentInstanceId: 'old-agent' });
  server.addService({ getCapacity: migrationService.getCapacity }, { getCapacity: (_call: unknown, callback: grpc.sendUnaryData<typeof capacity>) => callback(null, capacity) });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  t.teardown(() => server.forceShutdown());
  const res = await estimate(src, { guestId: 'vm-old', targetAddress: `127.0.0.1:${port}`, maxBandwidthBytesPerSec: 12_500_000 });
  const l = res.link as Full<InstanceType<typeof pb2.LinkMeasurements>>;
  t.equal(l.bandwidthSource, InputSource.INPUT_SOURCE_CONFIGURED);
  t.equal(l.bandwidthBytesPerSec, 12_500_000);
  t.equal(l.measuredBandwidthBytesPerSec, 0);
  t.match(l.note, /does not offer the bandwidth probe/);
  t.ok(l.rttMs > 0, 'the round trip is still measured');
  t.ok(res.methods.every((m) => m.available), 'a target that reports no capabilities is not held to any');
});

t.test("the target bounds a probe's bytes", async (t) => {
  const target = await startTestAgent(t);
  const client = makeClient(migrationService, 'Migration', target.address, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  const m = migrationService.probe;
  const chunk = randomBytes(4 * MiB);
  const error = await new Promise<grpc.ServiceError | null>((resolve) => {
    const call = client.makeClientStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, { deadline: deadline(60_000) }, (e) => resolve(e));
    const send = (left: number): void => {
      if (left <= 0) return void call.end();
      if (call.write(pb.ProbeData.create({ data: chunk }))) send(left - 1);
      else call.once('drain', () => send(left - 1));
    };
    send(PROBE_BYTES_MAX / (4 * MiB) + 2);
  });
  t.equal(error?.code, grpc.status.RESOURCE_EXHAUSTED, error?.details ?? "");
  t.match(error?.details, /bandwidth probe of more than 67108864 bytes/);
});
