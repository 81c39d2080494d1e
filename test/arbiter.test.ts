// The arbiter's contract, run against both implementations: MemoryArbiter always, EtcdArbiter
// against a private etcd where Debian's etcd-server is installed (a visible skip elsewhere).
// Claims, the go-live compare-and-swap, fencing (newer epoch, lease revoked, holder cut off from
// the store), stillPrimary, release and retire. Leases of 1 s keep it short. Orderings are
// asserted (the old primary fenced before the standby went live), never durations.

import t, { type Test } from 'tap';
import type { Arbiter, FenceEvent, PrimaryTerm } from '../shared/arbiter/types.js';
import { type ArbiterWorld, etcdWorld, memoryWorld } from './support/arbiter-worlds.js';
import { skipUnlessDebianPackage } from './support/debian.js';
import { ETCD_EXECUTABLE, ETCD_PACKAGE } from './support/etcd.js';

/** Leases of tests that wait for one to end; the others hold 2 s leases, which a loaded machine keeps renewed more surely. */
const TTL_MS = 1000;
const HOLD_TTL_MS = 2000;
/** Bound on waiting for an event that must come (a guard against a hang, not a timing assertion). */
const EVENT_BOUND_MS = 10_000;

function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${EVENT_BOUND_MS} ms`)), EVENT_BOUND_MS);
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
}

/** Records when (performance.now()) the term was fenced, and how. */
function watchFence(term: PrimaryTerm): { readonly event: FenceEvent | null; readonly atMs: number } {
  const seen = { event: null as FenceEvent | null, atMs: Infinity };
  term.onFenced((event) => {
    seen.event = event;
    seen.atMs = performance.now();
  });
  return seen;
}

function contract(world: (t: Test) => Promise<ArbiterWorld>): (t: Test) => Promise<void> {
  return async (t) => {
    const w = await world(t);
    const agents = async (ttlMs: number, ...names: string[]): Promise<Arbiter[]> => Promise.all(names.map((n) => w.arbiter(n, ttlMs)));

    await t.test('claim: epoch 1 for the first holder; a second holder is refused; the same holder gets its term back', async (t) => {
      const [a, b] = await agents(HOLD_TTL_MS, 'a1', 'b1');
      const term = await a.claim('vm-claim');
      t.equal(term.epoch, 1);
      t.match(term.record, { epoch: 1, holder: 'a1', site: 'a1' });
      t.ok(term.isHeld());
      t.match(await b.read('vm-claim'), { record: { epoch: 1, holder: 'a1' }, primaryAlive: true });
      await t.rejects(b.claim('vm-claim'), { code: 'FAILED_PRECONDITION', reason: 'ARBITER_PRIMARY_HELD', message: /primary is agent a1 at epoch 1/ });
      t.equal(await a.claim('vm-claim'), term, 'a claim of a held term returns it');
      await t.rejects(b.goLive('vm-claim', 1), { code: 'FAILED_PRECONDITION', reason: 'ARBITER_PRIMARY_HELD' }, 'no go-live while the lease lives');
      await t.rejects(a.claim(''), { code: 'INVALID_ARGUMENT' });
      await t.rejects(b.goLive('vm-claim', -1), { code: 'INVALID_ARGUMENT' });
    });

    await t.test('goLive: of two standbys going live from the same epoch exactly one wins', async (t) => {
      const [a, b, c] = await agents(HOLD_TTL_MS, 'a2', 'b2', 'c2');
      const term = await a.claim('vm-race');
      await term.release();
      t.equal(term.state, 'released');
      t.match(await b.read('vm-race'), { record: { epoch: 1, holder: 'a2' }, primaryAlive: false }, 'released: the record stays, the lease is gone');
      const results = await Promise.allSettled([b.goLive('vm-race', 1), c.goLive('vm-race', 1)]);
      const won = results.filter((r) => r.status === 'fulfilled');
      const lost = results.filter((r) => r.status === 'rejected');
      t.equal(won.length, 1, 'one winner');
      t.equal(lost.length, 1, 'one loser');
      const winner = (won[0] as PromiseFulfilledResult<PrimaryTerm>).value;
      t.equal(winner.epoch, 2);
      t.match((lost[0] as PromiseRejectedResult).reason, { code: 'ABORTED', reason: 'ARBITER_EPOCH_CONFLICT' });
      t.match(await a.read('vm-race'), { record: { epoch: 2, holder: winner.record.holder }, primaryAlive: true });
      await t.rejects(a.goLive('vm-race', 1, { force: true }), { code: 'ABORTED', reason: 'ARBITER_EPOCH_CONFLICT', message: /epoch 2/ }, 'a stale epoch loses, forced or not');
      await t.rejects(a.claim('vm-race'), { code: 'FAILED_PRECONDITION', reason: 'ARBITER_PRIMARY_HELD' }, 'the old holder cannot claim back');
    });

    await t.test('fencing: a forced go-live elsewhere fences the holder before it returns', async (t) => {
      const [a, b] = await agents(TTL_MS, 'a3', 'b3');
      const term = await a.claim('vm-force');
      const fence = watchFence(term);
      const live = await within(b.goLive('vm-force', 1, { force: true }), 'forced go-live');
      const liveAtMs = performance.now();
      t.equal(live.epoch, 2);
      t.ok(fence.event, 'the old holder was fenced');
      t.ok(fence.atMs < liveAtMs, 'before the new holder went live');
      t.ok(['superseded', 'lease-expired'].includes(fence.event!.reason), `reason ${fence.event?.reason}`);
      if (fence.event!.reason === 'superseded') t.match(fence.event!.newer, { epoch: 2, holder: 'b3' });
      t.notOk(term.isHeld());
      t.equal(await a.stillPrimary('vm-force', 1), false);
      t.equal(await b.stillPrimary('vm-force', 2), true);
    });

    await t.test('fencing: a lease revoked behind the holder is lease-expired; a standby waiting sees the vacancy', async (t) => {
      const [a, b] = await agents(HOLD_TTL_MS, 'a4', 'b4');
      const term = await a.claim('vm-revoked');
      const vacancy = b.waitForVacancy('vm-revoked');
      await w.revokePrimaryLease('vm-revoked');
      const event = await within(term.fenced, 'fence');
      t.equal(event.reason, 'lease-expired');
      t.equal(term.state, 'fenced');
      t.match(await within(vacancy, 'vacancy'), { record: { epoch: 1, holder: 'a4' }, primaryAlive: false });
      t.equal((await b.goLive('vm-revoked', 1)).epoch, 2);
    });

    await t.test('fencing: a holder cut off from the store fences itself before the standby can go live', async (t) => {
      const [a, b] = await agents(TTL_MS, 'a5', 'b5');
      const term = await a.claim('vm-cut');
      const fence = watchFence(term);
      const vacancy = b.waitForVacancy('vm-cut');
      w.cut('a5');
      const view = await within(vacancy, 'vacancy');
      t.match(view, { record: { epoch: 1, holder: 'a5' }, primaryAlive: false });
      t.equal(fence.event?.reason, 'lease-unknown', 'fenced by its local deadline before the lease expired');
      t.notOk(term.isHeld());
      const live = await b.goLive('vm-cut', view.record!.epoch);
      t.ok(fence.atMs < performance.now(), 'the old primary was fenced before the go-live returned');
      t.equal(live.epoch, 2);
      w.restore('a5');
      t.equal(await a.stillPrimary('vm-cut', 1), false, 'back in touch: not primary');
      await t.rejects(a.claim('vm-cut'), { reason: 'ARBITER_PRIMARY_HELD', message: /agent b5 at epoch 2/ });
    });

    await t.test('stillPrimary, release, retire, close', async (t) => {
      const [a, b] = await agents(HOLD_TTL_MS, 'a6', 'b6');
      const term = await a.claim('vm-life');
      t.equal(await a.stillPrimary('vm-life', 1), true);
      t.equal(await a.stillPrimary('vm-life', 2), false, 'another epoch');
      t.equal(await b.stillPrimary('vm-life', 1), false, 'another holder');
      let fenced = false;
      term.onFenced(() => (fenced = true));
      await term.release();
      t.equal(await a.stillPrimary('vm-life', 1), false, 'released');
      t.notOk(fenced, 'a release is no fence');
      const again = await a.claim('vm-life');
      t.equal(again.epoch, 2, 'the holder of the record claims again, one epoch on');
      await again.retire();
      t.match(await b.read('vm-life'), { record: null, primaryAlive: false }, 'retired: no record');
      const fresh = await b.claim('vm-life');
      t.equal(fresh.epoch, 1, 'a guest without records starts over');
      await b.close();
      t.equal(fresh.state, 'released', 'close releases');
      t.match(await a.read('vm-life'), { primaryAlive: false });
      await t.rejects(b.claim('vm-other'), { code: 'ABORTED', message: /closed/ });
    });
  };
}

t.test('MemoryArbiter', contract(async (t) => memoryWorld(t)));

t.test('EtcdArbiter', { skip: skipUnlessDebianPackage(ETCD_PACKAGE, ETCD_EXECUTABLE) }, async (t) => {
  const world = await etcdWorld(t);
  await contract(async () => world)(t);

  await t.test('etcd itself stops answering (SIGSTOP): the holder fences itself; after, its lease is gone', async (t) => {
    const a = await world.arbiter('a7', TTL_MS);
    const b = await world.arbiter('b7', TTL_MS);
    const term = await a.claim('vm-paused');
    world.etcd!.pause();
    let event: FenceEvent;
    try {
      event = await within(term.fenced, 'fence');
    } finally {
      world.etcd!.resume();
    }
    t.equal(event.reason, 'lease-unknown');
    const view = await within(b.waitForVacancy('vm-paused'), 'vacancy');
    t.match(view, { record: { epoch: 1, holder: 'a7' }, primaryAlive: false });
    t.equal((await b.goLive('vm-paused', 1)).epoch, 2);
  });
});
