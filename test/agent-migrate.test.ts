// End-to-end live migrations between two agents started in this process, driven only through the
// Control API (StartGuest, StartMigration, WatchJob, ListGuests): every workload profile once, and
// a guest migrated there and back.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { type Agent, GUEST_BYTES, guestState, MiB, sleep, startGuest, startMigration, startTestAgent } from './support/agents.js';
import { PROFILE_NAMES } from '../shared/driver/sim/profiles.js';
import { controlService, pb, unary } from '../shared/transport/grpc.js';

const ALL_PHASES = ['pre-migration', 'reservation', 'checkpoint', 'log-transfer', 'stop-and-copy', 'commitment', 'activation', 'done'];

type Job = InstanceType<typeof pb.Job>;
type Stats = InstanceType<typeof pb.MigrationStats>;
type JobEvent = InstanceType<typeof pb.JobEvent>;



/** Follows a job with WatchJob until the server ends the stream; returns the last job and the event kinds. */
async function watchJob(a: Agent, jobId: string, timeoutMs = 120_000): Promise<{ job: Job; kinds: string[]; phases: string[]; rounds: string[] }> {
  const m = controlService.watchJob;
  const call = a.ctl.makeServerStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, pb.WatchJobRequest.create({ jobId, intervalMs: 100 }));
  const timer = setTimeout(() => call.cancel(), timeoutMs);
  const kinds: string[] = [];
  const phases: string[] = [];
  const rounds: string[] = [];
  let job: Job | null = null;
  try {
    for await (const event of call as AsyncIterable<JobEvent>) {
      kinds.push(event.kind);
      if (event.kind === 'phase') phases.push(event.message);
      if (event.kind === 'round') rounds.push(event.message);
      job = event.job as Job;
    }
  } finally {
    clearTimeout(timer);
  }
  if (job === null) throw new Error(`WatchJob ${jobId} ended without an event`);
  return { job, kinds, phases, rounds };
}


/** The assertions every completed migration must pass. */
function checkCompleted(t: Test, s: Stats, what: string): void {
  t.equal(s.status, 'completed', `${what}: status (error: ${s.error})`);
  t.equal(s.phase, 'done', `${what}: phase`);
  t.equal(s.error, '', `${what}: no error`);
  t.equal(s.errorCode, '', `${what}: no error code`);
  t.equal(s.errorReason, '', `${what}: no error reason`);
  t.match(s.sourceDigest, /^[0-9a-f]{16}$/, `${what}: source digest is 16 hex digits`);
  t.equal(s.targetDigest, s.sourceDigest, `${what}: target digest equals the source's`);
  t.ok(s.downtimeMs > 0, `${what}: downtime ${s.downtimeMs} ms > 0`);
  t.ok(s.totalTimeMs > 0, `${what}: total time ${s.totalTimeMs} ms > 0`);
  t.ok(s.checkpointWireBytes > 0, `${what}: checkpoint wire bytes ${s.checkpointWireBytes} > 0`);
  t.ok(s.transferredBytes > s.checkpointWireBytes, `${what}: transferred ${s.transferredBytes} B > checkpoint on the wire ${s.checkpointWireBytes} B`);
  t.equal(s.checkpointMemoryBytesCovered, GUEST_BYTES, `${what}: the checkpoint covered all guest memory`);
  t.equal(s.memoryBytes, GUEST_BYTES, `${what}: memory bytes`);
  t.ok(s.unitsReplayed > 0, `${what}: units replayed ${s.unitsReplayed} > 0`);
  t.equal(s.unitsReplayed + s.unitsSuperseded, s.unitsRecorded, `${what}: every recorded unit was replayed or superseded by a delta (recorded ${s.unitsRecorded}, replayed ${s.unitsReplayed}, superseded ${s.unitsSuperseded})`);
  t.equal(s.remainingUnits, 0, `${what}: no unit left`);
}

for (const profile of PROFILE_NAMES) {
  t.test(`migrates a running 64 MiB '${profile}' guest`, async (t) => {
    const source = await startTestAgent(t);
    const target = await startTestAgent(t);
    const id = `vm-${profile}`;
    await startGuest(source, id, profile);
    t.equal(await guestState(source, id), 'running', 'the guest runs on the source');
    await sleep(200);
    const jobId = await startMigration(source, {
      guestId: id,
      targetAddress: target.address,
      downtimeLimitMs: 300,
      // The CPU-bound profiles share this process's one thread with the transfer and the replay.
      nonConvergencePolicy: 'force',
      maxDurationMs: 60_000,
    });
    const { job, kinds, phases, rounds } = await watchJob(source, jobId);
    const s = job.stats as Stats;
    t.comment(
      `${profile}: downtime ${s.downtimeMs.toFixed(1)} ms, total ${s.totalTimeMs.toFixed(0)} ms, ${(s.transferredBytes / MiB).toFixed(1)} MiB, ` +
        `units ${s.unitsRecorded}/${s.unitsReplayed}, rounds ${s.rounds}, forced ${s.forced}`,
    );
    t.equal(job.jobId, jobId);
    t.equal(job.guestId, id);
    t.equal(job.targetAddress, target.address);
    t.equal(kinds[kinds.length - 1], 'completed', 'the last event says completed');
    // The first phases may pass before WatchJob subscribes: what it saw is a tail of the seven, in order.
    const first = ALL_PHASES.indexOf(phases[0] ?? '');
    t.ok(first >= 0 && first <= ALL_PHASES.indexOf('log-transfer'), `the watch saw the phases from log-transfer on at least (${phases.join(', ')})`);
    t.same(phases, ALL_PHASES.slice(first), 'the phases in order, each once');
    checkCompleted(t, s, profile);
    t.equal(s.method, 'crtr');
    // Each stop request the target made is a round event; the last one agreed (unless forced, or
    // the final approach stopped the guest once the replica drained). The hybrid catch-up's
    // decisions are round events too: by replay, or a delta; and the final approach's steps.
    const stops = rounds.filter((r) => /^round \d+:/.test(r));
    const approach = rounds.filter((r) => /^(final approach|stop-and-copy forced)/.test(r));
    const catchUps = rounds.filter((r) => !/^round \d+:/.test(r) && !approach.includes(r));
    const byApproach = /^final approach: \d+ units not replayed \(a steady log has \d+\): stop-and-copy$/.test(approach.at(-1) ?? '');
    // A stop forced by the policy, or made by a final approach the convergence monitor began (a
    // backlog that did not shrink), may come before the target asked for one (a loaded machine, mmuncher).
    const unasked = s.forced || (byApproach && approach.some((r) => r.startsWith('final approach (non-convergence)')));
    t.ok((stops.length > 0 || unasked) && stops.length <= s.rounds, `round events (${stops.length}) for the ${s.rounds} stop requests${s.forced ? ', forced' : ''}${byApproach ? ', stopped by the final approach' : ''}`);
    if (!s.forced && !byApproach) t.match(stops.at(-1) ?? '', /^round \d+: the target has \d+ units to replay; stop granted$/, 'the last round granted the stop');
    t.ok(
      approach.every((r) => /^(final approach \((stop request|non-convergence)\): \d+ units not replayed|final approach: \d+ units not replayed|final approach ran out after|stop-and-copy forced: )/.test(r)),
      `final approach events say what they did (${approach.join(' | ')})`,
    );
    t.ok(
      catchUps.every((r) => /^(catch-up by replay: |delta \d+ of \d+ pages as of unit \d+: delta: )/.test(r)),
      `catch-up events name their way and reason (${catchUps.length}: ${catchUps.slice(0, 3).join(' | ')})`,
    );
    t.equal(catchUps.filter((r) => r.startsWith('delta ')).length, s.deltaRounds, 'one event per delta round');

    t.equal(await guestState(target, id), 'running', 'the guest runs on the target');
    t.equal(await guestState(source, id), 'absent', 'the guest is gone from the source');

    // GetJob agrees with the stream's last event.
    const again = await unary(source.ctl, controlService.getJob, pb.GetJobRequest.create({ jobId }), 10_000, 'getting the job');
    t.equal(again.stats?.status, 'completed', 'GetJob: completed');
    t.equal(again.stats?.sourceDigest, s.sourceDigest, 'GetJob: same digest');

    // The source host freed the guest's memory; the target holds it.
    const sourceCapacity = await unary(source.ctl, controlService.getCapacity, pb.GetCapacityRequest.create(), 10_000, 'capacity');
    const targetCapacity = await unary(target.ctl, controlService.getCapacity, pb.GetCapacityRequest.create(), 10_000, 'capacity');
    t.equal(sourceCapacity.memoryBytesReserved, 0, 'source: nothing reserved');
    t.equal(targetCapacity.memoryBytesReserved, GUEST_BYTES, 'target: the guest memory');
  });
}

t.test('a migrated guest migrates back to its first host', async (t) => {
  const a = await startTestAgent(t);
  const b = await startTestAgent(t);
  const id = 'vm-back';
  await startGuest(a, id, 'web');
  await sleep(200);

  const there = await watchJob(a, await startMigration(a, { guestId: id, targetAddress: b.address, downtimeLimitMs: 300, nonConvergencePolicy: 'force', maxDurationMs: 60_000 }));
  checkCompleted(t, there.job.stats as Stats, 'a -> b');
  t.equal(await guestState(b, id), 'running', 'runs on b');
  t.equal(await guestState(a, id), 'absent', 'gone from a');

  // The guest keeps running on b (its digest moves on), then b migrates it back.
  const thereDigest = (there.job.stats as Stats).targetDigest;
  await sleep(300);
  t.not(b.agent.driver.guest(id).digest(), thereDigest, 'the activated guest runs on b');

  const back = await watchJob(b, await startMigration(b, { guestId: id, targetAddress: a.address, downtimeLimitMs: 300, nonConvergencePolicy: 'force', maxDurationMs: 60_000 }));
  const s = back.job.stats as Stats;
  checkCompleted(t, s, 'b -> a');
  t.not(s.sourceDigest, thereDigest, 'the guest ran on b between the two migrations');
  t.equal(await guestState(a, id), 'running', 'runs on a again');
  t.equal(await guestState(b, id), 'absent', 'gone from b');

  // b's job list has the outgoing job; a's has the first one.
  const jobsOfA = await unary(a.ctl, controlService.listJobs, pb.ListJobsRequest.create(), 10_000, 'jobs');
  const jobsOfB = await unary(b.ctl, controlService.listJobs, pb.ListJobsRequest.create(), 10_000, 'jobs');
  t.same(
    jobsOfA.jobs.map((j) => [j.jobId, j.stats?.status]),
    [[there.job.jobId, 'completed']],
  );
  t.same(
    jobsOfB.jobs.map((j) => [j.jobId, j.stats?.status]),
    [[back.job.jobId, 'completed']],
  );
});

t.test("the agent's --unit-ms is the unit length of guests started without one", async (t) => {
  const a = await startTestAgent(t, ['--unit-ms', '20']);
  const started = await unary(a.ctl, controlService.startGuest, pb.StartGuestRequest.create({ id: 'vm-units', profile: 'idle', memoryBytes: GUEST_BYTES }), 30_000, 'start');
  t.equal(started.guest?.description?.unitMs, 20, 'the default comes from --unit-ms 20');
  const explicit = await unary(a.ctl, controlService.startGuest, pb.StartGuestRequest.create({ id: 'vm-units-5', profile: 'idle', memoryBytes: GUEST_BYTES, unitMs: 5 }), 30_000, 'start');
  t.equal(explicit.guest?.description?.unitMs, 5, 'an explicit unit length wins');
});

t.test('activation hooks run on the target after the guest resumes, with its ids', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmmigrate-hook-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const out = join(dir, 'hook.txt');
  const source = await startTestAgent(t);
  const target = await startTestAgent(t, ['--activation-hook', `echo "$VMMIGRATE_GUEST_ID $VMMIGRATE_MIGRATION_ID" > ${out}`, 'exit 3']);
  await startGuest(source, 'vm-hook', 'idle');
  const jobId = await startMigration(source, { guestId: 'vm-hook', targetAddress: target.address, downtimeLimitMs: 300, nonConvergencePolicy: 'force', maxDurationMs: 60_000 });
  const { job } = await watchJob(source, jobId);
  // A failing hook is reported and logged; the guest runs on the target regardless.
  checkCompleted(t, job.stats as Stats, 'with hooks');
  const written = readFileSync(out, 'utf8').trim().split(' ');
  t.equal(written[0], 'vm-hook', 'the hook saw the guest id');
  t.match(written[1], /^[0-9a-f-]{36}$/, 'and the migration id');
  t.equal(await guestState(target, 'vm-hook'), 'running');
});

t.test('the pre-copy baseline migrates through the same agents, digests equal', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  await startGuest(source, 'vm-pre', 'web');
  await sleep(200);
  const { job, rounds } = await watchJob(source, await startMigration(source, { guestId: 'vm-pre', targetAddress: target.address, method: 'precopy', downtimeLimitMs: 300, maxDurationMs: 60_000 }));
  const s = job.stats as Stats;
  t.equal(s.status, 'completed', `status (error: ${s.error})`);
  t.equal(s.method, 'precopy');
  t.match(s.sourceDigest, /^[0-9a-f]{16}$/);
  t.equal(s.targetDigest, s.sourceDigest, 'digests equal');
  t.ok(s.rounds >= 1 && s.rounds <= 31, `rounds ${s.rounds} within Xen's bound`);
  t.equal(rounds.length, s.rounds, 'one round event per pre-copy round');
  t.match(rounds[0] ?? '', /^pre-copy round 1: \d+ pages dirtied meanwhile/);
  t.equal(s.unitsRecorded, 0, 'no log units');
  t.ok(s.transferredBytes >= s.checkpointWireBytes && s.checkpointWireBytes > 0);
  t.equal(await guestState(target, 'vm-pre'), 'running');
  t.equal(await guestState(source, 'vm-pre'), 'absent');
});

t.test('the post-copy baseline migrates through the same agents: the guest resumes at once, digests equal', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  await startGuest(source, 'vm-post', 'web');
  await sleep(200);
  const { job, phases } = await watchJob(source, await startMigration(source, { guestId: 'vm-post', targetAddress: target.address, method: 'postcopy', maxDurationMs: 60_000 }));
  const s = job.stats as Stats;
  t.equal(s.status, 'completed', `status (error: ${s.error})`);
  t.equal(s.method, 'postcopy');
  t.ok(phases.includes('page-push'), `pages pushed after activation (${phases.join(', ')})`);
  t.match(s.sourceDigest, /^[0-9a-f]{16}$/);
  t.equal(s.targetDigest, s.sourceDigest, 'the pages as received and the state at resume hash to the source digest at suspend');
  t.ok(s.demandPages > 0, `the running guest fetched ${s.demandPages} pages on demand`);
  t.equal(s.checkpointMemoryBytesCovered, GUEST_BYTES, 'every page was sent once');
  t.ok(s.downtimeMs > 0 && s.totalTimeMs > s.downtimeMs);
  t.equal(await guestState(target, 'vm-post'), 'running');
  t.equal(await guestState(source, 'vm-post'), 'absent');
  // The guest keeps running on the target with all its memory: it can move on by CR/TR.
  await sleep(200);
  const back = await watchJob(target, await startMigration(target, { guestId: 'vm-post', targetAddress: source.address, downtimeLimitMs: 300, nonConvergencePolicy: 'force', maxDurationMs: 60_000 }));
  checkCompleted(t, back.job.stats as Stats, 'back by CR/TR');
});
