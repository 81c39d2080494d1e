// The convergence controller's pure functions (shared/convergence.ts): the two thresholds derived
// from the downtime limit, the source's stop decision, the expected downtime, the backlog verdict,
// the throttle steps and the non-convergence policies.
import t from 'tap';
import {
  type BacklogSample,
  decideStop,
  expectedDowntimeMs,
  judgeConvergence,
  NON_CONVERGENCE_POLICIES,
  nextThrottle,
  nonConvergenceAction,
  remainingUnitsAllowed,
  REPLAY_SHARE_OF_DOWNTIME,
  type StopInputs,
  unsentLogBytesAllowed,
  SWITCHOVER_UNITS_FLOOR,
  switchoverDue,
  stopUnitsFloor,
} from '../shared/convergence.js';

t.test('remainingUnitsAllowed: the units the replay of the downtime share can cover, at least 1', async (t) => {
  t.equal(REPLAY_SHARE_OF_DOWNTIME, 0.6);
  // 300 ms * 0.6 = 180 ms of replay; at 2x guest speed that replays 360 ms of guest time = 36 units of 10 ms.
  t.equal(remainingUnitsAllowed(300, 10, 2), 36);
  t.equal(remainingUnitsAllowed(300, 10, 1), 18);
  t.equal(remainingUnitsAllowed(300, 10, 0.5), 9, 'a replay slower than real time allows fewer units');
  t.equal(remainingUnitsAllowed(100, 10, 10), 60);
  t.equal(remainingUnitsAllowed(300, 100, 2), 3, 'longer units: fewer of them');
  t.equal(remainingUnitsAllowed(300, 10, 0.55), 9, 'rounded down (9.9 -> 9)');
  t.equal(remainingUnitsAllowed(1, 10, 1), 1, 'a tiny limit still allows one unit');
  t.equal(remainingUnitsAllowed(300, 10, 0), 1, 'no replay rate measured yet');
  t.equal(remainingUnitsAllowed(300, 10, -1), 1, 'negative rate');
  t.equal(remainingUnitsAllowed(300, 10, Number.NaN), 1, 'NaN rate');
  t.equal(remainingUnitsAllowed(300, 0, 2), 1, 'unit length 0');
  t.equal(remainingUnitsAllowed(300, Number.NaN, 2), 1, 'NaN unit length');
});

t.test('unsentLogBytesAllowed: what the throughput carries in the limit less one round trip', async (t) => {
  t.equal(unsentLogBytesAllowed(300, 1e6, 0), 300_000);
  t.equal(unsentLogBytesAllowed(300, 1e6, 100), 200_000, 'the round trip is taken off');
  t.equal(unsentLogBytesAllowed(300, 1e6, 12.5), 287_500);
  t.equal(unsentLogBytesAllowed(300, 1_000_001, 0), 300_000, 'rounded down (300000.3 -> 300000)');
  t.equal(unsentLogBytesAllowed(300, 1e6, 300), 0, 'round trip equal to the limit');
  t.equal(unsentLogBytesAllowed(300, 1e6, 500), 0, 'round trip over the limit: 0, never negative');
  t.equal(unsentLogBytesAllowed(300, 0, 0), 0, 'no throughput measured yet');
  t.equal(unsentLogBytesAllowed(300, -5, 0), 0, 'negative throughput');
  t.equal(unsentLogBytesAllowed(300, Number.NaN, 0), 0, 'NaN throughput');
});

t.test('decideStop: granted when the units not replayed and the unsent log both fit', async (t) => {
  const base: StopInputs = { unsentLogBytes: 100_000, unitsNotReplayed: 5, unitsAllowed: 10, downtimeLimitMs: 300, throughputBytesPerSec: 1e6, rttMs: 0 };

  const ok = decideStop(base);
  t.equal(ok.granted, true);
  t.equal(ok.allowedBytes, 300_000);
  t.match(ok.reason, /^unsent log 100000 B within 300000 B$/);

  const edge = decideStop({ ...base, unsentLogBytes: 300_000, unitsNotReplayed: 10 });
  t.equal(edge.granted, true, 'exactly at both thresholds is within them');

  const nothing = decideStop({ ...base, unsentLogBytes: 0, unitsNotReplayed: 0 });
  t.equal(nothing.granted, true, 'nothing left');
});

t.test('decideStop: denied when the unsent log is over what the limit carries', async (t) => {
  const base: StopInputs = { unsentLogBytes: 300_001, unitsNotReplayed: 5, unitsAllowed: 10, downtimeLimitMs: 300, throughputBytesPerSec: 1e6, rttMs: 0 };
  const d = decideStop(base);
  t.equal(d.granted, false);
  t.equal(d.allowedBytes, 300_000);
  t.match(d.reason, 'unsent log 300001 B over the 300000 B that 1000000 B/s carries in 300 ms less a 0.0 ms round trip');

  const rtt = decideStop({ ...base, unsentLogBytes: 250_000, rttMs: 100 });
  t.equal(rtt.granted, false, 'the round trip shrinks the allowance below the unsent log');
  t.equal(rtt.allowedBytes, 200_000);
  t.match(rtt.reason, /less a 100\.0 ms round trip/);

  const noThroughput = decideStop({ ...base, unsentLogBytes: 1, throughputBytesPerSec: 0 });
  t.equal(noThroughput.granted, false, 'no throughput measured: any unsent byte is too much');
  t.equal(noThroughput.allowedBytes, 0);
  t.equal(decideStop({ ...base, unsentLogBytes: 0, throughputBytesPerSec: 0 }).granted, true, 'no throughput, nothing unsent');
});

t.test('decideStop: the units-not-replayed rule comes first', async (t) => {
  const base: StopInputs = { unsentLogBytes: 0, unitsNotReplayed: 11, unitsAllowed: 10, downtimeLimitMs: 300, throughputBytesPerSec: 1e6, rttMs: 0 };
  const d = decideStop(base);
  t.equal(d.granted, false, 'denied although nothing is unsent: units are still in flight');
  t.equal(d.allowedBytes, 300_000, 'the byte allowance is still reported');
  t.match(d.reason, /^11 units not yet replayed \(some still in flight\), over the 10 the target allows$/);

  const both = decideStop({ ...base, unsentLogBytes: 10_000_000 });
  t.equal(both.granted, false);
  t.match(both.reason, /units not yet replayed/, 'the units reason wins over the bytes reason');
});

t.test('expectedDowntimeMs: the longer of last transfer and replay (pipelined), plus a commit round trip', async (t) => {
  const base = { unsentLogBytes: 1_000_000, unitsToReplay: 30, unitMs: 10, replayRate: 2, throughputBytesPerSec: 1e7, rttMs: 5 };
  // transfer 1e6 B at 1e7 B/s = 100 ms; replay 30 units * 10 ms / 2 = 150 ms; plus 2 * 5 ms.
  t.equal(expectedDowntimeMs(base), 160);
  t.equal(expectedDowntimeMs({ ...base, unsentLogBytes: 4_000_000 }), 410, 'transfer-bound: 400 ms + 10 ms');
  t.equal(expectedDowntimeMs({ ...base, throughputBytesPerSec: 0 }), 160, 'no throughput measured: transfer counts 0');
  t.equal(expectedDowntimeMs({ ...base, replayRate: 0 }), 110, 'no replay rate measured: replay counts 0');
  t.equal(expectedDowntimeMs({ ...base, unsentLogBytes: 0, unitsToReplay: 0 }), 10, 'nothing left: just the round trips');
  t.equal(expectedDowntimeMs({ ...base, rttMs: 0 }), 150);
});

t.test('judgeConvergence: no samples, within the allowance, too little history', async (t) => {
  t.same(judgeConvergence([], 2000, 10), { converging: true, reason: 'no samples yet' });

  const growingButSmall: BacklogSample[] = [
    { atMs: 0, backlogUnits: 1 },
    { atMs: 3000, backlogUnits: 10 },
  ];
  const small = judgeConvergence(growingButSmall, 2000, 10);
  t.equal(small.converging, true, 'a backlog within the allowance converges whatever its trend');
  t.equal(small.reason, 'backlog 10 within 10 units');

  const short: BacklogSample[] = [
    { atMs: 0, backlogUnits: 50 },
    { atMs: 1000, backlogUnits: 80 },
    { atMs: 1999, backlogUnits: 100 },
  ];
  const undecided = judgeConvergence(short, 2000, 10);
  t.equal(undecided.converging, true, 'growing, but over less than one window: undecided counts as converging');
  t.equal(undecided.reason, 'less than one window of history');
});

t.test('judgeConvergence: shrinking and growing backlogs', async (t) => {
  const shrinking: BacklogSample[] = [
    { atMs: 0, backlogUnits: 100 },
    { atMs: 1000, backlogUnits: 80 },
    { atMs: 2000, backlogUnits: 50 },
  ];
  const s = judgeConvergence(shrinking, 2000, 10);
  t.equal(s.converging, true);
  t.equal(s.reason, 'backlog fell from 100 to 50 units in 2000 ms');

  const growing: BacklogSample[] = [
    { atMs: 0, backlogUnits: 50 },
    { atMs: 1000, backlogUnits: 70 },
    { atMs: 2000, backlogUnits: 100 },
  ];
  const g = judgeConvergence(growing, 2000, 10);
  t.equal(g.converging, false);
  t.equal(g.reason, 'backlog grew from 50 to 100 units in 2000 ms (allowed 10): the log grows faster than it drains');

  const flat: BacklogSample[] = [
    { atMs: 0, backlogUnits: 40 },
    { atMs: 2500, backlogUnits: 40 },
  ];
  const f = judgeConvergence(flat, 2000, 10);
  t.equal(f.converging, false, 'a backlog that does not fall does not converge');
  t.equal(f.reason, 'backlog did not shrink from 40 units in 2500 ms (allowed 10): the log grows as fast as it drains', 'a flat backlog is not said to grow');

  // The base is the newest sample at least one window older than the last, not the oldest one.
  const recentBase: BacklogSample[] = [
    { atMs: 0, backlogUnits: 11 },
    { atMs: 500, backlogUnits: 200 },
    { atMs: 2500, backlogUnits: 150 },
  ];
  const r = judgeConvergence(recentBase, 2000, 10);
  t.equal(r.converging, true, 'compared with the sample of 2000 ms ago (200), not the oldest (11)');
  t.equal(r.reason, 'backlog fell from 200 to 150 units in 2000 ms');

  const recentGrowth: BacklogSample[] = [
    { atMs: 0, backlogUnits: 500 },
    { atMs: 1000, backlogUnits: 100 },
    { atMs: 3000, backlogUnits: 120 },
  ];
  t.equal(judgeConvergence(recentGrowth, 2000, 10).converging, false, 'an early fall does not hide a recent growth');
});

t.test('nextThrottle: 30% less each step, never below 0.05', async (t) => {
  t.equal(nextThrottle(1), 0.7);
  t.equal(nextThrottle(0.7), 0.49);
  t.equal(nextThrottle(0.49), 0.343);
  t.equal(nextThrottle(0.343), 0.24, 'rounded to three decimals (0.2401)');
  t.equal(nextThrottle(0.06), 0.05, '0.042 is raised to the floor');
  t.equal(nextThrottle(0.05), 0.05, 'the floor stays the floor');
  t.equal(nextThrottle(0.01), 0.05, 'below the floor: back to the floor');
  const steps: number[] = [];
  for (let x = 1, i = 0; i < 20; i++) steps.push((x = nextThrottle(x)));
  t.same(steps.slice(0, 9), [0.7, 0.49, 0.343, 0.24, 0.168, 0.118, 0.083, 0.058, 0.05]);
  t.ok(
    steps.every((x, i) => i === 0 || x <= steps[i - 1]),
    'never increases',
  );
  t.ok(
    steps.every((x) => x >= 0.05),
    'never below 0.05',
  );
  t.equal(steps[steps.length - 1], 0.05, 'ends at the floor');
});

t.test('nonConvergenceAction: each policy, converging or not', async (t) => {
  t.same(NON_CONVERGENCE_POLICIES, ['abort', 'force', 'throttle']);
  const converging = { converging: true, reason: 'backlog fell from 100 to 50 units in 2000 ms' };
  const diverging = { converging: false, reason: 'backlog grew from 50 to 100 units in 2000 ms (allowed 10): the log grows faster than it drains' };

  for (const policy of NON_CONVERGENCE_POLICIES) {
    t.same(nonConvergenceAction(policy, converging, 1000, 60_000, 1), { action: 'continue', trigger: 'backlog', reason: converging.reason }, `${policy}, converging: continue`);
  }
  t.same(nonConvergenceAction('abort', diverging, 1000, 60_000, 1), { action: 'abort', trigger: 'backlog', reason: `did not converge: ${diverging.reason}` });
  t.same(nonConvergenceAction('force', diverging, 1000, 60_000, 1), { action: 'force', trigger: 'backlog', reason: `did not converge: ${diverging.reason}` });
  t.same(nonConvergenceAction('throttle', diverging, 1000, 60_000, 1), { action: 'throttle', trigger: 'backlog', reason: diverging.reason });
  t.same(nonConvergenceAction('throttle', diverging, 1000, 60_000, 0.058), { action: 'throttle', trigger: 'backlog', reason: diverging.reason }, 'just above the floor: throttle again');
  t.same(
    nonConvergenceAction('throttle', diverging, 1000, 60_000, 0.05),
    { action: 'continue', trigger: 'backlog', reason: `throttled to the floor; ${diverging.reason}` },
    'at the floor: nothing more to do but wait for the maximum duration',
  );
});

t.test('nonConvergenceAction: the maximum duration overrides the verdict, and says so', async (t) => {
  const converging = { converging: true, reason: 'backlog 3 within 10 units' };
  const diverging = { converging: false, reason: 'backlog grew' };
  const reason = 'migration ran 60000 ms, its maximum is 60000 ms';
  for (const verdict of [converging, diverging]) {
    const what = verdict.converging ? 'converging' : 'not converging';
    t.same(nonConvergenceAction('abort', verdict, 60_000, 60_000, 1), { action: 'abort', trigger: 'max-duration', reason }, `abort, ${what}`);
    t.same(nonConvergenceAction('force', verdict, 60_000, 60_000, 1), { action: 'force', trigger: 'max-duration', reason }, `force, ${what}`);
    t.same(nonConvergenceAction('throttle', verdict, 60_000, 60_000, 0.05), { action: 'abort', trigger: 'max-duration', reason }, `throttle gives up (aborts), ${what}`);
  }
  t.same(nonConvergenceAction('force', converging, 61_234.4, 60_000, 1), { action: 'force', trigger: 'max-duration', reason: 'migration ran 61234 ms, its maximum is 60000 ms' }, 'past the maximum, ms rounded');
  t.equal(nonConvergenceAction('abort', converging, 59_999, 60_000, 1).action, 'continue', 'just before the maximum');
});

t.test('switchoverDue: the cap first, then as few units as they will get', async (t) => {
  const samples = (values: number[], stepMs = 100) => values.map((backlogUnits, i) => ({ atMs: i * stepMs, backlogUnits }));
  const base = { remainingUnitsAllowed: 50, windowMs: 2_000, deadlineNear: false };
  t.equal(SWITCHOVER_UNITS_FLOOR, 1);
  t.match(switchoverDue({ ...base, remainingUnits: 51, backlog: [], nowMs: 0 }), { due: false, reason: /over the 50/ }, 'over the cap: never');
  t.match(switchoverDue({ ...base, remainingUnits: 51, backlog: [], nowMs: 0, deadlineNear: true }), { due: false }, 'not even with the deadline near');
  t.match(switchoverDue({ ...base, remainingUnits: 1, backlog: [], nowMs: 0 }), { due: true, reason: /only the unit in progress/ });
  t.match(switchoverDue({ ...base, remainingUnits: 0, backlog: [], nowMs: 0 }), { due: true });
  t.match(switchoverDue({ ...base, remainingUnits: 30, backlog: [], nowMs: 0, deadlineNear: true }), { due: true, reason: /maximum duration nears/ });
  t.match(switchoverDue({ ...base, remainingUnits: 30, backlog: samples([30, 30, 30]), nowMs: 200 }), { due: false, reason: /less than one window/ });
  const shrinking = samples(Array.from({ length: 21 }, (_, i) => 40 - i));
  t.match(switchoverDue({ ...base, remainingUnits: 20, backlog: shrinking, nowMs: 2_000 }), { due: false, reason: /still shrinking/ });
  const flat = samples(Array.from({ length: 21 }, (_, i) => 20 + (i % 3) - 1));
  t.match(switchoverDue({ ...base, remainingUnits: 20, backlog: flat, nowMs: 2_000 }), { due: true, reason: /stopped shrinking/ }, 'noise around a flat backlog');
  const growing = samples(Array.from({ length: 21 }, (_, i) => 10 + i));
  t.match(switchoverDue({ ...base, remainingUnits: 30, backlog: growing, nowMs: 2_000 }), { due: true }, 'a growing backlog within the cap: now is the best it gets');
});

t.test('decideStop: a burst in flight over the steady floor waits, while waits are allowed', async (t) => {
  const base: StopInputs = { unsentLogBytes: 0, unitsNotReplayed: 5, unitsAllowed: 30, downtimeLimitMs: 300, throughputBytesPerSec: 100e6, rttMs: 0.2 };
  t.equal(stopUnitsFloor(0.2, 10), 3, 'lan: the unit replayed, the one sealed, one on the way');
  t.equal(stopUnitsFloor(40, 10), 4, 'wan: 20 ms one way is two units on the way');
  const waits = decideStop({ ...base, unitsFloor: 3, mayWaitForFloor: true });
  t.notOk(waits.granted);
  t.match(waits.reason, /5 units not yet replayed .* more than the 3 a steady log has: waiting for fewer/);
  t.ok(decideStop({ ...base, unitsFloor: 3, mayWaitForFloor: false }).granted, 'no more waits: granted within the cap');
  t.ok(decideStop({ ...base, unitsNotReplayed: 3, unitsFloor: 3, mayWaitForFloor: true }).granted, 'at the floor: granted');
  t.ok(decideStop(base).granted, 'no floor given: the cap alone');
});
