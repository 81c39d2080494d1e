// The guest-disruption figure: the pure function (shared/disruption.ts) and the source's meter
// over a migration's window (source-agent/disruption-meter.ts), on a manual clock and a guest whose
// runner counters the test scripts.
import t from 'tap';
import { AssertionFailure } from '../shared/assert.js';
import { ManualClock } from '../shared/clock.js';
import { type DisruptionInput, guestDisruption, type GuestRunnerStats } from '../shared/disruption.js';
import { emptyStats, type MigrationStats } from '../shared/stats.js';
import { DisruptionMeter } from '../source-agent/disruption-meter.js';
import { FakeGuest, FakeRecorder } from './support/fake-source.js';

const input = (fields: Partial<DisruptionInput>): DisruptionInput => ({ unitMs: 10, windowMs: 1000, downtimeMs: 0, stallMs: 0, throttledMs: 0, unitsRun: 100, ...fields });

t.test('a guest on schedule but for the downtime loses the downtime, once', async (t) => {
  t.same(guestDisruption(input({ downtimeMs: 100, unitsRun: 90 })), { disruptionMs: 100, unitsDue: 100, lostScheduleMs: 0 }, 'the 10 units missed are the downtime');
  t.same(guestDisruption(input({})), { disruptionMs: 0, unitsDue: 100, lostScheduleMs: 0 }, 'an undisturbed guest');
});

t.test('a stall counts whether the guest caught it up or not, never twice', async (t) => {
  t.equal(guestDisruption(input({ stallMs: 50, unitsRun: 100 })).disruptionMs, 50, 'caught up in its idle time: the stall itself');
  t.same(guestDisruption(input({ stallMs: 50, unitsRun: 95 })), { disruptionMs: 50, unitsDue: 100, lostScheduleMs: 0 }, 'never caught up: the 5 units missed are the stall');
  t.same(guestDisruption(input({ stallMs: 50, unitsRun: 90 })), { disruptionMs: 100, unitsDue: 100, lostScheduleMs: 50 }, 'behind by more than it stalled: the rest is lost schedule');
});

t.test('a guest the host runs late loses the units it did not run', async (t) => {
  t.same(guestDisruption(input({ unitsRun: 80 })), { disruptionMs: 200, unitsDue: 100, lostScheduleMs: 200 });
  t.same(guestDisruption(input({ downtimeMs: 30, stallMs: 20, unitsRun: 80 })), { disruptionMs: 200, unitsDue: 100, lostScheduleMs: 150 }, 'the downtime and the stall explain 50 of the 200 ms');
});

t.test('throttled work is lost time of its own', async (t) => {
  // 100 units at throttle 0.7: 0.3 x 10 ms each, though every unit ran on time.
  t.same(guestDisruption(input({ throttledMs: 300 })), { disruptionMs: 300, unitsDue: 100, lostScheduleMs: 0 });
  t.equal(guestDisruption(input({ throttledMs: 300, downtimeMs: 20, unitsRun: 98 })).disruptionMs, 320);
});

t.test('units due are whole units; one unit run ahead of its slot is not a gain', async (t) => {
  t.equal(guestDisruption(input({ windowMs: 1009 })).unitsDue, 100);
  t.same(guestDisruption(input({ windowMs: 1009, unitsRun: 101 })), { disruptionMs: 0, unitsDue: 100, lostScheduleMs: 0 });
  t.same(guestDisruption(input({ downtimeMs: 100, unitsRun: 101 })), { disruptionMs: 100, unitsDue: 100, lostScheduleMs: 0 }, 'a guest ahead still lost its downtime');
});

t.test('without a count of the units run, the figure is what was measured directly', async (t) => {
  t.same(guestDisruption(input({ downtimeMs: 40, stallMs: 10, throttledMs: 5, unitsRun: undefined })), { disruptionMs: 55, unitsDue: 0, lostScheduleMs: 0 });
});

t.test('inputs no correct caller gives are assertions', async (t) => {
  t.throws(() => guestDisruption(input({ unitMs: 0 })), AssertionFailure);
  t.throws(() => guestDisruption(input({ stallMs: -1 })), AssertionFailure);
  t.throws(() => guestDisruption(input({ windowMs: NaN })), AssertionFailure);
});

/** A guest whose runner counters the test sets. */
class CountingGuest extends FakeGuest {
  counters: GuestRunnerStats = { unitsRun: 0, stallMs: 0, throttledMs: 0 };
  runnerStats(): GuestRunnerStats {
    return this.counters;
  }
}

function meterSetup(before: GuestRunnerStats = { unitsRun: 0, stallMs: 0, throttledMs: 0 }) {
  const clock = new ManualClock(1_000);
  const guest = new CountingGuest('vm-1', new FakeRecorder(1));
  guest.counters = before;
  const stats: MigrationStats = { ...emptyStats('crtr', 64 * 2 ** 20), unitMs: 10 };
  return { clock, guest, stats, meter: new DisruptionMeter(guest, clock, clock.now()) };
}

t.test('meter: counts from the start of the migration, not from the guest boot', async (t) => {
  const { clock, guest, stats, meter } = meterSetup({ unitsRun: 5000, stallMs: 700, throttledMs: 90 });
  await clock.advance(200);
  guest.counters = { unitsRun: 5020, stallMs: 730, throttledMs: 90 };
  meter.refresh(stats, null);
  t.match(stats, { disruptionWindowMs: 200, unitsDue: 20, unitsRun: 20, stallMs: 30, throttledMs: 0, lostScheduleMs: 0, disruptionMs: 30 }, 'the 30 ms stalled during the migration, caught up');
});

t.test('meter: CR/TR or pre-copy: the window closes at the resume on the target', async (t) => {
  const { clock, guest, stats, meter } = meterSetup();
  await clock.advance(500);
  guest.counters = { unitsRun: 45, stallMs: 10, throttledMs: 12 };
  meter.suspending();
  // The final unit that the suspend seals counts as run; it was taken at the suspend, not after.
  guest.counters = { unitsRun: 46, stallMs: 10, throttledMs: 12 };
  await clock.advance(30);
  meter.refresh(stats, null);
  t.match(stats, { disruptionWindowMs: 530, unitsDue: 53, unitsRun: 45 }, 'suspended, not yet resumed: the window so far');
  t.equal(stats.disruptionMs, 30 + 10 + 12 + 40, 'downtime so far, the stall, the throttled work, and the 40 ms the guest was behind at the suspend beyond its stall');
  stats.downtimeMs = 25;
  await clock.advance(100);
  meter.refresh(stats, null);
  t.match(stats, { disruptionWindowMs: 525, unitsDue: 52, unitsRun: 45, lostScheduleMs: 35, disruptionMs: 25 + 10 + 12 + 35 }, 'resumed there: suspend + downtime, however late the refresh');
});

t.test('meter: a vCPU that finishes its unit after the suspend call: the downtime starts when it stopped', async (t) => {
  const { clock, guest, stats, meter } = meterSetup();
  await clock.advance(500);
  guest.counters = { unitsRun: 48, stallMs: 0, throttledMs: 0 };
  // The vCPU (on its own thread) runs 7 ms more, finishing one unit, then stops; its suspend
  // returns 1 ms later; the final unit it seals counts as run.
  guest.suspend = async () => {
    await clock.advance(8);
    guest.counters = { unitsRun: 50, stallMs: 0, throttledMs: 0, suspendRanMs: 7, suspendRanUnits: 1 };
  };
  t.equal(await meter.suspend(), 7, 'the guest ran 7 ms after the call');
  stats.downtimeMs = 20;
  meter.refresh(stats, null);
  t.match(stats, { disruptionWindowMs: 527, unitsDue: 52, unitsRun: 49, disruptionMs: 20 + 10 }, 'the window runs to the stop, with the unit it finished (49 run of 52 due: 20 ms down, 10 ms late)');
  const other = meterSetup();
  other.guest.counters = { unitsRun: 0, stallMs: 0, throttledMs: 0, suspendRanMs: 0 };
  t.equal(await other.meter.suspend(), 0, 'a vCPU stopped at once (inline, between units) changes nothing');
});

t.test('meter: post-copy: the guest on the target counts until its last page', async (t) => {
  const { clock, guest, stats, meter } = meterSetup();
  await clock.advance(20);
  guest.counters = { unitsRun: 2, stallMs: 0, throttledMs: 0 };
  meter.suspending();
  stats.downtimeMs = 5;
  await clock.advance(1_000);
  meter.refresh(stats, { guestRunMs: 300, guestUnitsRun: 25, guestFetchWaitMs: 40 });
  // Window 20 + 5 + 300 = 325 ms: 32 units due, 27 run; 50 ms behind, 45 of them the downtime and the waits.
  t.match(stats, { disruptionWindowMs: 325, unitsDue: 32, unitsRun: 27, stallMs: 0, targetStallMs: 40, lostScheduleMs: 5, disruptionMs: 50 });
  t.ok(stats.disruptionMs > stats.downtimeMs, 'disruption exceeds the downtime');
});

t.test('meter: a migration aborted after the suspend: the guest runs here again, its lost units count', async (t) => {
  const { clock, guest, stats, meter } = meterSetup();
  await clock.advance(300);
  guest.counters = { unitsRun: 30, stallMs: 0, throttledMs: 0 };
  meter.suspending();
  await clock.advance(100);
  meter.resumedHere();
  await clock.advance(100);
  guest.counters = { unitsRun: 40, stallMs: 0, throttledMs: 0 };
  meter.refresh(stats, null);
  t.match(stats, { disruptionWindowMs: 500, unitsDue: 50, unitsRun: 40, lostScheduleMs: 100, disruptionMs: 100 }, 'the 100 ms suspended are 10 units never run');
});

t.test('meter: a driver without runner counters reports the downtime and its recorder stall', async (t) => {
  const clock = new ManualClock(0);
  const recorder = new FakeRecorder(1);
  const guest = new FakeGuest('vm-1', recorder);
  const stats: MigrationStats = { ...emptyStats('crtr', 64 * 2 ** 20), unitMs: 10 };
  const meter = new DisruptionMeter(guest, clock, 0);
  meter.suspending();
  stats.downtimeMs = 15;
  meter.refresh(stats, null);
  t.match(stats, { unitsDue: 0, unitsRun: 0, lostScheduleMs: 0, disruptionMs: 15 });
});
