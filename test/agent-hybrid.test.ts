// CR/TR's hybrid catch-up end to end, between two agents started in this process: a checkpoint
// slowed by a bandwidth limit leaves a backlog of seconds, while the guest (web, busier than its
// profile, with a working set of 5% of its memory: it replays at most 1.7x guest speed) dirtied
// far fewer pages than that backlog takes to replay, so the source sends delta checkpoints; the migration completes with equal digests, every recorded unit
// replayed or superseded, and each delta shown as a round event. The same migration with the
// log-only catch-up sends none.
import t, { type Test } from 'tap';
import { type Agent, GUEST_BYTES, sleep, startTestAgent } from './support/agents.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';

type Job = InstanceType<typeof pb2.Job>;
type JobEvent = InstanceType<typeof pb2.JobEvent>;
const { JobState, JobEventKind, NonConvergencePolicy } = pb2;

function v2(t: Test, a: Agent): grpc.Client {
  const client = makeClient(controlServiceV2, 'Control', a.address, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  return client;
}

async function migrate(t: Test, logOnlyCatchUp: boolean): Promise<{ job: Job; rounds: string[] }> {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  const src = v2(t, source);
  await unary(src, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'vm-h', profile: 'web', memoryBytes: GUEST_BYTES, rates: { busyFraction: 0.6, workingSetFraction: 0.05 } }), 30_000, 'start guest');
  await sleep(300);
  const { jobId } = await unary(
    src,
    controlServiceV2.startMigration,
    pb2.StartMigrationRequest.create({
      guestId: 'vm-h',
      targetAddress: target.address,
      // About 4 s of checkpoint: a backlog of ~400 units when it is restored.
      maxBandwidthBytesPerSec: 8_000_000,
      nonConvergencePolicy: NonConvergencePolicy.NON_CONVERGENCE_POLICY_FORCE,
      maxDurationMs: 90_000,
      logOnlyCatchUp,
    }),
    10_000,
    'start migration',
  );
  const m = controlServiceV2.watchJob;
  const call = src.makeServerStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, pb2.WatchJobRequest.create({ jobId, intervalMs: 100 }));
  const timer = setTimeout(() => call.cancel(), 120_000);
  const rounds: string[] = [];
  let job: Job | null = null;
  try {
    for await (const event of call as AsyncIterable<JobEvent>) {
      if (event.kind === JobEventKind.JOB_EVENT_KIND_ROUND) rounds.push(event.message);
      job = event.job as Job;
    }
  } finally {
    clearTimeout(timer);
  }
  if (job === null) throw new Error('no job event');
  return { job, rounds };
}

t.test('hybrid catch-up: delta checkpoints while the guest runs, then the log', async (t) => {
  const { job, rounds } = await migrate(t, false);
  t.equal(job.state, JobState.JOB_STATE_SUCCEEDED, job.errorMessage ?? '');
  const s = job.source!;
  const c = s.crtr!;
  const [deltaRounds, superseded, replayed, recorded] = [c.deltaRounds ?? 0, c.unitsSuperseded ?? 0, c.unitsReplayed ?? 0, c.unitsRecorded ?? 0];
  t.comment(`downtime ${s.downtimeMs?.toFixed(0)} ms, deltas ${c.deltaRounds} (${c.deltaPages} pages, ${c.deltaWireBytes} B), superseded ${c.unitsSuperseded}, forced ${c.forced}`);
  t.ok(c.hybrid, 'the hybrid catch-up was on (both sides make deltas)');
  t.ok(deltaRounds >= 1, `at least one delta (${deltaRounds}; events: ${rounds.slice(0, 4).join(' | ')})`);
  t.ok(Number(c.deltaPages) > 0 && Number(c.deltaWireBytes) > 0, 'the deltas carried pages');
  t.ok(superseded > 0, `units superseded by the deltas (${superseded})`);
  t.equal(replayed + superseded, recorded, 'every recorded unit was replayed or superseded');
  t.equal(c.remainingUnits, 0);
  t.equal(s.targetDigest, s.sourceDigest, 'digests equal');
  const deltas = rounds.filter((r) => r.startsWith('delta '));
  t.equal(deltas.length, deltaRounds, 'one round event per delta');
  t.match(deltas[0], /^delta 1 of \d+ pages as of unit \d+: delta: backlog \d+ ms of guest time/, 'the event says why');
  t.ok(
    rounds.some((r) => (r.startsWith('round ') && / stop granted$/.test(r)) || /^final approach: \d+ units not replayed \(a steady log has \d+\): stop-and-copy$/.test(r)) || c.forced,
    'the switchover went through the log (a granted stop request, or the final approach\'s stop), unless forced',
  );
});

t.test('log-only catch-up: no delta', async (t) => {
  const { job, rounds } = await migrate(t, true);
  t.equal(job.state, JobState.JOB_STATE_SUCCEEDED, job.errorMessage ?? '');
  const c = job.source!.crtr!;
  t.notOk(c.hybrid);
  t.equal(c.deltaRounds, 0);
  t.equal(c.unitsSuperseded, 0);
  t.equal(c.unitsReplayed, c.unitsRecorded);
  t.notOk(rounds.some((r) => r.startsWith('delta ') || r.startsWith('catch-up')), 'no catch-up decision events');
});
