// The guest-disruption figure end to end, between two agents started in this process and read
// through Control v2: a post-copy guest that stalls on its pages after the resume, and a CR/TR
// guest that stalls on its copy-on-write pool during the checkpoint, both report more than their
// downtime.
import t from 'tap';
import { MiB, simGuest, sleep, startGuest, startTestAgent, type Agent } from './support/agents.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';

type Job = InstanceType<typeof pb2.Job>;
type Disruption = InstanceType<typeof pb2.GuestDisruption>;
const { JobState, Method, NonConvergencePolicy } = pb2;

/** Starts a migration by Control v2 and polls GetJob until it ends; returns the job at the end. */
async function migrate(t: Parameters<typeof startTestAgent>[0], source: Agent, target: Agent, guestId: string, method: number): Promise<Job> {
  const client = makeClient(controlServiceV2, 'Control', source.address, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  const request = pb2.StartMigrationRequest.create({ guestId, targetAddress: target.address, method, nonConvergencePolicy: NonConvergencePolicy.NON_CONVERGENCE_POLICY_FORCE, maxDurationMs: 60_000 });
  const { jobId } = await unary(client, controlServiceV2.startMigration, request, 10_000, 'start migration');
  for (let i = 0; i < 1200; i++) {
    const job = await unary(client, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'get job');
    if (job.state !== JobState.JOB_STATE_RUNNING && job.state !== JobState.JOB_STATE_CANCELLING) return job;
    await sleep(100);
  }
  throw new Error(`job ${jobId} did not end in 120 s`);
}

t.test('a post-copy migration of a busy guest: disruption over the downtime, from the page waits on the target', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  await startGuest(source, 'vm-busy', 'compile');
  await sleep(200);
  const job = await migrate(t, source, target, 'vm-busy', Method.METHOD_POSTCOPY);
  t.equal(job.state, JobState.JOB_STATE_SUCCEEDED, job.errorMessage ?? '');
  const s = job.source!;
  const d = s.disruption as Disruption;
  t.comment(`post-copy: downtime ${s.downtimeMs!.toFixed(1)} ms, disruption ${d.disruptionMs.toFixed(1)} ms (target waits ${d.targetStallMs.toFixed(1)} ms, lost schedule ${d.lostScheduleMs.toFixed(1)} ms, ${d.unitsRun}/${d.unitsDue} units)`);
  t.ok(d.targetStallMs > 0, `the guest waited ${d.targetStallMs.toFixed(1)} ms for pages on the target`);
  t.ok(d.disruptionMs > s.downtimeMs!, `disruption ${d.disruptionMs.toFixed(1)} ms > downtime ${s.downtimeMs!.toFixed(1)} ms`);
  t.ok(d.disruptionMs >= s.downtimeMs! + d.targetStallMs, 'at least the downtime and the waits');
  // The window reaches past the resume, to the last page: units ran on the target.
  t.ok(d.windowMs > s.downtimeMs! && Number(d.unitsRun) > 0, `window ${d.windowMs.toFixed(0)} ms, ${d.unitsRun} units run`);
  t.ok((s.postcopy?.demandPages ?? 0) > 0, 'pages were fetched on demand');
});

t.test('a CR/TR migration whose copy-on-write pool fills: the stall is reported and counted', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  await startGuest(source, 'vm-cow', 'mmuncher');
  // A pool of 256 pages, where one mmuncher unit writes hundreds: the guest stalls until the
  // checkpoint has sent the pages it preserved.
  simGuest(source, 'vm-cow').options.cowBytesMax = 1 * MiB;
  await sleep(200);
  const job = await migrate(t, source, target, 'vm-cow', Method.METHOD_CRTR);
  t.equal(job.state, JobState.JOB_STATE_SUCCEEDED, job.errorMessage ?? '');
  const s = job.source!;
  const d = s.disruption as Disruption;
  t.comment(`CR/TR: downtime ${s.downtimeMs!.toFixed(1)} ms, disruption ${d.disruptionMs.toFixed(1)} ms (stall ${d.sourceStallMs.toFixed(1)} ms, lost schedule ${d.lostScheduleMs.toFixed(1)} ms, ${d.unitsRun}/${d.unitsDue} units)`);
  t.ok(d.sourceStallMs > 0, `the guest stalled ${d.sourceStallMs.toFixed(1)} ms on its copy-on-write pool`);
  t.equal(s.crtr?.stallMs, Math.round(d.sourceStallMs), 'the CR/TR figures show the same stall');
  t.ok(d.disruptionMs >= s.downtimeMs! + d.sourceStallMs, `disruption ${d.disruptionMs.toFixed(1)} ms counts the downtime and the stall`);
  t.ok(d.disruptionMs > s.downtimeMs!, 'more than the downtime');
});
