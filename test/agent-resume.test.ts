// Resume after link loss: the source reaches the target through a link emulator that cuts every
// connection part-way; the source resumes the transfer on a new stream (Resume, Resumed) and sends
// again only what the target had not received. A cut that lasts past the resume window ends the
// migration by the usual rules (before the commit: the guest runs on the source).
import t, { type Test } from 'tap';
import { LinkEmulator } from '../shared/transport/link.js';
import { controlService, pb, unary } from '../shared/transport/grpc.js';
import { type Agent, GUEST_BYTES, guestState, sleep, startGuest, startMigration, startTestAgent } from './support/agents.js';

type Stats = InstanceType<typeof pb.MigrationStats>;

async function jobEnd(a: Agent, jobId: string, timeoutMs = 90_000): Promise<Stats> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const job = await unary(a.ctl, controlService.getJob, pb.GetJobRequest.create({ jobId }), 10_000, 'get job');
    const s = job.stats as Stats;
    if (s.status === 'completed' || s.status === 'failed' || s.status === 'cancelled') return s;
    if (Date.now() > until) throw new Error(`job ${jobId} still ${s.status} after ${timeoutMs} ms`);
    await sleep(25);
  }
}

async function phaseOf(a: Agent, jobId: string): Promise<string> {
  const job = await unary(a.ctl, controlService.getJob, pb.GetJobRequest.create({ jobId }), 10_000, 'get job');
  return job.stats?.phase ?? '';
}

async function untilPhase(a: Agent, jobId: string, phases: string[]): Promise<void> {
  for (const end = Date.now() + 30_000; Date.now() < end; await sleep(10)) if (phases.includes(await phaseOf(a, jobId))) return;
  throw new Error(`job ${jobId} never reached ${phases.join(' or ')}`);
}

async function pairThroughLink(t: Test): Promise<{ source: Agent; target: Agent; link: LinkEmulator }> {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  const link = new LinkEmulator({ listen: '127.0.0.1:0', target: target.address, profile: 'loopback' });
  await link.start();
  t.teardown(() => link.close());
  return { source, target, link };
}

const methods = ['crtr', 'precopy'] as const;
for (const method of methods) {
  t.test(`${method}: a link cut mid-transfer is resumed on a new stream; the migration completes, nothing resent from the start`, async (t) => {
    const { source, target, link } = await pairThroughLink(t);
    await startGuest(source, `vm-resume-${method}`, 'web');
    const jobId = await startMigration(source, {
      guestId: `vm-resume-${method}`,
      targetAddress: link.address,
      method,
      downtimeLimitMs: 300,
      maxDurationMs: 60_000,
      nonConvergencePolicy: 'force',
      maxBandwidthBytesPerSec: 20_000_000,
    });
    await untilPhase(source, jobId, ['checkpoint']);
    await sleep(400);
    const info = link.cut();
    t.ok(info.connections >= 1, `the cut reset ${info.connections} connection(s)`);
    const s = await jobEnd(source, jobId);
    t.equal(s.status, 'completed', `completed after the cut (${s.error})`);
    t.ok(s.resumes >= 1, `resumed ${s.resumes} time(s)`);
    t.ok(s.resentBytes < GUEST_BYTES / 2, `${s.resentBytes} bytes sent again: what was in flight, not the checkpoint from its start`);
    t.equal(await guestState(target, `vm-resume-${method}`), 'running');
    t.equal(await guestState(source, `vm-resume-${method}`), 'absent');
    t.equal(s.targetDigest, s.sourceDigest);
  });
}

t.test('a link that stays down past the resume window: the migration fails before the commit, the guest runs on the source, the target frees the reservation', async (t) => {
  const { source, target, link } = await pairThroughLink(t);
  await startGuest(source, 'vm-down', 'web');
  const jobId = await startMigration(source, { guestId: 'vm-down', targetAddress: link.address, downtimeLimitMs: 300, maxDurationMs: 60_000, maxBandwidthBytesPerSec: 20_000_000 });
  await untilPhase(source, jobId, ['checkpoint']);
  link.cut({ block: true });
  const s = await jobEnd(source, jobId);
  t.equal(s.status, 'failed');
  t.match(s.error, /could not be resumed within 10000 ms/);
  t.equal(await guestState(source, 'vm-down'), 'running', 'the guest runs on the source');
  for (const end = Date.now() + 15_000; Date.now() < end; await sleep(100)) {
    const c = await unary(target.ctl, controlService.getCapacity, pb.GetCapacityRequest.create(), 10_000, 'capacity');
    if (c.memoryBytesReserved === 0) break;
  }
  const c = await unary(target.ctl, controlService.getCapacity, pb.GetCapacityRequest.create(), 10_000, 'capacity');
  t.equal(c.memoryBytesReserved, 0, 'the target released the reservation once its window passed');
  t.equal(await guestState(target, 'vm-down'), 'absent');
});

t.test('postcopy: a link cut during the page push is resumed; the guest on the target gets every page and the migration completes', async (t) => {
  const { source, target, link } = await pairThroughLink(t);
  await startGuest(source, 'vm-resume-postcopy', 'web');
  const jobId = await startMigration(source, {
    guestId: 'vm-resume-postcopy',
    targetAddress: link.address,
    method: 'postcopy',
    downtimeLimitMs: 300,
    maxDurationMs: 60_000,
    maxBandwidthBytesPerSec: 20_000_000,
  });
  await untilPhase(source, jobId, ['page-push']);
  await sleep(300);
  link.cut();
  const s = await jobEnd(source, jobId);
  t.equal(s.status, 'completed', `completed after the cut (${s.error})`);
  t.ok(s.resumes >= 1, `resumed ${s.resumes} time(s)`);
  t.equal(s.targetDigest, s.sourceDigest, 'the pages as received match the source');
  t.equal(await guestState(target, 'vm-resume-postcopy'), 'running');
  t.equal(await guestState(source, 'vm-resume-postcopy'), 'absent');
});
