// The commit point between two real agents: a lost commit answer puts the job in doubt, the source
// asks the target (Migration.QueryOutcome) and ends the job by the target's word; a lost activation
// confirmation still completes; an outcome query fences a migration the target had not committed;
// the target's journal answers for what it committed across a restart.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { PROTOCOL_VERSION } from '../shared/protocol.js';
import { controlService, grpc, makeClient, migrationService, pb, unary } from '../shared/transport/grpc.js';
import { type Agent, GUEST_BYTES, guestState, startGuest, startMigration, startTestAgent } from './support/agents.js';

type Job = InstanceType<typeof pb.Job>;
type Stats = InstanceType<typeof pb.MigrationStats>;
const { Outcome } = pb.OutcomeResponse;

/** Waits for the job to end (GetJob polled). */
async function jobEnd(a: Agent, jobId: string, timeoutMs = 60_000): Promise<Stats> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const job: Job = await unary(a.ctl, controlService.getJob, pb.GetJobRequest.create({ jobId }), 10_000, 'get job');
    const s = job.stats as Stats;
    if (s.status === 'completed' || s.status === 'failed' || s.status === 'cancelled') return s;
    if (Date.now() > until) throw new Error(`job ${jobId} still ${s.status} after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function migrationClient(t: Test, address: string): grpc.Client {
  const client = makeClient(migrationService, 'Migration', address, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  return client;
}

function queryOutcome(client: grpc.Client, migrationId: string): Promise<InstanceType<typeof pb.OutcomeResponse>> {
  return unary(client, migrationService.queryOutcome, pb.OutcomeRequest.create({ migrationId, startedAtUnixMs: Date.now() }), 5_000, 'outcome');
}

t.test('a lost commit answer: the job is in doubt, asks the target, and completes by its word; the guest runs once, on the target', async (t) => {
  const source = await startTestAgent(t, ['--allow-fault-injection']);
  const target = await startTestAgent(t);
  await startGuest(source, 'vm-lost-answer', 'web');
  const jobId = await startMigration(source, { guestId: 'vm-lost-answer', targetAddress: target.address, downtimeLimitMs: 300, maxDurationMs: 60_000, nonConvergencePolicy: 'force', faultInjection: { loseCommitResult: true } });
  const s = await jobEnd(source, jobId);
  t.equal(s.status, 'completed', `completed once the target said it committed (${s.error})`);
  t.equal(s.errorReason, '');
  t.ok(s.outcomeQueries >= 1, `${s.outcomeQueries} outcome queries`);
  // The answer was "lost", so the source waited out the commit's deadline (1 s at a 300 ms limit);
  // the guest itself had resumed on the target long before.
  t.ok(s.inDoubtMs >= 0, `in doubt ${s.inDoubtMs} ms`);
  t.ok(s.downtimeMs > 0 && s.downtimeMs < 900, `downtime ${s.downtimeMs} ms is what the guest saw, not the 1 s wait for the lost answer`);
  t.equal(await guestState(target, 'vm-lost-answer'), 'running');
  t.equal(await guestState(source, 'vm-lost-answer'), 'absent', 'the stale copy here is gone');
  const answer = await queryOutcome(migrationClient(t, target.address), jobId);
  t.equal(answer.outcome, Outcome.COMMITTED, 'asked again: the same answer (idempotent)');
});

t.test("a lost activation confirmation: the target committed, so the job completes and the copy here goes", async (t) => {
  const source = await startTestAgent(t, ['--allow-fault-injection', '--activation-timeout-ms', '1500']);
  const target = await startTestAgent(t);
  await startGuest(source, 'vm-lost-activation', 'idle');
  const jobId = await startMigration(source, {
    guestId: 'vm-lost-activation',
    targetAddress: target.address,
    downtimeLimitMs: 300,
    maxDurationMs: 60_000,
    nonConvergencePolicy: 'force',
    faultInjection: { loseActivation: true },
  });
  const s = await jobEnd(source, jobId);
  t.equal(s.status, 'completed');
  t.ok(s.downtimeMs > 0 && s.downtimeMs < 900, `downtime ${s.downtimeMs} ms, asked of the target`);
  t.equal(await guestState(target, 'vm-lost-activation'), 'running');
  t.equal(await guestState(source, 'vm-lost-activation'), 'absent');
});

t.test('an outcome query fences a migration the target never committed: NOT_COMMITTED, and a Reserve for it is refused', async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'vmmigrate-journal-'));
  t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));
  const target = await startTestAgent(t, ['--state-dir', stateDir]);
  const client = migrationClient(t, target.address);
  const migrationId = '6f1c2d3e-0000-4000-8000-000000000001';
  const first = await queryOutcome(client, migrationId);
  t.equal(first.outcome, Outcome.NOT_COMMITTED);
  t.equal(first.durable, true);
  t.match(first.detail, /never reserved or committed here/);
  t.equal((await queryOutcome(client, migrationId)).outcome, Outcome.NOT_COMMITTED, 'the same answer again');
  const reserve = unary(
    client,
    migrationService.reserve,
    pb.ReserveRequest.create({ protocolVersion: PROTOCOL_VERSION, migrationId, downtimeLimitMs: 300, guest: { id: 'vm-x', driver: 'sim', memoryBytes: GUEST_BYTES, vcpus: 1, unitMs: 10 } }),
    10_000,
    'reserve',
  );
  await t.rejects(reserve, { code: 'FAILED_PRECONDITION', reason: 'MIGRATION_DECIDED' });
  const bad = unary(client, migrationService.queryOutcome, pb.OutcomeRequest.create({ migrationId: '' }), 5_000, 'outcome');
  await t.rejects(bad, { code: 'INVALID_ARGUMENT' });
});

t.test('a target without a durable journal that started after the migration cannot tell: UNKNOWN, every time (and it is fenced all the same)', async (t) => {
  const target = await startTestAgent(t);
  const client = migrationClient(t, target.address);
  const migrationId = '6f1c2d3e-0000-4000-8000-000000000002';
  for (let i = 0; i < 2; i++) {
    const answer = await queryOutcome(client, migrationId);
    t.equal(answer.outcome, Outcome.UNKNOWN);
    t.equal(answer.durable, false);
    t.match(answer.detail, /keeps no durable journal/);
  }
  // One that has run since well before the migration started can: it would have a record.
  const older = await unary(client, migrationService.queryOutcome, pb.OutcomeRequest.create({ migrationId: '6f1c2d3e-0000-4000-8000-000000000003', startedAtUnixMs: Date.now() + 120_000 }), 5_000, 'outcome');
  t.equal(older.outcome, Outcome.NOT_COMMITTED);
});

t.test('an outcome query during a transfer ends it and frees the reservation: that migration can never commit afterwards', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  await startGuest(source, 'vm-fenced', 'web');
  // A low bandwidth keeps the checkpoint going long enough to ask in the middle.
  const jobId = await startMigration(source, { guestId: 'vm-fenced', targetAddress: target.address, downtimeLimitMs: 300, maxDurationMs: 60_000, maxBandwidthBytesPerSec: 4_000_000 });
  const client = migrationClient(t, target.address);
  for (let i = 0; i < 100; i++) {
    const cap = await unary(client, migrationService.getCapacity, pb.CapacityRequest.create(), 5_000, 'capacity');
    if (cap.memoryBytesReserved > 0) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const answer = await queryOutcome(client, jobId);
  t.equal(answer.outcome, Outcome.NOT_COMMITTED);
  t.match(answer.detail, /not committed; fenced now/);
  const s = await jobEnd(source, jobId);
  t.equal(s.status, 'failed', 'the transfer was ended by the fence');
  t.equal(await guestState(source, 'vm-fenced'), 'running', 'the guest runs on the source');
  t.equal(await guestState(target, 'vm-fenced'), 'absent');
  const cap = await unary(client, migrationService.getCapacity, pb.CapacityRequest.create(), 5_000, 'capacity');
  t.equal(cap.memoryBytesReserved, 0, 'nothing left reserved on the target');
});

t.test("the target's journal answers across a restart: what it committed stays COMMITTED, what it had open became NOT_COMMITTED", async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'vmmigrate-journal-'));
  t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));
  const source = await startTestAgent(t);
  const first = await startTestAgent(t, ['--state-dir', stateDir]);
  await startGuest(source, 'vm-journal', 'idle');
  const jobId = await startMigration(source, { guestId: 'vm-journal', targetAddress: first.address, downtimeLimitMs: 300, maxDurationMs: 60_000, nonConvergencePolicy: 'force' });
  t.equal((await jobEnd(source, jobId)).status, 'completed');
  await first.agent.shutdown('restart');
  const second = await startTestAgent(t, ['--state-dir', stateDir]);
  const answer = await queryOutcome(migrationClient(t, second.address), jobId);
  t.equal(answer.outcome, Outcome.COMMITTED, 'the commit record survived the restart');
  t.equal(answer.durable, true);
  t.equal(answer.resumedAtMs, 0, "the resume instant was of the last run's clock");
  // A second agent on the same state directory is refused.
  await t.rejects(startTestAgent(t, ['--state-dir', stateDir]), { message: /in use by another agent/ });
});
