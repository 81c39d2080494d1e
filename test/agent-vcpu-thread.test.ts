// Migrations between two agents in this process whose guests run their vCPU on a thread of its own
// (--vcpu thread, the agents' default; the other agent tests pin --vcpu inline, see
// support/agents.ts): CR/TR with its checkpoint, deltas and log, and post-copy with its page faults,
// both complete with the target's digest equal to the source's and the guest running on the target.
import t from 'tap';
import { guestState, simGuest, sleep, startGuest, startTestAgent } from './support/agents.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';

const { JobState, Method, NonConvergencePolicy } = pb2;

for (const [name, method] of [
  ['CR/TR', Method.METHOD_CRTR],
  ['post-copy', Method.METHOD_POSTCOPY],
] as const) {
  t.test(`${name} of a web guest whose vCPU runs on its own thread`, async (t) => {
    const source = await startTestAgent(t, ['--vcpu', 'thread']);
    const target = await startTestAgent(t, ['--vcpu', 'thread']);
    await startGuest(source, 'vm-thread', 'web');
    const guest = simGuest(source, 'vm-thread');
    t.ok(guest.threaded, 'the source guest runs on its own thread');
    for (let i = 0; i < 100 && guest.runnerStats().unitsRun < 20; i++) await sleep(20);
    const client = makeClient(controlServiceV2, 'Control', source.address, grpc.credentials.createInsecure());
    t.teardown(() => client.close());
    const request = pb2.StartMigrationRequest.create({ guestId: 'vm-thread', targetAddress: target.address, method, nonConvergencePolicy: NonConvergencePolicy.NON_CONVERGENCE_POLICY_FORCE, maxDurationMs: 60_000 });
    const { jobId } = await unary(client, controlServiceV2.startMigration, request, 10_000, 'start migration');
    let job = await unary(client, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'get job');
    for (let i = 0; i < 1200 && job.state === JobState.JOB_STATE_RUNNING; i++) {
      await sleep(100);
      job = await unary(client, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'get job');
    }
    t.equal(job.state, JobState.JOB_STATE_SUCCEEDED, job.errorMessage ?? '');
    const s = job.source!;
    t.match(s.sourceDigest, /^[0-9a-f]{16}$/);
    t.equal(s.targetDigest, s.sourceDigest, 'digests equal');
    t.equal(await guestState(target, 'vm-thread'), 'running');
    t.equal(await guestState(source, 'vm-thread'), 'absent');
    const moved = simGuest(target, 'vm-thread');
    t.ok(moved.threaded, 'it runs on its own thread on the target too');
    const run = moved.runnerStats().unitsRun;
    for (let i = 0; i < 100 && moved.runnerStats().unitsRun === run; i++) await sleep(20);
    t.ok(moved.runnerStats().unitsRun > run, 'and keeps running there');
  });
}
