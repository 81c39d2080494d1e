// A protection's throttle (shared/rpo.ts): slowed a step while the standby's received lag is over
// the objective or its replay lag over its bound, sped up a step once both are under half theirs;
// and the log batch a protection applies, from its request and objective.
import t from 'tap';
import { PROTECTION_LOG_BATCH_MS_DEFAULT, protectionLogBatchMs, RPO_THROTTLE_MIN, rpoThrottle } from '../shared/rpo.js';

const bounds = { rpoMsMax: 1000, replayLagMsMax: 2000 };

t.test('the throttle follows both lags', async (t) => {
  const overRpo = rpoThrottle({ receivedMs: 1200, replayedMs: 1300 }, bounds, 1);
  t.equal(overRpo.throttle, 0.7, 'received over the objective: a step down');
  t.match(overRpo.reason, /^the standby lags 1200 ms behind \(received\), over the objective of 1000 ms: guest slowed to 0\.7$/);
  const overReplay = rpoThrottle({ receivedMs: 30, replayedMs: 2500 }, bounds, 0.7);
  t.equal(overReplay.throttle, 0.49, 'received within, replay over its bound: a step down too');
  t.match(overReplay.reason, /^its replay lags 2500 ms behind, over the bound of 2000 ms: guest slowed to 0\.49$/);
  t.same(rpoThrottle({ receivedMs: 30, replayedMs: 1500 }, bounds, 0.49), { throttle: 0.49, reason: '' }, 'replay between half its bound and the bound: held');
  t.same(rpoThrottle({ receivedMs: 600, replayedMs: 100 }, bounds, 0.49), { throttle: 0.49, reason: '' }, 'received between half the objective and the objective: held');
  const back = rpoThrottle({ receivedMs: 30, replayedMs: 900 }, bounds, 0.49);
  t.equal(back.throttle, 0.7, 'both under half: a step up');
  t.match(back.reason, /under half the objective of 1000 ms and of the bound of 2000 ms: guest sped up to 0\.7$/);
  t.same(rpoThrottle({ receivedMs: 0, replayedMs: 0 }, bounds, 1), { throttle: 1, reason: '' }, 'at full speed, nothing to do');
  t.same(rpoThrottle({ receivedMs: 5000, replayedMs: 5000 }, bounds, RPO_THROTTLE_MIN), { throttle: RPO_THROTTLE_MIN, reason: '' }, 'never below the lowest throttle');
});

t.test("a protection's log batch", async (t) => {
  t.equal(protectionLogBatchMs(0, 1000), PROTECTION_LOG_BATCH_MS_DEFAULT, 'the default');
  t.equal(protectionLogBatchMs(0, 40), 10, 'the default, at most a quarter of a small objective');
  t.equal(protectionLogBatchMs(1, 10), 1, 'asked for: 1 ms is each unit at once');
  t.equal(protectionLogBatchMs(500, 1000), 500, 'half the objective');
  t.match(protectionLogBatchMs(501, 1000), /a log batch of 501 ms: expected 0 \(the default, 20\) or 1 to 500/);
  t.match(protectionLogBatchMs(1001, 3_600_000), /or 1 to 1000/, 'at most 1000 whatever the objective');
});
