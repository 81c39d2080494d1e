// The decision journal (shared/journal.ts), the target's decisions and outcome answers drawn from
// it (target-agent/decisions.ts), the switchover's deadlines (shared/switchover.ts) and the
// clock offset the source measures (source-agent/clock-offset.ts).
import { appendFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { ManualClock } from '../shared/clock.js';
import { decodeLine, encodeLine, type JournalRecord, openJournal } from '../shared/journal.js';
import { switchoverDeadlines } from '../shared/switchover.js';
import { pb } from '../shared/transport/grpc.js';
import { ClockOffset } from '../source-agent/clock-offset.js';
import { recoverSourceRecords } from '../source-agent/decisions.js';
import { TargetDecisions } from '../target-agent/decisions.js';
import { quietLog } from './support/fake-source.js';

const { Outcome } = pb.OutcomeResponse;

function stateDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmmigrate-journal-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function thrown(f: () => void): unknown {
  try {
    f();
  } catch (error) {
    return error;
  }
  return undefined;
}

const entry = (migrationId: string, state: JournalRecord['state'], role: JournalRecord['role'] = 'target') => ({ migrationId, role, state, guestId: 'vm-1', peer: '' });

t.test('a line is its record behind a crc32; a damaged line is refused', async (t) => {
  const record: JournalRecord = { migrationId: 'm-1', role: 'target', state: 'committed', guestId: 'vm-1', peer: '', atMs: 1234 };
  const line = encodeLine(record);
  t.match(line, /^[0-9a-f]{8} \{.*\}\n$/);
  t.same(decodeLine(line.slice(0, -1)), record);
  t.equal(decodeLine(line.slice(0, -1).replace('committed', 'discarded')), null, 'a changed byte fails the checksum');
  t.equal(decodeLine('00000000 {}'), null);
  t.equal(decodeLine('x'.repeat(5000)), null, 'an over-long line');
});

t.test('records survive a reopen; the latest per migration wins; a torn last line is ignored, a damaged one counted', async (t) => {
  const dir = stateDir(t);
  const j = openJournal(dir);
  t.equal(j.durable, true);
  j.append(entry('m-1', 'reserved'));
  j.append(entry('m-1', 'committed'));
  j.append(entry('m-2', 'reserved'));
  j.append(entry('m-1', 'commit-sent', 'source'));
  j.close();
  // A crash mid-append leaves a line without its newline; a flipped byte damages another.
  const path = join(dir, 'decisions.journal');
  const text = readFileSync(path, 'utf8').split('\n');
  text[0] = text[0].replace('reserved', 'released');
  writeFileSync(path, text.join('\n'));
  appendFileSync(path, encodeLine({ ...entry('m-2', 'committed'), atMs: 1 }).slice(0, 30));
  const again = openJournal(dir);
  t.equal(again.latest('target', 'm-1')?.state, 'committed');
  t.equal(again.latest('target', 'm-2')?.state, 'reserved', 'the torn commit record never counted');
  t.equal(again.latest('source', 'm-1')?.state, 'commit-sent', 'roles are apart');
  t.equal(again.corruptLines, 1);
  again.close();
});

t.test('the file is compacted past its size bound, to each migration latest record; old ended ones go', async (t) => {
  const dir = stateDir(t);
  const j = openJournal(dir, { bytesMax: 4096, recordsMax: 20, retentionMs: 3600_000 });
  for (let i = 0; i < 200; i++) {
    j.append(entry(`m-${i}`, 'reserved'));
    j.append(entry(`m-${i}`, i % 2 === 0 ? 'committed' : 'discarded'));
  }
  j.append({ ...entry('m-old', 'committed'), atMs: Date.now() - 7200_000 });
  j.append(entry('m-open', 'reserved'));
  const size = statSync(join(dir, 'decisions.journal')).size;
  t.ok(size <= 4096 + 200, `the file stays near its bound (${size} bytes)`);
  t.ok(j.entries().length <= 22, `${j.entries().length} records kept (recordsMax 20, plus the newest)`);
  t.equal(j.latest('target', 'm-199')?.state, 'discarded', 'the newest ended ones are kept');
  t.equal(j.latest('target', 'm-open')?.state, 'reserved', 'an open migration is never dropped');
  j.close();
  const again = openJournal(dir, { bytesMax: 4096, recordsMax: 20, retentionMs: 3600_000 });
  t.equal(again.latest('target', 'm-old'), undefined, 'past the retention');
  t.equal(again.latest('target', 'm-open')?.state, 'reserved');
  again.close();
});

t.test('one agent per state directory: a live holder of the lock refuses a second; a dead one does not', async (t) => {
  const dir = stateDir(t);
  const j = openJournal(dir);
  t.throws(() => openJournal(dir), { message: /in use by another agent \(process \d+/ });
  j.close();
  writeFileSync(join(dir, 'agent.lock'), '999999999\n');
  const k = openJournal(dir);
  t.equal(k.durable, true, 'a lock left by a process that is gone is taken over');
  k.close();
});

t.test('without a state directory the journal is in memory', async (t) => {
  const j = openJournal(undefined);
  t.equal(j.durable, false);
  t.equal(j.path, null);
  j.append(entry('m-1', 'committed'));
  t.equal(j.latest('target', 'm-1')?.state, 'committed');
});

t.test('target decisions: committed stays committed; an undecided migration is fenced by the question; a restart discards what was open', async (t) => {
  const dir = stateDir(t);
  const clock = new ManualClock(0);
  let journal = openJournal(dir);
  let d = new TargetDecisions(journal, 'run-1', clock, quietLog);
  d.reserved('m-commit', 'vm-1', '');
  d.committed('m-commit', 'vm-1');
  d.resumed('m-commit', 42);
  d.reserved('m-open', 'vm-2', '');
  d.reserved('m-live', 'vm-3', '');
  const noLive = { live: () => null, present: () => true };
  const committed = d.outcome('m-commit', 0, noLive, () => t.fail('a committed migration is not fenced'));
  t.equal(committed.outcome, Outcome.COMMITTED);
  t.equal(committed.guestPresent, true);
  t.equal(committed.resumedAtMs, 42);
  t.equal(committed.agentInstanceId, 'run-1');
  let fenced = '';
  const live = d.outcome('m-live', 0, noLive, (reason) => (fenced = reason));
  t.equal(live.outcome, Outcome.NOT_COMMITTED);
  t.match(fenced, /fenced by an outcome query/);
  t.equal(journal.latest('target', 'm-live')?.state, 'discarded');
  t.match(thrown(() => d.checkUndecided('m-live')), { reason: 'MIGRATION_DECIDED' });
  t.match(thrown(() => d.checkUndecided('m-commit')), { reason: 'MIGRATION_DECIDED' });
  t.doesNotThrow(() => d.checkUndecided('m-new'));
  journal.close();

  journal = openJournal(dir);
  d = new TargetDecisions(journal, 'run-2', clock, quietLog);
  t.equal(d.recoverAtStart(), 1, 'm-open was reserved and never decided');
  t.equal(d.outcome('m-open', 0, noLive, () => {}).outcome, Outcome.NOT_COMMITTED);
  const after = d.outcome('m-commit', 0, { live: () => null, present: () => false }, () => {});
  t.equal(after.outcome, Outcome.COMMITTED);
  t.equal(after.resumedAtMs, 0, "the resume instant was of the last run's clock");
  t.equal(after.guestPresent, false, 'the guest went with the last run');
  t.match(after.detail, /no longer here/);
  journal.close();
});

t.test('target decisions: a journal that cannot write refuses the commit (JOURNAL_UNAVAILABLE)', async (t) => {
  const journal = openJournal(undefined);
  journal.append = () => {
    throw new Error('ENOSPC: no space left on device');
  };
  const d = new TargetDecisions(journal, 'run-1', new ManualClock(0), quietLog);
  t.throws(() => d.committed('m-1', 'vm-1'), { code: 'UNAVAILABLE', reason: 'JOURNAL_UNAVAILABLE', message: /ENOSPC.*not committed/ });
});

t.test('source records left in doubt by a previous run are recorded abandoned at start', async (t) => {
  const journal = openJournal(undefined);
  journal.append(entry('m-1', 'commit-sent', 'source'));
  journal.append(entry('m-2', 'commit-sent', 'source'));
  journal.append(entry('m-2', 'handed-over', 'source'));
  t.equal(recoverSourceRecords(journal, quietLog), 1);
  t.equal(journal.latest('source', 'm-1')?.state, 'abandoned');
  t.equal(journal.latest('source', 'm-2')?.state, 'handed-over');
});

t.test('switchover deadlines: a multiple of the expected downtime, never under the floor, plus round trips', async (t) => {
  t.same(switchoverDeadlines({ downtimeLimitMs: 300, expectedDowntimeMs: 50, rttMs: 0 }), { stopAndCopyMs: 1_200, commitMs: 1_000 });
  t.same(switchoverDeadlines({ downtimeLimitMs: 100, expectedDowntimeMs: 0, rttMs: 10 }), { stopAndCopyMs: 1_040, commitMs: 1_040 });
  // A forced stop that expects 5 s of downtime is given the time it needs.
  t.same(switchoverDeadlines({ downtimeLimitMs: 300, expectedDowntimeMs: 5_000, rttMs: 50 }), { stopAndCopyMs: 20_200, commitMs: 10_200 });
  t.same(switchoverDeadlines({ downtimeLimitMs: 300, expectedDowntimeMs: Number.NaN, rttMs: Number.NaN }), { stopAndCopyMs: 1_200, commitMs: 1_000 });
});

t.test('clock offset: the fastest round trip wins; a restarted target starts afresh', async (t) => {
  const o = new ClockOffset();
  t.notOk(o.knownFor());
  o.add(100, 140, 10_120, 'a'); // rtt 40: offset 10_120 - 120 = 10_000
  t.equal(o.toLocal(10_500), 500);
  o.add(200, 210, 10_206, 'a'); // rtt 10: offset 10_206 - 205 = 10_001
  t.equal(o.toLocal(10_501), 500);
  t.equal(o.uncertaintyMs, 5);
  o.add(300, 400, 99_999, 'a'); // slower: ignored
  t.equal(o.toLocal(10_501), 500);
  t.ok(o.knownFor('a'));
  t.notOk(o.knownFor('b'));
  o.add(500, 520, 20, 'b'); // a new run of the target: its own clock
  t.ok(o.knownFor('b'));
  t.equal(o.toLocal(20), 510);
  o.add(600, 590, 1, 'b'); // a negative round trip is no sample
  t.equal(o.toLocal(20), 510);
});
