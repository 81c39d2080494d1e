// The source's lifecycle (source-agent/migration.ts) over a fake target peer and a manual clock:
// prepare, switchover, commit, activation, and what a failure, a cancellation, a refused commit
// or a lost commit answer leave behind. No gRPC, no second process: the test plays the target.
import t from 'tap';
import { ManualClock } from '../shared/clock.js';
import type { MigrationPhase } from '../shared/stats.js';
import { pb } from '../shared/transport/grpc.js';
import { UnavailableError } from '../shared/errors.js';
import { faultHooks } from '../source-agent/faults.js';
import { CRTR_PHASES } from '../source-agent/methods/crtr.js';
import type { MigrationRequest } from '../source-agent/methods/method.js';
import { type MigrationDependencies, SOURCE_DEFAULTS, SourceMigration } from '../source-agent/migration.js';
import { type FakeChannel, FakeGuest, FakePeer, FakeRecorder, quietLog } from './support/fake-source.js';

interface Setup {
  clock: ManualClock;
  peer: FakePeer;
  guest: FakeGuest;
  recorder: FakeRecorder;
  job: SourceMigration;
  phases: MigrationPhase[];
  done: Promise<unknown>;
}

function setup(request: Partial<MigrationRequest> = {}, dependencies: MigrationDependencies = {}, configure: (peer: FakePeer) => void = () => {}): Setup {
  const clock = new ManualClock(1_000);
  const peer = new FakePeer(clock);
  configure(peer);
  const recorder = new FakeRecorder(3);
  const guest = new FakeGuest('vm-1', recorder);
  const job = new SourceMigration(
    guest,
    { guestId: 'vm-1', targetAddress: peer.address, method: 'crtr', downtimeLimitMs: 300, maxBandwidthBytesPerSec: 0, policy: 'abort', maxDurationMs: 600_000, ...request },
    SOURCE_DEFAULTS,
    quietLog,
    { peer, clock, ...dependencies },
  );
  const phases: MigrationPhase[] = [];
  job.on('phase', (p) => phases.push(p));
  return { clock, peer, guest, recorder, job, phases, done: job.run() };
}

/** Runs the migration (no time passing) until `condition` holds. */
async function until(s: Setup, condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (condition()) return;
    await s.clock.advance(0);
  }
  throw new Error(`never happened: ${what}`);
}

/** Plays the target through the checkpoint and the log transfer up to an agreed stop. */
async function toStop(s: Setup): Promise<FakeChannel> {
  await until(s, () => s.peer.channel !== null, 'transfer opened');
  const channel = s.peer.channel!;
  await until(s, () => channel.writtenOf('chunk').length === 3, 'three chunks');
  channel.report({ chunksApplied: 3, checkpointRestored: true });
  await until(s, () => s.job.stats.phase === 'log-transfer', 'log transfer');
  t.equal(channel.requestStop(0, 18)?.granted, true);
  return channel;
}

/** Plays the target up to an agreed stop and the final unit's replay. */
async function toCommit(s: Setup): Promise<FakeChannel> {
  const channel = await toStop(s);
  await until(s, () => channel.writtenOf('unit').some((u) => (u.body as { final: boolean }).final), 'the final unit');
  await s.clock.advance(25);
  channel.report({ unitsReplayed: 1, finalReplayed: true });
  await until(s, () => channel.commitDigestSent !== '', 'the commit');
  return channel;
}

t.test('a CR/TR migration end to end: every phase in order, downtime from the suspend to the resume', async (t) => {
  const s = setup();
  const channel = await toCommit(s);
  t.equal(s.peer.reserved.length, 1);
  t.equal(s.peer.reserved[0].migrationId, s.job.id, 'the job id is the migration id the target logs');
  t.same(channel.sent[0].open, { reservationId: 'reservation-1', migrationId: s.job.id, firstSequence: 100, method: 'crtr' });
  t.equal(channel.commitDigestSent, '0123456789abcdef');
  t.equal(s.job.stats.status, 'committing');
  t.throws(() => s.job.cancel(), { code: 'FAILED_PRECONDITION', message: /past its commit point/ });
  channel.commitResult = pb.CommitResult.create({ matched: true, targetDigest: '0123456789abcdef' });
  channel.activated = pb.Activated.create({ resumeToReplyMs: 5 });
  channel.notify();
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'completed');
  t.same(s.phases, [...CRTR_PHASES, 'done']);
  t.equal(stats.downtimeMs, 20, '25 ms from the suspend to the reply, less 5 ms from the resume to the reply');
  t.equal(stats.targetDigest, stats.sourceDigest);
  t.ok(s.guest.discarded, 'the source copy is discarded after the activation');
  t.ok(channel.closed && s.peer.closed, 'the stream and the client are closed');
});

t.test('a target without the capability the method needs is refused before the reservation', async (t) => {
  const s = setup({}, {}, (peer) => (peer.capacityReply = pb.Capacity.create({ driver: 'fake', memoryBytesFree: 2 ** 40, capabilities: ['page-restore'] })));
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'failed');
  t.equal(stats.errorCode, 'UNIMPLEMENTED');
  t.equal(stats.errorReason, 'CAPABILITY_MISSING');
  t.equal(stats.error, "method 'crtr' needs checkpoint-replay on the target, which target fake-target:7401 (driver 'fake') lacks (it has: page-restore)");
  t.equal(s.peer.reserved.length, 0, 'nothing reserved');
  t.equal(s.guest.state, 'running');
});

t.test('a refused commit: the target dropped its replica, the guest resumes here', async (t) => {
  const s = setup();
  const channel = await toCommit(s);
  channel.commitResult = pb.CommitResult.create({ matched: false, targetDigest: 'ffffffffffffffff' });
  channel.notify();
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'failed');
  t.equal(stats.errorCode, 'DATA_LOSS');
  t.equal(stats.errorReason, 'DIGEST_MISMATCH', 'a refused commit is not corrupt data');
  t.equal(stats.error, "commit refused: the target's replica digest ffffffffffffffff differs from the digest sent, 0123456789abcdef");
  t.equal(s.guest.state, 'running');
  t.equal(s.guest.resumed, 1);
  t.notOk(s.recorder.recording, 'the recording stopped');
});

t.test('an early commit: sent right behind the final unit; refused with a reason when the final replay failed, the guest resumes here', async (t) => {
  const s = setup({}, {}, (peer) => (peer.reserveReply.earlyCommit = true));
  const channel = await toStop(s);
  await until(s, () => channel.commitDigestSent !== '', 'the commit, with no report of the final replay');
  t.ok(channel.writtenOf('unit').some((u) => (u.body as { final: boolean }).final), 'after the final unit');
  channel.commitResult = pb.CommitResult.create({ matched: false, refusedReason: 'unit 7: checksum mismatch' });
  channel.notify();
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'failed');
  t.equal(stats.errorReason, 'TARGET_REFUSED_COMMIT');
  t.equal(stats.error, 'the target refused the commit and discarded its replica: unit 7: checksum mismatch');
  t.equal(s.guest.state, 'running', 'nothing was committed: the guest resumes here');
});

const { Outcome } = pb.OutcomeResponse;

/** Plays the target up to the commit, then loses its answer: the job goes in doubt. */
async function toDoubt(s: Setup): Promise<FakeChannel> {
  const channel = await toCommit(s);
  channel.fail(new UnavailableError('the target went away'));
  await until(s, () => s.job.stats.status === 'in-doubt', 'in doubt');
  return channel;
}

t.test('a lost commit answer: in doubt, the guest stays suspended; the target says it committed: completed, the copy here dropped', async (t) => {
  const s = setup();
  // The target's clock runs 10 s ahead of ours: a ping measured it (50 ms round trip).
  s.peer.clockOffset.add(900, 950, 10_925, 'target-run-1');
  let answers = 0;
  s.peer.outcome = async () => {
    if (++answers < 3) throw new UnavailableError('connection refused');
    // Resumed 8 ms after our suspend at 1000 (our clock) + the time the test spent (25 ms to the final unit's report).
    return pb.OutcomeResponse.create({ outcome: Outcome.COMMITTED, resumedAtMs: 11_000 + 33, agentInstanceId: 'target-run-1', durable: true, guestPresent: true });
  };
  await toDoubt(s);
  t.equal(s.guest.state, 'suspended', 'kept suspended while in doubt');
  t.equal(s.guest.resumed, 0);
  t.notOk(s.job.isOver(), 'an in-doubt job has not ended');
  t.match(s.job.stats.error, /^commit outcome unknown \(the target went away\)/);
  // The backoff: 200 ms, then 400 ms, before the third query answers.
  await s.clock.advance(200);
  await s.clock.advance(400);
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'completed', 'the truth, once known');
  t.equal(stats.error, '');
  t.equal(stats.errorReason, '');
  t.same(s.peer.outcomeQueries, [s.job.id, s.job.id, s.job.id]);
  t.equal(stats.outcomeQueries, 3);
  t.equal(stats.inDoubtMs, 600);
  t.ok(s.guest.discarded, 'the copy here is dropped: the guest is the target\'s');
  t.equal(stats.downtimeMs, 33, "the target's resume instant on our clock, not the time the news took");
});

t.test('a lost commit answer; the target says it never committed: the guest resumes here, the job fails saying so', async (t) => {
  const s = setup();
  s.peer.outcome = async () => pb.OutcomeResponse.create({ outcome: Outcome.NOT_COMMITTED, detail: 'not committed; fenced now', durable: true });
  await toCommit(s);
  await s.clock.advance(40);
  s.peer.channel!.fail(new UnavailableError('the target went away'));
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'failed');
  t.equal(stats.errorReason, 'PEER_UNAVAILABLE');
  t.match(stats.error, /the target did not commit \(not committed; fenced now\): the guest resumed on the source/);
  t.equal(s.guest.state, 'running');
  t.equal(s.guest.resumed, 1);
  t.notOk(s.guest.discarded);
  t.equal(stats.downtimeMs, 65, 'suspended here from the suspend to the resume here');
});

t.test('the target cannot tell (UNKNOWN): in doubt until an operator; resolve refuses to resume unless forced', async (t) => {
  const s = setup();
  s.peer.outcome = async () => pb.OutcomeResponse.create({ outcome: Outcome.UNKNOWN, detail: 'no durable journal', durable: false });
  await toDoubt(s);
  await s.clock.advance(200);
  await s.clock.advance(400);
  t.equal(s.job.stats.status, 'in-doubt', 'an UNKNOWN answer decides nothing');
  t.throws(() => s.job.resolve('resume-here', false), { code: 'FAILED_PRECONDITION', reason: 'MIGRATION_IN_DOUBT', message: /the target cannot tell \(no durable journal\); resuming here could leave the guest running twice/ });
  t.throws(() => s.job.resolve('discard-here', false), { reason: 'MIGRATION_IN_DOUBT', message: /running nowhere/ });
  const before = s.peer.outcomeQueries.length;
  s.job.resolve('query', false);
  await until(s, () => s.peer.outcomeQueries.length > before, 'a query at once');
  s.job.resolve('resume-here', true);
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'failed');
  t.match(stats.error, /an operator \(forced\) says the target did not commit/);
  t.equal(s.guest.state, 'running', 'resumed by the operator');
  t.throws(() => s.job.resolve('query', false), { code: 'FAILED_PRECONDITION', reason: 'PROTOCOL_VIOLATION', message: /is not in doubt \(failed\)/ });
});

t.test('the target committed and then lost the guest (its agent restarted): the copy here, the last one, is kept in doubt for an operator', async (t) => {
  const s = setup();
  s.peer.outcome = async () => pb.OutcomeResponse.create({ outcome: Outcome.COMMITTED, detail: 'committed here, but the guest is no longer here', durable: true, guestPresent: false });
  await toDoubt(s);
  await s.clock.advance(200);
  await s.clock.advance(400);
  t.equal(s.job.stats.status, 'in-doubt', 'not dropped on its own: it is the last copy');
  t.equal(s.guest.state, 'suspended');
  t.throws(() => s.job.resolve('resume-here', false), { reason: 'MIGRATION_IN_DOUBT', message: /the target committed but lost the guest .* is the only one left/ });
  s.job.resolve('resume-here', true);
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'failed');
  t.equal(s.guest.state, 'running', 'the operator ran the last copy');
});

t.test('an operator may force the copy here to be dropped: completed, and the job says it was forced', async (t) => {
  const s = setup();
  await toDoubt(s);
  s.job.resolve('discard-here', true);
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'completed');
  t.equal(stats.errorReason, 'MIGRATION_IN_DOUBT');
  t.match(stats.error, /^completed by an operator \(forced\): the copy here was dropped without the target's word/);
  t.ok(s.guest.discarded);
});

t.test('the agent stops while a job is in doubt: the job ends failed, its guest left suspended', async (t) => {
  const s = setup();
  await toDoubt(s);
  s.job.abandon('agent shutting down');
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'failed');
  t.equal(stats.errorReason, 'MIGRATION_IN_DOUBT');
  t.match(stats.error, /^still in doubt when the agent stopped \(agent shutting down\)/);
  t.equal(s.guest.state, 'suspended');
  t.notOk(s.guest.discarded);
});

t.test('a commit answer later than its deadline (from the downtime limit): in doubt, never resumed blindly', async (t) => {
  const s = setup();
  s.peer.outcome = async () => pb.OutcomeResponse.create({ outcome: Outcome.NOT_COMMITTED, detail: 'fenced', durable: true });
  await toCommit(s);
  // 300 ms limit: the commit's deadline is max(1000, 2 x 300) ms.
  await s.clock.advance(999);
  t.equal(s.job.stats.status, 'committing');
  await s.clock.advance(300);
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'failed');
  t.equal(stats.errorReason, 'SWITCHOVER_DEADLINE_EXCEEDED');
  t.match(stats.error, /^the commit's answer was lost \(no answer to the commit within 1000 ms\)/);
  t.equal(s.guest.state, 'running');
});

t.test('a stop-and-copy past its deadline: the commit was never sent, the guest resumes here at once', async (t) => {
  const s = setup();
  const channel = await toStop(s);
  await until(s, () => channel.writtenOf('unit').some((u) => (u.body as { final: boolean }).final), 'the final unit');
  // The target never reports the final unit replayed: 300 ms limit, deadline max(1000, 4 x 300) ms.
  await s.clock.advance(1_199);
  t.equal(s.job.stats.status, 'stop-and-copy');
  await s.clock.advance(1);
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'failed');
  t.equal(stats.errorCode, 'DEADLINE_EXCEEDED');
  t.equal(stats.errorReason, 'SWITCHOVER_DEADLINE_EXCEEDED');
  t.match(stats.error, /^stop-and-copy took more than 1200 ms/);
  t.equal(channel.commitDigestSent, '', 'no commit was sent');
  t.ok(channel.abortReason.startsWith('stop-and-copy took more than'), 'the target is told to drop its replica');
  t.equal(s.guest.state, 'running');
  t.equal(stats.downtimeMs, 1_200, 'what the guest saw');
  t.equal(s.peer.outcomeQueries.length, 0, 'nothing in doubt');
});

t.test("a matched commit whose activation confirmation is lost: completed (the guest is the target's), downtime asked of the target", async (t) => {
  const s = setup();
  s.peer.clockOffset.add(990, 1_000, 5_000, 'run-2');
  s.peer.outcome = async () => pb.OutcomeResponse.create({ outcome: Outcome.COMMITTED, resumedAtMs: 5_035, agentInstanceId: 'run-2', durable: true, guestPresent: true });
  const channel = await toCommit(s);
  channel.commitResult = pb.CommitResult.create({ matched: true, targetDigest: '0123456789abcdef' });
  channel.notify();
  await until(s, () => s.job.stats.phase === 'activation', 'activation');
  await s.clock.advance(40);
  channel.fail(new UnavailableError('link cut'));
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'completed');
  t.ok(s.guest.discarded);
  t.equal(stats.downtimeMs, 30, "the target resumed it 30 ms after our suspend (offset 4005 ms)");
});

t.test('a clock offset that would put the resume before the commit went: the downtime is at least suspend to commit plus commit to resume', async (t) => {
  const s = setup();
  // The offset is known to within 5 ms; this one says the target resumed 10 ms after our suspend,
  // while the commit went 25 ms after it, and the target took 3 ms from the commit to the resume.
  s.peer.clockOffset.add(990, 1_000, 5_000, '');
  const channel = await toCommit(s);
  channel.commitResult = pb.CommitResult.create({ matched: true, targetDigest: '0123456789abcdef' });
  channel.activated = pb.Activated.create({ resumedAtMs: 5_015, commitToResumeMs: 3 });
  await s.clock.advance(4);
  channel.notify();
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'completed');
  t.equal(stats.downtimeMs, 28, 'the lower bound: 25 ms to the commit, 3 ms from it to the resume');
});

t.test('a cancellation during the checkpoint: the target is told to abort, the guest runs on', async (t) => {
  const s = setup();
  await until(s, () => s.peer.channel !== null, 'transfer opened');
  s.job.cancel('operator said so');
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'cancelled');
  t.equal(stats.errorCode, 'ABORTED');
  t.equal(stats.errorReason, 'CANCELLED');
  t.equal(s.peer.channel!.abortReason, 'operator said so');
  t.equal(s.peer.released.length, 0, 'the open transfer held the reservation: the abort releases it');
  t.equal(s.guest.state, 'running');
});

t.test('the fault hook aborts as a phase begins; before the transfer opened the reservation is released by call', async (t) => {
  const s = setup({}, { hooks: faultHooks({ abortAtPhase: 'checkpoint' }) });
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'cancelled');
  t.equal(stats.error, 'fault injection: abort at phase checkpoint');
  t.same(s.peer.released, [{ reservationId: 'reservation-1', reason: 'fault injection: abort at phase checkpoint' }]);
  t.equal(s.peer.channel, null, 'no transfer was opened');
  t.notOk(s.phases.includes('checkpoint'), 'watchers never saw the aborted phase begin');
});

t.test('the faulty channel corrupts the commit digest on the wire only', async (t) => {
  const s = setup({}, { hooks: faultHooks({ corruptCommitDigest: true }) });
  const channel = await toCommit(s);
  t.equal(channel.commitDigestSent, '1123456789abcdef', 'the digest sent was flipped');
  t.equal(s.job.stats.sourceDigest, '0123456789abcdef', 'the guest digest is the real one');
  channel.commitResult = pb.CommitResult.create({ matched: false, targetDigest: '0123456789abcdef' });
  channel.notify();
  const stats = (await s.done) as SourceMigration['stats'];
  t.match(stats.error, /differs from the digest sent, 1123456789abcdef$/);
});
