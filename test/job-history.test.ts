// A job's numbered history (source-agent/job-history.ts) and the target's incoming jobs
// (target-agent/incoming-jobs.ts), without agents: events fed by hand.
import { EventEmitter } from 'node:events';
import t from 'tap';
import { ManualClock } from '../shared/clock.js';
import { emptyStats } from '../shared/stats.js';
import { EVENTS_KEPT, JobHistory } from '../source-agent/job-history.js';
import type { SourceMigration } from '../source-agent/migration.js';
import { IncomingJobs, migrationPhaseOf } from '../target-agent/incoming-jobs.js';
import type { Reservation } from '../target-agent/reservation.js';

function fakeJob() {
  const job = Object.assign(new EventEmitter(), { stats: emptyStats('crtr', 1), over: false, isOver: () => job.over });
  return job;
}

t.test('JobHistory: phases in order without repeats, numbered events, resume after a sequence', async (t) => {
  const clock = new ManualClock(0, 1_000_000);
  const job = fakeJob();
  const history = new JobHistory(job as unknown as SourceMigration, clock);
  t.same(history.phasesPassed, ['pre-migration'], 'the phase the job starts in');
  job.emit('phase', 'pre-migration');
  job.emit('phase', 'reservation');
  job.stats.phase = 'log-transfer';
  job.emit('phase', 'log-transfer');
  job.emit('round', 'round 1: stop granted');
  await clock.advance(500);
  job.over = true;
  job.stats.error = '';
  job.emit('phase', 'done');
  job.emit('end');
  t.same(history.phasesPassed, ['pre-migration', 'reservation', 'log-transfer', 'done']);
  t.equal(history.endedAtMs, 1_000_500);
  t.equal(history.lastSequence, 5);
  const after2 = history.since(2);
  t.same(after2.events.map((e) => [e.sequence, e.kind]), [[3, 'phase'], [4, 'round'], [5, 'end']]);
  t.equal(after2.gap, false);
  t.same(history.since(5).events, [], 'nothing after the last');
});

t.test('JobHistory: only the last EVENTS_KEPT events are kept; a resume from before them says so', async (t) => {
  const job = fakeJob();
  const history = new JobHistory(job as unknown as SourceMigration, new ManualClock());
  for (let i = 0; i < EVENTS_KEPT + 10; i++) job.emit('round', `round ${i}`);
  const { events, gap } = history.since(1);
  t.equal(events.length, EVENTS_KEPT);
  t.equal(gap, true);
  t.equal(history.since(history.lastSequence - 1).gap, false);
});

t.test('IncomingJobs: from the reservation to the end, kept once ended', async (t) => {
  const clock = new ManualClock(0, 2_000_000);
  const jobs = new IncomingJobs(clock);
  const reservation = { id: 'r1', migrationId: 'job-1', replica: { id: 'vm-1' }, method: null } as unknown as Reservation;
  jobs.reserved(reservation, 64 * 2 ** 20);
  t.equal(jobs.get('job-1')?.phase, 'reservation');
  t.equal(jobs.activeFor('vm-1')?.jobId, 'job-1');
  let phase: 'restoring' | 'replaying' | 'committed' | 'activated' = 'restoring';
  jobs.opened('job-1', () => ({ phase, method: 'crtr', counters: { unitsReplayed: 7 } }));
  for (const p of ['restoring', 'replaying', 'committed', 'activated'] as const) {
    phase = p;
    jobs.phaseChanged('job-1', p, 'crtr');
  }
  t.same(jobs.get('job-1')?.phasesPassed, ['reservation', 'checkpoint', 'log-transfer', 'commitment', 'activation']);
  await clock.advance(10);
  jobs.ended('job-1', 'the source closed the stream');
  const ended = jobs.get('job-1')!;
  t.equal(ended.state, 'succeeded');
  t.equal(ended.error, '', 'an end after the activation is no failure');
  t.equal(ended.counters.unitsReplayed, 7);
  t.equal(ended.endedAtMs, 2_000_010);
  t.equal(jobs.activeFor('vm-1'), undefined);
  jobs.ended('job-1', 'again');
  t.equal(jobs.get('job-1')?.endedAtMs, 2_000_010, 'the first end counts');

  jobs.reserved({ id: 'r2', migrationId: 'job-2', replica: { id: 'vm-2' }, method: null } as unknown as Reservation, 1);
  jobs.ended('job-2', 'not opened within 60000 ms');
  t.same(jobs.get('job-2'), { ...jobs.get('job-2'), state: 'failed', error: 'not opened within 60000 ms', phase: 'done' });
});

t.test('migrationPhaseOf: a transfer phase as a migration phase, per method', async (t) => {
  t.equal(migrationPhaseOf('replaying', 'crtr'), 'log-transfer');
  t.equal(migrationPhaseOf('replaying', 'precopy'), 'stop-and-copy');
  t.equal(migrationPhaseOf('restoring', 'postcopy'), 'stop-and-copy');
  t.equal(migrationPhaseOf('postcopy', 'postcopy'), 'page-push');
  t.equal(migrationPhaseOf('ended', null), 'done');
});
