// CR/TR's final approach (shared/approach.ts): whether a stop is worth an approach, the throttle it
// chooses, the drain it predicts, its bound and its cost.
import t from 'tap';
import {
  APPROACH_BOUND_MAX_MS,
  APPROACH_BOUND_MIN_MS,
  APPROACH_SLACK_UNITS,
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

t.test('planApproach: no approach for a backlog a steady log has anyway', async (t) => {
  const at = (backlogUnits: number) => planApproach({ ...base, backlogUnits });
  t.notOk(at(base.floorUnits).approach, 'at the floor');
  t.notOk(at(base.floorUnits + APPROACH_SLACK_UNITS).approach, 'within the slack');
  t.ok(at(base.floorUnits + APPROACH_SLACK_UNITS + 1).approach, 'one more unit: an approach');
  const none = at(2);
  t.equal(none.throttle, 1, 'the throttle is left as it was');
  t.equal(none.costMs, 0);
  t.match(none.reason, /within 1 of the 3 a steady log has/);
});

t.test('planApproach: the highest throttle that drains within the target', async (t) => {
  // 9 units over the floor (90 ms) at 1.1x: f = 1.1 - 90/250 = 0.74; drain 90 / 0.36 = 250 ms.
  const plan = planApproach(base);
  t.ok(plan.approach);
  t.equal(plan.throttle, 0.74);
  t.ok(Math.abs(plan.predictedMs - APPROACH_TARGET_MS) < 1, `drain ${plan.predictedMs} ms is the target`);
  t.ok(Math.abs(plan.costMs - 0.26 * plan.predictedMs) < 1e-9, 'the cost is the work given up: (1 - f) x drain');
  t.ok(plan.costMs < (9 * 10) / 1.1, 'a replica faster than the guest: the approach costs less than the downtime it saves');
  t.equal(plan.boundMs, 3 * plan.predictedMs, 'bounded at three times its prediction');
  t.match(plan.reason, /guest slowed to 0\.74/);
});

t.test('planApproach: the throttle stays in its range', async (t) => {
  const small = planApproach({ ...base, backlogUnits: 5, replayRate: 3 });
  t.equal(small.throttle, APPROACH_THROTTLE_MAX, 'a fast replica: the lightest throttle');
  t.equal(small.boundMs, APPROACH_BOUND_MIN_MS, 'a short drain: the bound is its floor');
  const big = planApproach({ ...base, backlogUnits: 83, replayRate: 1 });
  t.equal(big.throttle, APPROACH_THROTTLE_MIN, 'a large backlog at 1x: the heaviest throttle');
  t.ok(Math.abs(big.predictedMs - 800 / 0.9) < 1e-6, '800 ms of backlog at a gain of 0.9');
  const long = planApproach({ ...base, backlogUnits: 500, replayRate: 1 });
  t.equal(long.boundMs, APPROACH_BOUND_MAX_MS, 'the bound has a ceiling');
  const huge = planApproach({ ...base, backlogUnits: 1000, replayRate: 1 });
  t.notOk(huge.approach, 'a drain past the ceiling is not started');
  t.match(huge.reason, /past the approach's 10000 ms/);
  const already = planApproach({ ...base, throttle: 0.3 });
  t.ok(already.throttle <= 0.3, 'never speeds up a guest another rule slowed');
});

t.test('planApproach: no approach where no throttle lets the replica gain', async (t) => {
  t.notOk(planApproach({ ...base, replayRate: 0.05 }).approach);
  t.notOk(planApproach({ ...base, unitMs: 0 }).approach);
  const unmeasured = planApproach({ ...base, replayRate: 0 });
  t.ok(unmeasured.approach, 'an unmeasured replay rate is taken as 1x');
  t.equal(unmeasured.throttle, 0.64, '1 - 90/250');
});
