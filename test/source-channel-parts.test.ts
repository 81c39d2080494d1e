// The small parts under the source's transfer channel, on a manual clock: the clock itself, the
// wait primitive and its failure rules, the bandwidth token bucket, the round-trip average.
import t from 'tap';
import { ManualClock } from '../shared/clock.js';
import { AbortedError, UnavailableError } from '../shared/errors.js';
import { smoothRttMs } from '../source-agent/channel.js';
import { TokenBucket } from '../source-agent/token-bucket.js';
import { FailableWaits, Wakeups } from '../source-agent/wait.js';

t.test('ManualClock: timers fire in order as time advances; sleeps resolve, or reject on abort', async (t) => {
  const clock = new ManualClock(100);
  const fired: string[] = [];
  clock.timeout(30, () => fired.push(`a@${clock.now()}`));
  clock.timeout(10, () => fired.push(`b@${clock.now()}`));
  const every = clock.interval(20, () => fired.push(`i@${clock.now()}`));
  clock.timeout(20, () => fired.push(`c@${clock.now()}`));
  await clock.advance(45);
  t.same(fired, ['b@110', 'i@120', 'c@120', 'a@130', 'i@140'], 'due order, ties in the order set');
  every.cancel();
  await clock.advance(100);
  t.equal(fired.length, 5, 'a cancelled interval fires no more');
  t.equal(clock.now(), 245);
  t.equal(clock.epochMs() - new ManualClock(100).epochMs(), 145, 'epoch time moves with it');

  let slept = false;
  void clock.sleep(50).then(() => (slept = true));
  await clock.advance(49);
  t.notOk(slept);
  await clock.advance(1);
  t.ok(slept, 'a sleep resolves when its time has come');
  const controller = new AbortController();
  const aborted = clock.sleep(1_000, controller.signal);
  controller.abort(new AbortedError('stop'));
  await t.rejects(aborted, { message: 'stop' });
  t.equal(clock.pendingTimers, 0, 'the aborted sleep left no timer');
  await t.rejects(clock.sleep(1, controller.signal), { message: 'stop' }, 'an already aborted signal rejects at once');
});

t.test('Wakeups: a wait re-checks on notify, and times out with its message', async (t) => {
  const clock = new ManualClock();
  const wakeups = new Wakeups(clock);
  let ready = false;
  let done = false;
  void wakeups.until(() => ready, () => {}).then(() => (done = true));
  await clock.advance(0);
  t.notOk(done);
  ready = true;
  wakeups.notify();
  await clock.advance(0);
  t.ok(done, 'woken by notify, without waiting for the backstop');
  const timedOut = wakeups.until(() => false, () => {}, 1_000, () => 'nothing came');
  timedOut.catch(() => {});
  await clock.advance(1_000);
  await t.rejects(timedOut, { code: 'DEADLINE_EXCEEDED', reason: 'PEER_UNAVAILABLE', message: 'nothing came' }, 'a timed wait is a wait on the target');
});

t.test('FailableWaits: the first error ends every wait; a cancellation ends waits not past the commit', async (t) => {
  const clock = new ManualClock();
  const controller = new AbortController();
  const waits = new FailableWaits(clock, controller.signal);
  const before = waits.until(() => false);
  const after = waits.until(() => false, { pastCommit: true });
  before.catch(() => {});
  after.catch(() => {});
  controller.abort(new AbortedError('cancelled by request'));
  await t.rejects(before, { code: 'ABORTED', message: 'cancelled by request' });
  let afterSettled = false;
  after.finally(() => (afterSettled = true)).catch(() => {});
  await clock.advance(1_000);
  t.notOk(afterSettled, 'a wait past the commit point ignores the cancellation');
  waits.fail(new UnavailableError('the target went away'));
  waits.fail(new UnavailableError('a later error'));
  await t.rejects(after, { code: 'UNAVAILABLE', message: 'the target went away' }, 'the first error wins');
  t.equal(waits.error?.message, 'the target went away');
});

t.test('TokenBucket: a 50 ms burst, then waits in proportion to the bytes over the rate', async (t) => {
  const clock = new ManualClock(1_000);
  const bucket = new TokenBucket(clock);
  const rate = 1_000_000; // 1 MB/s: the burst is 50 kB
  t.equal(bucket.take(50_000, rate), 0, 'the burst goes at once');
  t.equal(bucket.take(10_000, rate), 10, '10 kB over the rate waits 10 ms');
  await clock.advance(10);
  t.equal(bucket.take(10_000, rate), 10, 'the debt was paid; the next 10 kB waits again');
  await clock.advance(1_000);
  t.equal(bucket.take(40_000, rate), 0, 'a pause refills at most the burst');
  t.equal(bucket.take(20_000, rate), 10);
  t.equal(bucket.take(1e9, 0), 0, 'rate 0: no limit');
  t.equal(bucket.take(1e9, Infinity), 0, 'rate Infinity: no limit');
});

t.test('smoothRttMs: the first sample, then an exponential average', async (t) => {
  t.equal(smoothRttMs(0, 10), 10);
  t.equal(smoothRttMs(10, 20), 12);
  t.ok(Math.abs(smoothRttMs(12, 12) - 12) < 1e-9, 'a steady round trip stays put');
});
