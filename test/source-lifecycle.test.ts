// The source's lifecycle (source-agent/migration.ts) over a fake target peer and a manual clock:
// prepare, switchover, commit, activation, and what a failure, a cancellation, a refused commit
// or a lost commit answer leave behind. No gRPC, no second process: the test plays the target.
import t from 'tap';
import { ManualClock } from '../shared/clock.js';
import type { MigrationPhase } from '../shared/stats.js';
import { pb } from '../shared/transport/grpc.js';
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

t.test('a lost commit answer: the guest stays suspended here (never resumed past the commit point)', async (t) => {
  const s = setup();
  const channel = await toCommit(s);
  channel.fail(new (await import('../shared/errors.js')).UnavailableError('the target went away'));
  const stats = (await s.done) as SourceMigration['stats'];
  t.equal(stats.status, 'failed');
  t.match(stats.error, /^commit outcome unknown \(the target went away\): the guest is kept suspended on the source/);
  t.equal(stats.errorReason, 'PEER_UNAVAILABLE');
  t.equal(s.guest.state, 'suspended');
  t.equal(s.guest.resumed, 0);
  t.notOk(s.guest.discarded);
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
