// Migrations that must not happen, or must stop part-way, between two agents started in this
// process: refusals, injected aborts at each phase, corrupt data, cancellation, bad requests, an
// unreachable target and the non-convergence policies. Whatever the failure, the guest must be
// left running on the source only, the target must hold nothing for it, and a later migration
// must still work.
import { createServer } from 'node:net';
import t, { type Test } from 'tap';
import { type Agent, GUEST_BYTES, guestState, simGuest, sleep, startGuest, startMigration, startTestAgent } from './support/agents.js';
import type { SimSourceGuest } from '../shared/driver/sim/guest.js';
import { VmMigrateError } from '../shared/errors.js';
import { controlService, grpc, pb, unary } from '../shared/transport/grpc.js';


type Job = InstanceType<typeof pb.Job>;
type Stats = InstanceType<typeof pb.MigrationStats>;
type JobEvent = InstanceType<typeof pb.JobEvent>;
type MigrationRequest = Partial<InstanceType<typeof pb.StartMigrationRequest>>;

/** A source agent that honours fault injection, and a plain target agent. */
async function agentPair(t: Test, targetExtra: string[] = []): Promise<{ source: Agent; target: Agent }> {
  const source = await startTestAgent(t, ['--allow-fault-injection']);
  const target = await startTestAgent(t, targetExtra);
  return { source, target };
}

async function reservedBytes(a: Agent): Promise<number> {
  const c = await unary(a.ctl, controlService.getCapacity, pb.GetCapacityRequest.create(), 10_000, 'capacity');
  return c.memoryBytesReserved;
}

/**
 * Follows a job with WatchJob until the server ends the stream; `onEvent` sees every event.
 * Returns the last job and the event kinds.
 */
async function watchJob(a: Agent, jobId: string, onEvent?: (event: JobEvent) => void, timeoutMs = 120_000): Promise<{ job: Job; kinds: string[]; message: string }> {
  const m = controlService.watchJob;
  const call = a.ctl.makeServerStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, pb.WatchJobRequest.create({ jobId, intervalMs: 100 }));
  const timer = setTimeout(() => call.cancel(), timeoutMs);
  const kinds: string[] = [];
  let job: Job | null = null;
  let message = '';
  try {
    for await (const event of call as AsyncIterable<JobEvent>) {
      kinds.push(event.kind);
      job = event.job as Job;
      message = event.message;
      onEvent?.(event);
    }
  } finally {
    clearTimeout(timer);
  }
  if (job === null) throw new Error(`WatchJob ${jobId} ended without an event`);
  return { job, kinds, message };
}

async function migrate(a: Agent, request: MigrationRequest, onEvent?: (event: JobEvent) => void): Promise<{ stats: Stats; kinds: string[]; message: string; jobId: string }> {
  const jobId = await startMigration(a, request);
  const { job, kinds, message } = await watchJob(a, jobId, onEvent);
  return { stats: job.stats as Stats, kinds, message, jobId };
}

/** The error a call rejected with (a VmMigrateError mapped from its gRPC status). */
async function rejection(p: Promise<unknown>): Promise<VmMigrateError | Error | undefined> {
  try {
    await p;
  } catch (error) {
    return error as Error;
  }
  return undefined;
}

function expectCode(t: Test, error: Error | undefined, code: string, message: RegExp, what: string): void {
  t.ok(error instanceof VmMigrateError, `${what}: rejected (got ${error?.name}: ${error?.message})`);
  t.equal((error as VmMigrateError | undefined)?.code, code, `${what}: ${code}`);
  t.match(error?.message ?? '', message, `${what}: message`);
}


/** Polls `read` until `ok` holds or `timeoutMs` passes; returns the last value read. */
async function eventually<T>(read: () => Promise<T>, ok: (value: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const until = performance.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (ok(value) || performance.now() > until) return value;
    await sleep(50);
  }
}

function sourceGuest(a: Agent, id: string): SimSourceGuest {
  return simGuest(a, id);
}

/**
 * After a failed or cancelled migration: the guest runs on the source only, the target holds no
 * reservation (it may take a moment to hear of the abort), and the guest still executes.
 */
async function checkGuestOnSourceOnly(t: Test, source: Agent, target: Agent, id: string): Promise<void> {
  t.equal(await guestState(source, id), 'running', 'the guest runs on the source');
  t.equal(await guestState(target, id), 'absent', 'the guest is not on the target');
  t.equal(await eventually(() => reservedBytes(target), (b) => b === 0), 0, 'the target holds no reservation');
  t.equal(await reservedBytes(source), GUEST_BYTES, 'the source host still holds the guest memory');
  const guest = sourceGuest(source, id);
  t.equal(guest.runnerStats().throttle, 1, 'the guest runs at full speed');
  t.equal(guest.recordingStats().unitsRecorded, 0, 'the guest is no longer recording');
  const before = guest.digest();
  await sleep(150);
  t.not(guest.digest(), before, 'the guest keeps executing on the source');
}

/** A clean migration after a failed one: the failure left nothing in the way. */
async function checkMigratesAfterwards(t: Test, source: Agent, target: Agent, id: string): Promise<void> {
  const { stats: s, jobId } = await migrate(source, { guestId: id, targetAddress: target.address, downtimeLimitMs: 300, nonConvergencePolicy: 'force', maxDurationMs: 60_000 });
  t.equal(s.status, 'completed', `a later migration completes (${s.error})`);
  t.match(s.sourceDigest, /^[0-9a-f]{16}$/);
  t.equal(s.targetDigest, s.sourceDigest, 'digests equal');
  t.equal(await guestState(target, id), 'running', 'the guest now runs on the target');
  t.equal(await guestState(source, id), 'absent', 'and is gone from the source');
  // A completed job is past its commit point: it cannot be cancelled any more.
  const error = await rejection(unary(source.ctl, controlService.cancelJob, pb.CancelJobRequest.create({ jobId }), 10_000, 'cancel'));
  expectCode(t, error, 'FAILED_PRECONDITION', /past its commit point/, 'CancelJob of a completed job');
}

t.test('a target without room refuses the guest at pre-migration: nothing moves', async (t) => {
  const { source, target } = await agentPair(t, ['--memory-mib', '32']);
  const id = 'vm-big';
  await startGuest(source, id, 'idle');
  const { stats: s, kinds, message } = await migrate(source, { guestId: id, targetAddress: target.address, downtimeLimitMs: 300, maxDurationMs: 60_000 });
  t.equal(s.status, 'failed');
  t.equal(kinds[kinds.length - 1], 'failed', 'the last event says failed');
  t.equal(message, s.error, 'the last event carries the error');
  t.equal(s.errorCode, 'RESOURCE_EXHAUSTED');
  t.equal(s.errorReason, 'CAPACITY_REFUSED');
  t.match(s.error, new RegExp(`target ${target.address.replace(/\./g, '\\.')} has 32 MiB free, the guest needs 64 MiB`));
  t.equal(s.setupTimeMs, 0, 'never got past pre-migration');
  t.equal(s.checkpointWireBytes, 0, 'no checkpoint was sent');
  t.equal(s.sourceDigest, '');
  await checkGuestOnSourceOnly(t, source, target, id);
});

t.test('the target refuses the reservation itself (no vCPU free): RESOURCE_EXHAUSTED', async (t) => {
  const { source, target } = await agentPair(t, ['--vcpus', '1']);
  await startGuest(target, 'resident', 'idle');
  const id = 'vm-novcpu';
  await startGuest(source, id, 'idle');
  const { stats: s } = await migrate(source, { guestId: id, targetAddress: target.address, downtimeLimitMs: 300, maxDurationMs: 60_000 });
  t.equal(s.status, 'failed');
  t.equal(s.errorCode, 'RESOURCE_EXHAUSTED');
  t.equal(s.errorReason, 'CAPACITY_REFUSED', "the target's reason reaches the job");
  t.match(s.error, /^reservation on 127\.0\.0\.1:\d+: no vCPU free for guest 'vm-novcpu': 1 of 1 in use$/);
  t.equal(s.checkpointWireBytes, 0);
  t.equal(await guestState(source, id), 'running', 'the guest runs on the source');
  t.equal(await guestState(target, id), 'absent', 'the guest is not on the target');
  t.equal(await reservedBytes(target), GUEST_BYTES, 'the target holds only its resident guest');
});

t.test('the target refuses a guest it already runs (ALREADY_EXISTS)', async (t) => {
  const { source, target } = await agentPair(t);
  const id = 'vm-twin';
  await startGuest(source, id, 'idle');
  await startGuest(target, id, 'idle');
  const { stats: s } = await migrate(source, { guestId: id, targetAddress: target.address, downtimeLimitMs: 300, maxDurationMs: 60_000 });
  t.equal(s.status, 'failed');
  t.equal(s.errorCode, 'ALREADY_EXISTS');
  t.equal(s.errorReason, 'GUEST_EXISTS');
  t.match(s.error, /^reservation on 127\.0\.0\.1:\d+: guest 'vm-twin' already runs on this host$/);
  t.equal(await guestState(source, id), 'running', 'the source guest still runs');
  t.equal(await guestState(target, id), 'running', "the target's own guest is untouched");
  t.equal(await reservedBytes(target), GUEST_BYTES, 'no reservation beside its own guest');
});

for (const phase of ['reservation', 'checkpoint', 'log-transfer', 'stop-and-copy', 'commitment']) {
  t.test(`an abort injected at phase ${phase} cancels the migration; the guest stays on the source`, async (t) => {
    const { source, target } = await agentPair(t);
    const id = `vm-abort-${phase}`;
    await startGuest(source, id, 'idle');
    await sleep(100);
    const { stats: s, kinds } = await migrate(source, {
      guestId: id,
      targetAddress: target.address,
      downtimeLimitMs: 300,
      nonConvergencePolicy: 'force',
      maxDurationMs: 60_000,
      faultInjection: { abortAtPhase: phase },
    });
    // An injected abort is a cancellation (source-agent/migration.ts abortAt aborts the job's
    // cancel controller): status cancelled, code ABORTED.
    t.equal(s.status, 'cancelled');
    t.equal(kinds[kinds.length - 1], 'cancelled', 'the last event says cancelled');
    t.equal(s.errorCode, 'ABORTED');
    t.equal(s.errorReason, 'CANCELLED');
    t.equal(s.error, `fault injection: abort at phase ${phase}`);
    t.equal(s.phase, 'done');
    t.equal(s.forced, false);
    // Downtime is what the guest saw: none before the suspend (an abort as stop-and-copy begins
    // comes before it); after it, the suspend to the resume here.
    if (phase === 'commitment') t.ok(s.downtimeMs > 0 && s.downtimeMs < 1_000, `suspended ${s.downtimeMs} ms, resumed here`);
    else t.equal(s.downtimeMs, 0, 'the guest was never suspended');
    if (phase === 'reservation') t.equal(s.setupTimeMs, 0, 'aborted before the reservation');
    else t.ok(s.setupTimeMs > 0, 'reserved first');
    // The abort comes as the phase begins: at commitment, before the source's digest is taken.
    t.equal(s.sourceDigest, '', 'no digest was taken');
    t.equal(s.targetDigest, '', 'the target was never asked to commit');
    if (phase === 'stop-and-copy' || phase === 'commitment') t.ok(s.unitsReplayed > 0, 'the target had replayed units');
    await checkGuestOnSourceOnly(t, source, target, id);
    await checkMigratesAfterwards(t, source, target, id);
    if (phase === 'log-transfer') {
      // BUG (see the report): after this abort the source writes a StopDecision on the transfer
      // stream it has already ended; the write-after-end error destroys the client stream without
      // cancelling the call, so its HTTP/2 stream stays open and the target's shutdown waits
      // ~30 s for the connection to drop. A prompt shutdown takes milliseconds.
      const down = await Promise.race([target.agent.shutdown('shutdown check').then(() => true), sleep(5_000).then(() => false)]);
      t.ok(down, 'the target agent shuts down within 5 s after a migration aborted at log-transfer');
    }
  });
}

t.test('a corrupt checkpoint chunk fails the migration with DATA_LOSS', async (t) => {
  const { source, target } = await agentPair(t);
  const id = 'vm-badchunk';
  await startGuest(source, id, 'idle');
  const { stats: s, kinds } = await migrate(source, {
    guestId: id,
    targetAddress: target.address,
    downtimeLimitMs: 300,
    maxDurationMs: 60_000,
    faultInjection: { corruptChunkIndex: 3 },
  });
  t.equal(s.status, 'failed');
  t.equal(kinds[kinds.length - 1], 'failed');
  t.equal(s.errorCode, 'DATA_LOSS');
  t.equal(s.errorReason, 'CORRUPT_DATA', "the reason of the target's TargetError");
  t.match(s.error, /^target 127\.0\.0\.1:\d+: checkpoint chunk 3: /);
  t.match(s.error, /xxh64 mismatch|lz4 block/);
  t.equal(s.sourceDigest, '', 'never reached commitment');
  await checkGuestOnSourceOnly(t, source, target, id);
  await checkMigratesAfterwards(t, source, target, id);
});

t.test('a corrupt log unit fails the migration with DATA_LOSS', async (t) => {
  const { source, target } = await agentPair(t);
  const id = 'vm-badunit';
  await startGuest(source, id, 'idle');
  await sleep(100);
  // Units are numbered from the guest's boot; the recording starts at the next unit boundary
  // after the reservation (150 to 350 ms after StartMigration on a loaded machine). 50 units
  // (500 ms of guest time) later is recorded and sent well within a migration of a 64 MiB guest
  // (1.3 s and more).
  const sequence = sourceGuest(source, id).machine.state.unitSequence + 50;
  const { stats: s } = await migrate(source, {
    guestId: id,
    targetAddress: target.address,
    downtimeLimitMs: 300,
    maxDurationMs: 60_000,
    faultInjection: { corruptUnitSequence: sequence },
  });
  t.comment(`corrupted unit ${sequence}`);
  t.equal(s.status, 'failed');
  t.equal(s.errorCode, 'DATA_LOSS');
  t.equal(s.errorReason, 'CORRUPT_DATA');
  t.match(s.error, new RegExp(`^target 127\\.0\\.0\\.1:\\d+: unit ${sequence}: `));
  t.match(s.error, /xxh64 mismatch|lz4 block/);
  await checkGuestOnSourceOnly(t, source, target, id);
  await checkMigratesAfterwards(t, source, target, id);
});

t.test('a wrong digest at commitment: the target refuses the commit, DATA_LOSS, the guest resumes on the source', async (t) => {
  const { source, target } = await agentPair(t);
  const id = 'vm-baddigest';
  await startGuest(source, id, 'idle');
  const { stats: s } = await migrate(source, {
    guestId: id,
    targetAddress: target.address,
    downtimeLimitMs: 300,
    maxDurationMs: 60_000,
    faultInjection: { corruptCommitDigest: true },
  });
  t.equal(s.status, 'failed');
  t.equal(s.errorCode, 'DATA_LOSS');
  t.equal(s.errorReason, 'DIGEST_MISMATCH');
  t.match(s.error, /^commit refused: the target's replica digest [0-9a-f]{16} differs from the digest sent, [0-9a-f]{16}$/);
  // Only the digest on the wire was flipped: the replica itself was right.
  t.match(s.sourceDigest, /^[0-9a-f]{16}$/);
  t.equal(s.targetDigest, s.sourceDigest, "the target's replica matched the source's real digest");
  t.ok(s.unitsReplayed > 0);
  await checkGuestOnSourceOnly(t, source, target, id);
  await checkMigratesAfterwards(t, source, target, id);
});

t.test('CancelJob part-way: cancelled, the guest stays on the source', async (t) => {
  const { source, target } = await agentPair(t);
  const id = 'vm-cancel';
  await startGuest(source, id, 'web');
  const jobId = await startMigration(source, { guestId: id, targetAddress: target.address, downtimeLimitMs: 300, nonConvergencePolicy: 'force', maxDurationMs: 60_000 });

  // While it runs: no second migration of the same guest, no StopGuest.
  const second = await rejection(startMigration(source, { guestId: id, targetAddress: target.address }));
  expectCode(t, second, 'FAILED_PRECONDITION', new RegExp(`guest '${id}' is already being migrated by job ${jobId}`), 'a second migration');
  const stop = await rejection(unary(source.ctl, controlService.stopGuest, pb.StopGuestRequest.create({ id }), 10_000, 'stop'));
  expectCode(t, stop, 'FAILED_PRECONDITION', /is being migrated by job .*; cancel it first/, 'StopGuest during a migration');

  let cancelledAt = '';
  let cancel: Promise<InstanceType<typeof pb.CancelJobResponse>> | null = null;
  const { job, kinds } = await watchJob(source, jobId, (event) => {
    const phase = event.job?.stats?.phase ?? '';
    if (cancel === null && (phase === 'checkpoint' || phase === 'log-transfer')) {
      cancelledAt = phase;
      cancel = unary(source.ctl, controlService.cancelJob, pb.CancelJobRequest.create({ jobId }), 10_000, 'cancel');
    }
  });
  t.ok(cancel !== null, 'the job was seen in checkpoint or log-transfer');
  t.comment(`cancelled in phase ${cancelledAt}`);
  const response = await cancel!;
  t.equal(response.job?.jobId, jobId);
  t.equal(response.job?.stats?.status, 'cancelling', 'CancelJob answers while the job winds down');

  const s = job.stats as Stats;
  t.equal(s.status, 'cancelled');
  t.equal(kinds[kinds.length - 1], 'cancelled');
  t.equal(s.errorCode, 'ABORTED');
  t.equal(s.errorReason, 'CANCELLED');
  t.equal(s.error, 'cancelled by request');
  await checkGuestOnSourceOnly(t, source, target, id);

  // Cancelling an ended job again is harmless.
  const again = await unary(source.ctl, controlService.cancelJob, pb.CancelJobRequest.create({ jobId }), 10_000, 'cancel again');
  t.equal(again.job?.stats?.status, 'cancelled');
});

t.test('fault injection is refused by an agent not started with --allow-fault-injection', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  const id = 'vm-nofaults';
  await startGuest(source, id, 'idle');
  const faults = [{ abortAtPhase: 'checkpoint' }, { corruptChunkIndex: 3 }, { corruptUnitSequence: 1000 }, { corruptCommitDigest: true }];
  for (const faultInjection of faults) {
    const error = await rejection(startMigration(source, { guestId: id, targetAddress: target.address, faultInjection }));
    expectCode(t, error, 'INVALID_ARGUMENT', /^starting a migration: fault injection is disabled on this agent \(start it with --allow-fault-injection\)$/, JSON.stringify(faultInjection));
  }
  const jobs = await unary(source.ctl, controlService.listJobs, pb.ListJobsRequest.create(), 10_000, 'jobs');
  t.equal(jobs.jobs.length, 0, 'no job was created');
  t.equal(await guestState(source, id), 'running');
});

t.test('bad migration requests are refused with INVALID_ARGUMENT or NOT_FOUND', async (t) => {
  const { source, target } = await agentPair(t);
  const id = 'vm-args';
  await startGuest(source, id, 'idle');
  const cases: Array<[MigrationRequest, string, RegExp]> = [
    [{ guestId: 'no-such-guest', targetAddress: target.address }, 'NOT_FOUND', /no guest 'no-such-guest' on this host/],
    [{ guestId: id, targetAddress: '' }, 'INVALID_ARGUMENT', /targetAddress is required/],
    [{ guestId: id, targetAddress: target.address, method: 'teleport' }, 'INVALID_ARGUMENT', /method 'teleport': expected crtr, precopy, postcopy or qemu-native/],
    [{ guestId: id, targetAddress: target.address, nonConvergencePolicy: 'pray' }, 'INVALID_ARGUMENT', /nonConvergencePolicy 'pray': expected abort, force, throttle/],
    [{ guestId: id, targetAddress: target.address, downtimeLimitMs: 600_001 }, 'INVALID_ARGUMENT', /downtimeLimitMs 600001: expected 1 to 600000/],
    [{ guestId: id, targetAddress: target.address, maxDurationMs: 99 }, 'INVALID_ARGUMENT', /maxDurationMs 99: expected 100 ms to 24 h/],
    [{ guestId: id, targetAddress: target.address, faultInjection: { abortAtPhase: 'activation' } }, 'INVALID_ARGUMENT', /abortAtPhase 'activation': expected one of reservation, checkpoint, log-transfer, stop-and-copy, commitment/],
  ];
  for (const [request, code, message] of cases) {
    expectCode(t, await rejection(startMigration(source, request)), code, message, JSON.stringify(request));
  }
  expectCode(t, await rejection(unary(source.ctl, controlService.getJob, pb.GetJobRequest.create({ jobId: 'nope' }), 10_000, 'get')), 'NOT_FOUND', /^get: no job 'nope' on this agent$/, 'GetJob of an unknown job');
  expectCode(t, await rejection(unary(source.ctl, controlService.cancelJob, pb.CancelJobRequest.create({ jobId: 'nope' }), 10_000, 'cancel')), 'NOT_FOUND', /^cancel: no job 'nope' on this agent$/, 'CancelJob of an unknown job');
  const jobs = await unary(source.ctl, controlService.listJobs, pb.ListJobsRequest.create(), 10_000, 'jobs');
  t.equal(jobs.jobs.length, 0, 'no job was created');
  t.equal(await guestState(source, id), 'running');
});

t.test('WatchJob of an unknown job ends with NOT_FOUND', async (t) => {
  // BUG (see the report): the handler calls call.destroy(error) on the server stream, which in
  // grpc-js never sends a status: the client waits until its own deadline (here 3 s).
  const source = await startTestAgent(t);
  const error = (await rejection(watchJob(source, 'nope', undefined, 3_000))) as (Error & { code?: number }) | undefined;
  t.equal(error?.code, grpc.status.NOT_FOUND, `WatchJob of an unknown job: NOT_FOUND (got ${error?.message})`);
  t.match(error?.message ?? '', /no job 'nope' on this agent/);
});

t.test('job statistics: every message between the agents is counted in transferredBytes', async (t) => {
  // BUG (see the report): the unary calls (GetCapacity, Reserve, Release and the GetCapacity
  // pings) go through unary() with the plain method definitions, not the counting ones, so only
  // the transfer stream is counted. A migration refused at pre-migration reports 0 bytes.
  const { source, target } = await agentPair(t, ['--memory-mib', '32']);
  await startGuest(source, 'vm-count', 'idle');
  const { stats: s } = await migrate(source, { guestId: 'vm-count', targetAddress: target.address, downtimeLimitMs: 300, maxDurationMs: 60_000 });
  t.equal(s.errorCode, 'RESOURCE_EXHAUSTED');
  t.ok(s.transferredBytes > 0, `the capacity request and its answer are counted (transferredBytes ${s.transferredBytes})`);
});

t.test('job statistics: units recorded and log bytes survive the end of the recording', async (t) => {
  // BUG (see the report): refreshStats() reads the guest's recording counters again when the job
  // ends, after onFailure() stopped the recording (or, on success, after discard()): a failed or
  // cancelled job reports 0 units recorded and 0 log bytes although the target replayed units.
  const { source, target } = await agentPair(t);
  await startGuest(source, 'vm-stats', 'idle');
  const { stats: s } = await migrate(source, {
    guestId: 'vm-stats',
    targetAddress: target.address,
    downtimeLimitMs: 300,
    maxDurationMs: 60_000,
    faultInjection: { abortAtPhase: 'commitment' },
  });
  t.equal(s.status, 'cancelled');
  t.ok(s.unitsReplayed > 0, `the target replayed ${s.unitsReplayed} units`);
  t.ok(s.unitsRecorded >= s.unitsReplayed, `units recorded (${s.unitsRecorded}) >= units replayed (${s.unitsReplayed})`);
  t.ok(s.logBytes > 0, `log bytes recorded (${s.logBytes}) > 0`);
});

t.test('an unreachable target: the job fails with UNAVAILABLE, the guest runs on', async (t) => {
  const source = await startTestAgent(t, ['--allow-fault-injection']);
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  const address = `127.0.0.1:${port}`;
  const id = 'vm-lonely';
  await startGuest(source, id, 'idle');
  const { stats: s, kinds } = await migrate(source, { guestId: id, targetAddress: address, downtimeLimitMs: 300, maxDurationMs: 60_000 });
  t.equal(s.status, 'failed');
  t.equal(kinds[kinds.length - 1], 'failed');
  t.equal(s.errorCode, 'UNAVAILABLE');
  t.equal(s.errorReason, 'PEER_UNAVAILABLE');
  t.match(s.error, new RegExp(`^capacity of 127\\.0\\.0\\.1:${port}: `));
  t.equal(s.setupTimeMs, 0);
  t.equal(await guestState(source, id), 'running');
  const guest = sourceGuest(source, id);
  const before = guest.digest();
  await sleep(150);
  t.not(guest.digest(), before, 'the guest keeps executing');
});

// A guest whose log grows faster than the link carries it cannot converge: the 'stream' profile
// with 2500-byte packets records ~15 MB/s of incompressible payload, and the migration is capped at
// 4 MB/s, far enough below that even a guest running late on a loaded host (it shares the agent's
// event loop) outgrows the link. Throttling slows the guest's CPU work, not its incoming packets,
// so it cannot help.
const FLOOD = { rates: { packetBytes: 2500 }, maxBandwidthBytesPerSec: 4_000_000 };

t.test("non-convergence, policy 'abort': DEADLINE_EXCEEDED, the guest stays on the source", async (t) => {
  const { source, target } = await agentPair(t);
  const id = 'vm-flood-abort';
  await startGuest(source, id, 'stream', FLOOD.rates);
  const { stats: s } = await migrate(source, {
    guestId: id,
    targetAddress: target.address,
    downtimeLimitMs: 300,
    maxBandwidthBytesPerSec: FLOOD.maxBandwidthBytesPerSec,
    nonConvergencePolicy: 'abort',
    maxDurationMs: 20_000,
  });
  t.comment(`${s.error}; rounds ${s.rounds}, denied ${s.stopRequestsDenied}`);
  t.equal(s.status, 'failed');
  t.equal(s.errorCode, 'DEADLINE_EXCEEDED');
  // Aborted by the backlog verdict (growing, or flat), or by the maximum duration; the reason says which.
  t.match(
    s.error,
    /^(did not converge: backlog (grew from \d+ to \d+ units in \d+ ms \(allowed \d+\): the log grows faster than it drains|did not shrink from \d+ units in \d+ ms \(allowed \d+\): the log grows as fast as it drains)|migration ran \d+ ms, its maximum is 20000 ms)$/,
  );
  t.equal(s.errorReason, s.error.startsWith('did not converge') ? 'NON_CONVERGENCE' : 'MAX_DURATION_EXCEEDED');
  t.equal(s.forced, false);
  t.equal(s.throttle, 1);
  t.equal(s.sourceDigest, '', 'never reached commitment');
  await checkGuestOnSourceOnly(t, source, target, id);
});

t.test("non-convergence, policy 'force': stop-and-copy is forced and the migration completes", async (t) => {
  const { source, target } = await agentPair(t);
  const id = 'vm-flood-force';
  await startGuest(source, id, 'stream', FLOOD.rates);
  const { stats: s } = await migrate(source, {
    guestId: id,
    targetAddress: target.address,
    downtimeLimitMs: 300,
    maxBandwidthBytesPerSec: FLOOD.maxBandwidthBytesPerSec,
    nonConvergencePolicy: 'force',
    maxDurationMs: 20_000,
  });
  t.comment(`downtime ${s.downtimeMs.toFixed(0)} ms (limit 300), rounds ${s.rounds}, denied ${s.stopRequestsDenied}`);
  t.equal(s.status, 'completed', s.error);
  t.equal(s.forced, true, 'forced by the policy');
  t.ok(s.stopRequestsDenied > 0, 'the source had denied every stop request');
  t.match(s.sourceDigest, /^[0-9a-f]{16}$/);
  t.equal(s.targetDigest, s.sourceDigest);
  t.equal(s.unitsReplayed + s.unitsSuperseded, s.unitsRecorded, 'every unit replayed, or superseded by a delta');
  t.ok(s.downtimeMs > 0);
  t.equal(await guestState(target, id), 'running');
  t.equal(await guestState(source, id), 'absent');
});

t.test("non-convergence, policy 'throttle': the guest is throttled, cannot converge, and the job fails at its maximum duration", async (t) => {
  const { source, target } = await agentPair(t);
  const id = 'vm-flood-throttle';
  await startGuest(source, id, 'stream', FLOOD.rates);
  const { stats: s } = await migrate(source, {
    guestId: id,
    targetAddress: target.address,
    downtimeLimitMs: 300,
    maxBandwidthBytesPerSec: FLOOD.maxBandwidthBytesPerSec,
    nonConvergencePolicy: 'throttle',
    // Long enough that a checkpoint slowed by a busy machine (the suite runs files in parallel)
    // leaves the log transfer several convergence windows to judge.
    maxDurationMs: 26_000,
  });
  t.comment(`throttle ${s.throttle}, ${s.error}`);
  t.ok(s.throttle < 1, `the guest was throttled (${s.throttle})`);
  t.ok(s.throttle >= 0.05, 'not below the floor');
  t.equal(s.status, 'failed');
  t.equal(s.errorCode, 'DEADLINE_EXCEEDED');
  t.match(s.error, /^migration ran \d+ ms, its maximum is 26000 ms$/, 'the throttle policy gives up at the maximum duration');
  t.equal(s.errorReason, 'MAX_DURATION_EXCEEDED');
  t.equal(s.forced, false);
  // The job keeps the last throttle in its statistics; the guest itself is back at full speed.
  await checkGuestOnSourceOnly(t, source, target, id);
});
