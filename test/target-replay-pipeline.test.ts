// The target's replay pipeline (target-agent/replay-pipeline.ts) with its progress feedback
// (feedback.ts), against a fake checkpoint-replay capability and a manual clock: no gRPC, no
// second process. The replay slices run when the test runs what the pipeline deferred.
import { pino } from 'pino';
import t from 'tap';
import { ManualClock, type Timer } from '../shared/clock.js';
import { REPLAY_SHARE_OF_DOWNTIME } from '../shared/convergence.js';
import type { CheckpointReplayTarget } from '../shared/driver/types.js';
import { CorruptDataError, LimitExceededError } from '../shared/errors.js';
import { Feedback, type ProgressReport } from '../target-agent/feedback.js';
import { REPLAY_PIPELINE, ReplayPipeline, shouldRequestStop, type StopRequest } from '../target-agent/replay-pipeline.js';
import { REPLAY_RATE, ReplayRateMeter } from '../target-agent/replay-rate.js';

/**
 * A ManualClock whose time also moves inside a call: `work(ms)` is time a replica spends applying
 * a unit. Timers are set relative to now() as it reads then.
 */
class WorkClock extends ManualClock {
  private workedMs = 0;

  override now(): number {
    return super.now() + this.workedMs;
  }

  override timeout(ms: number, fn: () => void): Timer {
    return super.timeout(ms + this.workedMs, fn);
  }

  work(ms: number): void {
    this.workedMs += ms;
  }
}

/** A unit as the fake replica encodes it: [sequence, final, corrupt]. */
function unit(sequence: number, options: { final?: boolean; corrupt?: boolean; bytes?: number } = {}) {
  const bytes = new Uint8Array(options.bytes ?? 100);
  bytes[0] = sequence;
  bytes[1] = options.final ? 1 : 0;
  bytes[2] = options.corrupt ? 1 : 0;
  return { sequence, bytes, final: options.final ?? false };
}

/** Replays the fake units in order; each costs `costMs` of the clock and covers `guestNs`. */
class FakeReplay implements Pick<CheckpointReplayTarget, 'applyUnit'> {
  readonly applied: number[] = [];
  costMs = 0;
  guestNs = 10e6;

  constructor(private readonly clock: WorkClock) {}

  applyUnit(bytes: Uint8Array): { sequence: number; guestNs: number; final: boolean } {
    if (bytes[2] === 1) throw new CorruptDataError(`unit ${bytes[0]}: checksum mismatch`);
    this.clock.work(this.costMs);
    this.applied.push(bytes[0]);
    return { sequence: bytes[0], guestNs: this.guestNs, final: bytes[1] === 1 };
  }
}

interface HarnessOptions {
  unitWindow?: number;
  unitWindowBytes?: number;
  progressIntervalMs?: number;
  downtimeLimitMs?: number;
  unitMs?: number;
  switchoverDeadlineMs?: number;
}

/** A pipeline wired to its feedback as a session wires them, with everything it does recorded. */
function harness(options: HarnessOptions = {}) {
  const clock = new WorkClock(1_000);
  const replay = new FakeReplay(clock);
  const deferred: Array<() => void> = [];
  const progress: ProgressReport[] = [];
  const stopRequests: StopRequest[] = [];
  const failures: unknown[] = [];
  const digests: number[] = [];
  const state = { phase: 'restoring' as 'restoring' | 'replaying' | 'ended' };
  const feedback = new Feedback(
    { progressIntervalMs: options.progressIntervalMs ?? 20, downtimeLimitMs: options.downtimeLimitMs ?? 300, unitMs: options.unitMs ?? 10 },
    {
      reportable: () => state.phase !== 'ended',
      counters: () => pipeline.counters(),
      send: (report) => progress.push(report),
      afterReport: (nowMs, report) => pipeline.afterReport(nowMs, report.remainingUnitsAllowed),
    },
    clock,
  );
  const pipeline: ReplayPipeline = new ReplayPipeline(
    { unitWindow: options.unitWindow ?? 64, unitWindowBytes: options.unitWindowBytes ?? 2 ** 20, switchoverDeadlineMs: options.switchoverDeadlineMs ?? Number.POSITIVE_INFINITY },
    {
      replay,
      refreshDigest: () => digests.push(clock.now()),
      replaying: () => state.phase === 'replaying',
      clock,
      defer: (fn) => deferred.push(fn),
      feedback: { progress: (force) => feedback.progress(force), stopRequest: (request) => stopRequests.push(request) },
      onFailure: (error) => {
        failures.push(error);
        state.phase = 'ended';
      },
      log: pino({ level: 'silent' }),
    },
  );
  return {
    clock,
    replay,
    pipeline,
    state,
    deferred,
    progress,
    stopRequests,
    failures,
    digests,
    /** The checkpoint is restored: replay starts. */
    restored() {
      state.phase = 'replaying';
      feedback.progress(true);
      pipeline.start();
    },
    /** Runs the next deferred replay slice; false if none was scheduled. */
    runSlice(): boolean {
      const next = deferred.shift();
      next?.();
      return next !== undefined;
    },
    runAll() {
      while (deferred.length > 0) deferred.shift()?.();
    },
  };
}

t.test('units queued while the checkpoint is restored replay in order once it is, and later ones as they come', async (t) => {
  const h = harness();
  for (const s of [1, 2, 3]) h.pipeline.enqueue(unit(s));
  t.same(h.deferred.length, 0, 'no replay before the checkpoint is restored');
  t.match(h.pipeline.counters(), { unitsReceived: 3, unitsReplayed: 0, remainingUnits: 3, remainingUnitBytes: 300 });
  h.restored();
  h.runAll();
  t.same(h.replay.applied, [1, 2, 3]);
  h.pipeline.enqueue(unit(4));
  h.pipeline.enqueue(unit(5));
  t.equal(h.deferred.length, 1, 'one slice scheduled for both');
  h.runAll();
  t.same(h.replay.applied, [1, 2, 3, 4, 5]);
  t.match(h.pipeline.counters(), { unitsReceived: 5, unitsReplayed: 5, remainingUnits: 0, remainingUnitBytes: 0, finalReplayed: false });
  t.same(h.failures, []);
});

t.test('a unit over the window is refused with LimitExceededError (RESOURCE_EXHAUSTED), naming the numbers', async (t) => {
  const byCount = harness({ unitWindow: 2 });
  byCount.pipeline.enqueue(unit(1));
  byCount.pipeline.enqueue(unit(2));
  const error = t.throws(() => byCount.pipeline.enqueue(unit(3))) as Error;
  t.type(error, LimitExceededError);
  t.equal((error as LimitExceededError).code, 'RESOURCE_EXHAUSTED');
  t.equal(error.message, 'unit 3 overflows the unit window: 2 units / 200 bytes queued, window 2 units / 1048576 bytes');
  t.equal(byCount.pipeline.counters().unitsReceived, 2, 'the refused unit is not counted');

  const byBytes = harness({ unitWindowBytes: 250 });
  byBytes.pipeline.enqueue(unit(1));
  byBytes.pipeline.enqueue(unit(2));
  t.throws(() => byBytes.pipeline.enqueue(unit(3)), { message: 'unit 3 overflows the unit window: 2 units / 200 bytes queued, window 64 units / 250 bytes' });

  const large = harness({ unitWindowBytes: 250 });
  large.pipeline.enqueue(unit(1, { bytes: 1000 }));
  t.equal(large.pipeline.remainingUnits, 1, 'a unit larger than the byte window is admitted alone');
  t.throws(() => large.pipeline.enqueue(unit(2)), LimitExceededError, 'but nothing with it');
});

t.test(`replay runs in slices of at most ${REPLAY_PIPELINE.replaySliceMs} ms, yielding between them`, async (t) => {
  const h = harness();
  const slice = REPLAY_PIPELINE.replaySliceMs;
  h.replay.costMs = 1;
  for (let s = 1; s <= 2 * slice + 1; s++) h.pipeline.enqueue(unit(s));
  h.restored();
  t.ok(h.runSlice());
  const first = Array.from({ length: slice }, (_, i) => i + 1);
  t.same(h.replay.applied, first, `the units started within the first ${slice} ms of the slice, 1 ms each`);
  t.equal(h.deferred.length, 1, 'the rest comes back after pending I/O');
  h.pipeline.enqueue(unit(2 * slice + 2));
  t.equal(h.deferred.length, 1, 'a unit arriving between slices does not schedule another');
  t.ok(h.runSlice());
  t.same(h.replay.applied.length, 2 * slice, 'the next slice as long');
  t.ok(h.runSlice());
  t.same(h.replay.applied, Array.from({ length: 2 * slice + 2 }, (_, i) => i + 1), 'all of them, in order');
  t.notOk(h.runSlice(), 'nothing left: no slice scheduled');
});

t.test('the replay rate: guest time over replay time, over the last units, counting the gaps within a batch', async (t) => {
  const h = harness();
  h.restored();
  h.replay.costMs = 2;
  for (const s of [1, 2, 3]) h.pipeline.enqueue(unit(s));
  h.runAll();
  t.equal(h.pipeline.counters().replayRate, 5, '10 ms of guest time replayed in 2 ms');
  t.equal(h.progress.at(-1)?.replayRate, 5, 'and reported');

  // Units one at a time, 2 ms apart: the gap (decoding, I/O) counts as replay time.
  const gaps = harness();
  gaps.restored();
  gaps.replay.costMs = 2;
  for (let s = 1; s <= 3; s++) {
    gaps.pipeline.enqueue(unit(s));
    gaps.runAll();
    await gaps.clock.advance(2);
  }
  // 30 ms of guest time; 2 + (2 + 2) + (2 + 2) ms.
  t.equal(gaps.pipeline.counters().replayRate, 3);

  // A gap of the batch limit or more is waiting for units, not replay.
  await gaps.clock.advance(REPLAY_RATE.batchGapMsMax);
  gaps.pipeline.enqueue(unit(4));
  gaps.runAll();
  t.equal(gaps.pipeline.counters().replayRate, 40 / 12);
});

t.test(`the replay rate counts only the last ${REPLAY_RATE.rateWindowUnits} units`, async (t) => {
  const meter = new ReplayRateMeter();
  t.equal(meter.replayRate, 0, 'not measured yet');
  let nowMs = 0;
  const replayOne = (ms: number) => {
    meter.record(10e6, nowMs, nowMs + ms);
    nowMs += ms;
  };
  for (let i = 0; i < REPLAY_RATE.rateWindowUnits; i++) replayOne(2);
  t.equal(meter.replayRate, 5);
  for (let i = 0; i < REPLAY_RATE.rateWindowUnits / 2; i++) replayOne(8);
  t.equal(meter.replayRate, 2, 'a ratio of sums: 1000 ms of guest time in 500 ms');
  for (let i = 0; i < REPLAY_RATE.rateWindowUnits / 2; i++) replayOne(8);
  t.equal(meter.replayRate, 1.25, 'the fast units have left the window');
  // A unit after a pause: the pause is not replay time. The oldest unit leaves the window.
  meter.record(10e6, nowMs + 100, nowMs + 108);
  t.equal(meter.replayRate, 1.25);
});

t.test('progress reports come at most every progressIntervalMs; one held back is sent when the interval has passed', async (t) => {
  const h = harness({ progressIntervalMs: 20 });
  h.pipeline.enqueue(unit(1));
  t.equal(h.progress.length, 1, 'the first report goes at once');
  h.pipeline.enqueue(unit(2));
  h.pipeline.enqueue(unit(3));
  t.equal(h.progress.length, 1, 'the next ones wait for the interval');
  await h.clock.advance(19);
  t.equal(h.progress.length, 1);
  await h.clock.advance(1);
  t.equal(h.progress.length, 2, 'one report for the two held back');
  t.match(h.progress[1], { unitsReceived: 3, remainingUnits: 3, checkpointRestored: false, remainingUnitsAllowed: 18 });
  await h.clock.advance(100);
  t.equal(h.progress.length, 2, 'nothing new: no report');
  h.restored();
  t.equal(h.progress.length, 3, 'a forced report does not wait');
  h.runAll();
  t.equal(h.progress.length, 4, 'nor does the one when the queue has drained');
  t.match(h.progress[3], { unitsReplayed: 3, remainingUnits: 0 });
});

t.test('the stop request: sent once the queue fits remainingUnitsAllowed, not again while pending, nor within the interval', async (t) => {
  // 10 ms limit, 10 ms units, no rate measured yet (counted as 1): one unit allowed.
  const allowed = Math.max(1, Math.floor((10 * REPLAY_SHARE_OF_DOWNTIME) / 10));
  const h = harness({ downtimeLimitMs: 10, unitMs: 10 });
  for (const s of [1, 2, 3]) h.pipeline.enqueue(unit(s));
  t.same(h.stopRequests, [], 'none while the checkpoint is restored');
  h.restored();
  t.same(h.stopRequests, [], `none while 3 units are queued and ${allowed} allowed`);
  h.runAll();
  t.same(h.stopRequests, [{ remainingUnits: 0, remainingUnitsAllowed: allowed }], 'one once the queue fits');
  const replayOne = (sequence: number) => {
    h.pipeline.enqueue(unit(sequence));
    h.runAll();
  };
  replayOne(4);
  t.equal(h.stopRequests.length, 1, 'not again while the first is pending');
  h.pipeline.stopDecided();
  replayOne(5);
  await h.clock.advance(REPLAY_PIPELINE.stopRequestIntervalMs - 1);
  replayOne(6);
  t.equal(h.stopRequests.length, 1, 'decided, but not within the interval of the last one');
  await h.clock.advance(1);
  replayOne(7);
  t.equal(h.stopRequests.length, 2, 'again once decided and the interval has passed');
  await h.clock.advance(REPLAY_PIPELINE.stopRequestIntervalMs);
  replayOne(8);
  t.equal(h.stopRequests.length, 2, 'and not again while that one is pending');
});

t.test('shouldRequestStop: replaying, not complete, none pending, the switchover due, the interval passed', async (t) => {
  const due = { replaying: true, finalReplayed: false, requestPending: false, switchoverDue: true, sinceLastRequestMs: REPLAY_PIPELINE.stopRequestIntervalMs };
  t.equal(shouldRequestStop(due), true);
  t.equal(shouldRequestStop({ ...due, replaying: false }), false, 'checkpoint not restored');
  t.equal(shouldRequestStop({ ...due, finalReplayed: true }), false, 'nothing follows the final unit');
  t.equal(shouldRequestStop({ ...due, requestPending: true }), false, 'a request pending');
  t.equal(shouldRequestStop({ ...due, switchoverDue: false }), false, 'the switchover rule says not yet');
  t.equal(shouldRequestStop({ ...due, sinceLastRequestMs: REPLAY_PIPELINE.stopRequestIntervalMs - 1 }), false, 'too soon');
  t.equal(shouldRequestStop({ ...due, sinceLastRequestMs: Number.POSITIVE_INFINITY }), true, 'never requested');
});

t.test('a unit the replica refuses fails the pipeline, and replay stops there', async (t) => {
  const h = harness();
  h.restored();
  h.pipeline.enqueue(unit(1));
  h.pipeline.enqueue(unit(2, { corrupt: true }));
  h.pipeline.enqueue(unit(3));
  h.runAll();
  t.same(h.replay.applied, [1]);
  t.equal(h.failures.length, 1);
  t.type(h.failures[0], CorruptDataError);
  t.match(h.failures[0], { message: 'unit 2: checksum mismatch', code: 'DATA_LOSS' });
  t.equal(h.deferred.length, 0, 'no slice scheduled after the failure');
  t.equal(h.pipeline.counters().unitsReplayed, 1);
});

t.test('the final unit completes the replica: no stop request after it, and no digest refresh', async (t) => {
  const h = harness();
  h.restored();
  h.pipeline.enqueue(unit(1));
  h.runAll();
  t.equal(h.stopRequests.length, 1);
  t.equal(h.digests.length, 1, 'idle: the digest is kept fresh');
  h.pipeline.stopDecided();
  await h.clock.advance(REPLAY_PIPELINE.digestRefreshIntervalMs + 1);
  h.pipeline.enqueue(unit(2, { final: true }));
  h.runAll();
  t.equal(h.pipeline.finalReplayed, true);
  t.match(h.progress.at(-1), { finalReplayed: true, unitsReplayed: 2, remainingUnits: 0 });
  t.equal(h.stopRequests.length, 1, 'no stop request once the final unit was replayed');
  t.equal(h.digests.length, 1, 'the commit hashes what is left');
});

t.test(`while idle the digest is refreshed at most every ${REPLAY_PIPELINE.digestRefreshIntervalMs} ms`, async (t) => {
  const h = harness();
  h.restored();
  h.pipeline.enqueue(unit(1));
  h.runAll();
  t.same(h.digests, [1_000]);
  await h.clock.advance(REPLAY_PIPELINE.digestRefreshIntervalMs);
  h.pipeline.enqueue(unit(2));
  h.runAll();
  t.same(h.digests, [1_000], 'not yet');
  await h.clock.advance(1);
  h.pipeline.enqueue(unit(3));
  h.runAll();
  t.same(h.digests, [1_000, 1_000 + REPLAY_PIPELINE.digestRefreshIntervalMs + 1]);
});

t.test('the switchover waits while the backlog shrinks, asks once it stops shrinking, and at once when the deadline nears', async (t) => {
  // 1000 ms limit at no measured rate (1x): 60 units allowed. Keep 20 queued, flat, for a window.
  const flat = harness({ downtimeLimitMs: 1_000, unitMs: 10 });
  flat.replay.costMs = 10; // a slice replays one unit
  for (let s = 1; s <= 20; s++) flat.pipeline.enqueue(unit(s));
  flat.restored();
  t.same(flat.stopRequests, [], 'no history yet: wait');
  for (let i = 0; i < 25; i++) {
    await flat.clock.advance(100);
    flat.pipeline.enqueue(unit(21 + i)); // one in...
    flat.runSlice(); // ...one out (a slice replays one unit of 10 ms work here)
  }
  t.equal(flat.stopRequests.length, 1, 'asked once the backlog stayed flat over a window');
  t.ok(flat.stopRequests[0].remainingUnits > 1, `with ${flat.stopRequests[0].remainingUnits} units left: as few as they get`);

  // The same backlog with the maximum duration near: fitting the cap is enough, at once.
  const late = harness({ downtimeLimitMs: 1_000, unitMs: 10, switchoverDeadlineMs: 0 });
  for (let s = 1; s <= 20; s++) late.pipeline.enqueue(unit(s));
  late.restored();
  t.equal(late.stopRequests.length, 1, 'the deadline nears: asked while 20 units fit the limit');
  t.equal(late.stopRequests[0].remainingUnits, 20);
});

t.test('a delta supersedes the units before its instant: queued ones dropped, late ones too, counted as done', async (t) => {
  const h = harness();
  for (let s = 1; s <= 6; s++) h.pipeline.enqueue(unit(s));
  h.restored();
  h.runSlice(); // all six replay (no cost)
  for (let s = 7; s <= 12; s++) h.pipeline.enqueue(unit(s));
  // A delta as of the boundary before unit 15: 7..12 are queued and obsolete, 13 and 14 still in flight.
  h.state.phase = 'restoring'; // (the session stops replay while the delta is applied)
  h.pipeline.supersede(15);
  t.equal(h.pipeline.remainingUnits, 0, 'the queued units before the instant were dropped');
  h.pipeline.enqueue(unit(13));
  h.pipeline.enqueue(unit(14));
  h.pipeline.enqueue(unit(15));
  t.equal(h.pipeline.remainingUnits, 1, 'late units before the instant dropped on arrival; 15 queues');
  const c = h.pipeline.counters();
  t.equal(c.unitsSuperseded, 8, '7..14 superseded');
  t.equal(c.unitsReplayed, 6 + 8, "the source's window counts superseded units as done");
  t.equal(c.unitsReceived, 15);
  h.restored();
  h.runAll();
  t.same(h.replay.applied, [1, 2, 3, 4, 5, 6, 15], 'replay goes on from the instant');
  t.equal(h.progress.at(-1)?.unitsSuperseded, 8, 'reported in progress');
});
