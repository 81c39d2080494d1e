// CR/TR's final approach (shared/approach.ts): whether a stop is worth an approach, the throttle it
// chooses, the drain it predicts, its bound and its cost.
import t from 'tap';
import {
  APPROACH_BOUND_MAX_MS,
  APPROACH_BOUND_MIN_MS,
  APPROACH_REPLAY_MS,
  APPROACH_TARGET_MS,
  APPROACH_THROTTLE_MAX,
  APPROACH_THROTTLE_MIN,
  drainMs,
  planApproach,
} from '../shared/approach.js';

const base = { backlogUnits: 12, floorUnits: 3, unitMs: 10, replayRate: 1.1, throttle: 1 };

t.test('drainMs: the backlog over what the replica gains on the throttled guest', async (t) => {
  t.ok(Math.abs(drainMs(10, 10, 1.1, 0.6) - 200) < 1e-9, '100 ms of backlog at a gain of 0.5');
  t.equal(drainMs(10, 10, 1, 0), 100, 'a stopped guest: the backlog replayed at 1x');
  t.equal(drainMs(10, 10, 1, 1), Infinity, 'no gain: never');
  t.equal(drainMs(10, 10, 0.5, 0.7), Infinity, 'a replica slower than the throttled guest: never');
  t.equal(drainMs(-3, 10, 2, 0.5), 0, 'nothing to drain');
});

t.test('planApproach: none when the stop would replay little as it is', async (t) => {
  const fast = planApproach({ ...base, backlogUnits: 3, replayRate: 4 });
  t.notOk(fast.approach, '3 units at 4x: 7.5 ms of replay');
  t.equal(fast.throttle, 1, 'the throttle is left as it was');
  t.equal(fast.costMs, 0);
  t.match(fast.reason, /a stop now replays them in about 7\.5 ms/);
  t.ok(planApproach({ ...base, backlogUnits: 4, replayRate: 4 }).approach, '4 units at 4x: 10 ms, over the share of 8');
  t.notOk(planApproach({ ...base, backlogUnits: 0 }).approach, 'nothing not replayed');
});

t.test('planApproach: a backlog over the floor drains within the target', async (t) => {
  // 9 units over the floor (90 ms) at 1.1x: for the drain f = 1.1 - 90/250 = 0.74, for the floor
  // 8 x 1.1 / 30 = 0.29: the lower, rounded down.
  const plan = planApproach(base);
  t.ok(plan.approach);
  t.equal(plan.throttle, 0.29);
  t.ok(Math.abs(plan.predictedMs - 90 / 0.81) < 1e-9, `drain ${plan.predictedMs} ms: the excess at a gain of 0.81`);
  t.ok(plan.predictedMs < APPROACH_TARGET_MS);
  t.ok(Math.abs(plan.costMs - 0.71 * plan.predictedMs) < 1e-9, 'the cost is the work given up: (1 - f) x drain');
  t.ok(plan.costMs < (12 * 10) / 1.1, 'a replica faster than the guest: the approach costs less than the downtime it saves');
  t.equal(plan.boundMs, Math.max(APPROACH_BOUND_MIN_MS, 3 * plan.predictedMs), 'bounded at three times its prediction, at least the floor bound');
  t.equal(plan.settleMs, 30, 'the floor of three units passes before the stop');
  t.match(plan.reason, /^12 units not replayed \(a steady log has 3\) at a replay of 1\.10x: guest slowed to 0\.29 for about 111 ms \(at most 500\), giving up about 79 ms of work to bring the stop's replay from about 109 to 8 ms$/);
});

t.test('planApproach: a backlog at the floor: the units in flight are made cheap', async (t) => {
  // Five units in flight on a busy host, replayed at 1x: 50 ms of downtime as it is.
  const plan = planApproach({ ...base, backlogUnits: 5, floorUnits: 5, replayRate: 1 });
  t.ok(plan.approach);
  t.equal(plan.throttle, 0.16, `8 ms over 5 units of 10 ms`);
  t.equal(plan.predictedMs, 50, 'nothing to drain: the floor passes');
  t.ok((5 * plan.throttle * 10) / 1 <= APPROACH_REPLAY_MS, 'the stop then replays within the share');
});

t.test('planApproach: the throttle stays in its range', async (t) => {
  const light = planApproach({ ...base, backlogUnits: 4, floorUnits: 1, replayRate: 8 });
  t.notOk(light.approach, 'at 8x, 40 ms of units replay in 5 ms');
  const fast = planApproach({ ...base, backlogUnits: 20, floorUnits: 1, replayRate: 8 });
  t.equal(fast.throttle, APPROACH_THROTTLE_MAX, 'a fast replica: the lightest throttle');
  t.equal(fast.boundMs, APPROACH_BOUND_MIN_MS, 'a short drain: the bound is its floor');
  const big = planApproach({ ...base, backlogUnits: 83, replayRate: 1 });
  t.equal(big.throttle, APPROACH_THROTTLE_MIN, 'a large backlog at 1x: the heaviest throttle');
  t.ok(Math.abs(big.predictedMs - 800 / 0.9) < 1e-6, '800 ms of backlog at a gain of 0.9');
  const long = planApproach({ ...base, backlogUnits: 500, replayRate: 1 });
  t.equal(long.boundMs, APPROACH_BOUND_MAX_MS, 'the bound has a ceiling');
  const huge = planApproach({ ...base, backlogUnits: 1000, replayRate: 1 });
  t.notOk(huge.approach, 'a drain past the ceiling is not started');
  t.match(huge.reason, /past the approach's 10000 ms/);
  const already = planApproach({ ...base, throttle: 0.2 });
  t.ok(already.throttle <= 0.2, 'never speeds up a guest another rule slowed');
});

t.test('planApproach: no approach where no throttle lets the replica gain', async (t) => {
  t.notOk(planApproach({ ...base, replayRate: 0.05 }).approach);
  t.notOk(planApproach({ ...base, unitMs: 0 }).approach);
  const unmeasured = planApproach({ ...base, replayRate: 0 });
  t.ok(unmeasured.approach, 'an unmeasured replay rate is taken as 1x');
  t.equal(unmeasured.throttle, 0.26, '8 / 30, rounded down');
});
