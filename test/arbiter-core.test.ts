// The arbiter's logic on a manual clock (the fencing timing argument, step by step), a store
// transaction whose answer is lost, the in-memory store's etcd rules, and the configuration
// section with its factory.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { EtcdArbiter } from '../shared/arbiter/etcd.js';
import { createArbiter } from '../shared/arbiter/factory.js';
import type { ArbiterKv, KvCompare, KvOp, TxnResult } from '../shared/arbiter/kv.js';
import { LeaseArbiter } from '../shared/arbiter/core.js';
import { MemoryArbiter } from '../shared/arbiter/memory.js';
import { MemoryArbiterStore } from '../shared/arbiter/memory-kv.js';
import type { GuestView } from '../shared/arbiter/types.js';
import { ManualClock } from '../shared/clock.js';
import { ConfigError, validateConfig } from '../shared/config.js';
import { UnavailableError } from '../shared/errors.js';

t.test('timing: a holder cut off fences at grant + TTL - margin; the lease ends at the store only at grant + TTL', async (t) => {
  const clock = new ManualClock();
  const store = new MemoryArbiterStore(clock);
  const a = new MemoryArbiter(store, { holderId: 'a', leaseTtlMs: 1000 });
  const b = new MemoryArbiter(store, { holderId: 'b', leaseTtlMs: 1000 });
  const term = await a.claim('vm-1');
  await clock.advance(5000);
  t.ok(term.isHeld(), 'renewals every 250 ms keep the term for 5 s');
  t.equal(term.state, 'held');

  store.cut('a'); // just after the renewal sent at 5000 ms: the lease lasts to 6000 ms at the store
  let vacancy: GuestView | null = null;
  void b.waitForVacancy('vm-1').then((view) => (vacancy = view));
  await clock.advance(749);
  t.ok(term.isHeld(), '1 ms before the local deadline: still held');
  await clock.advance(1);
  t.notOk(term.isHeld(), 'at the deadline (5000 + 1000 - 250): not held');
  t.equal(term.state, 'fenced');
  t.match(await term.fenced, { reason: 'lease-unknown', epoch: 1, message: /not renewed for 750 ms \(TTL 1000 ms, margin 250 ms\)/ });
  await t.rejects(b.goLive('vm-1', 1), { code: 'FAILED_PRECONDITION', reason: 'ARBITER_PRIMARY_HELD' }, 'the fenced holder\'s lease still lives at the store: no go-live yet');
  await clock.advance(249);
  t.equal(vacancy, null, '1 ms before the lease ends: no vacancy');
  await clock.advance(1);
  t.match(vacancy, { record: { epoch: 1, holder: 'a' }, primaryAlive: false }, 'the lease ended at 6000 ms: vacancy');
  t.equal((await b.goLive('vm-1', 1)).epoch, 2, 'the standby goes live 250 ms after the old primary fenced');

  store.restore('a');
  t.equal(await a.stillPrimary('vm-1', 1), false);
  await Promise.all([a.close(), b.close()]);
});

t.test('timing: a forced go-live outwaits the old lease before it returns', async (t) => {
  const clock = new ManualClock();
  const store = new MemoryArbiterStore(clock);
  const a = new MemoryArbiter(store, { holderId: 'a', leaseTtlMs: 1000 });
  const b = new MemoryArbiter(store, { holderId: 'b', leaseTtlMs: 1000 });
  const old = await a.claim('vm-1');
  store.cut('a'); // a hears nothing of the takeover: only its deadline can stop it
  let live = false;
  const going = b.goLive('vm-1', 1, { force: true }).then((term) => ((live = true), term));
  await clock.advance(750);
  t.equal(old.state, 'fenced', 'the old primary fenced itself at its deadline');
  t.notOk(live, 'the new one is not live yet');
  await clock.advance(250);
  t.ok(live, 'live once the old lease TTL passed since the revoke');
  t.equal((await going).epoch, 2);
  store.restore('a');
  await Promise.all([a.close(), b.close()]);
});

/** A store whose transactions are applied but whose answers are lost, or lost before applying. */
function lossyTxn(inner: ArbiterKv, applied: boolean): ArbiterKv {
  return Object.assign(Object.create(inner) as ArbiterKv, {
    async txn(compares: readonly KvCompare[], ops: readonly KvOp[]): Promise<TxnResult> {
      if (applied) await inner.txn(compares, ops);
      throw new UnavailableError('the answer was lost', { reason: 'ARBITER_UNAVAILABLE' });
    },
  });
}

t.test('a compare-and-swap whose answer was lost is read back, never repeated', async (t) => {
  const store = new MemoryArbiterStore();
  const won = new LeaseArbiter(lossyTxn(store.client('a'), true), { holderId: 'a', leaseTtlMs: 1000 });
  const term = await won.claim('vm-1');
  t.equal(term.epoch, 1, 'applied: the claim holds');
  t.equal(await won.stillPrimary('vm-1', 1), true);
  await won.close();

  const lost = new LeaseArbiter(lossyTxn(store.client('b'), false), { holderId: 'b', leaseTtlMs: 1000 });
  await t.rejects(lost.goLive('vm-1', 1), { code: 'UNAVAILABLE', reason: 'ARBITER_UNAVAILABLE', message: /read back, it was not applied/ });
  await lost.close();
  t.equal(store.leaseCount, 0, 'no lease left behind');
});

t.test('memory store: leases delete their keys in one revision; a cut client catches up in order', async (t) => {
  const clock = new ManualClock();
  const store = new MemoryArbiterStore(clock);
  const kv = store.client('w');
  const lease = await kv.leaseGrant(100);
  await kv.txn([{ key: '/k/a', modRevision: 0 }], [
    { kind: 'put', key: '/k/a', value: '1', leaseId: lease.id },
    { kind: 'put', key: '/k/b', value: '2', leaseId: lease.id },
  ]);
  const { revision } = await kv.range('/k/');
  const events: string[] = [];
  await kv.watch('/k/', revision, (e) => events.push(`${e.type} ${e.key} @${e.modRevision}`));
  await clock.advance(0);
  t.same(events, [`put /k/a @${revision}`, `put /k/b @${revision}`], 'a watch from a past revision replays it');
  store.cut('w');
  await clock.advance(100);
  t.same(events.length, 2, 'cut: nothing heard');
  await t.rejects(kv.range('/k/'), { code: 'UNAVAILABLE' });
  store.restore('w');
  t.same(events.slice(2), [`delete /k/a @${revision + 1}`, `delete /k/b @${revision + 1}`], 'restored: the expiry, both keys in one revision');
  t.same((await kv.range('/k/')).entries, []);
  t.equal(await kv.leaseKeepAlive(lease.id, 100), 0, 'an expired lease renews to 0');
  t.same(await kv.txn([{ key: '/k/a', modRevision: revision }], []), { succeeded: false, revision: revision + 1 }, 'a compare on a stale revision fails');
});

t.test('configuration: arbiter defaults to none; etcd and memory sections; the factory', async (t) => {
  const base = { tls: { plaintext: true } };
  t.same(validateConfig(base, 'test').arbiter, { kind: 'none' });
  t.equal(createArbiter({ kind: 'none' }, { holderId: 'a' }), null, 'none: no arbiter (failover is manual)');
  const etcd = validateConfig({ ...base, arbiter: { kind: 'etcd', endpoints: ['http://10.0.0.5:2379'] } }, 'test').arbiter;
  t.same(etcd, { kind: 'etcd', endpoints: ['http://10.0.0.5:2379'], leaseTtlMs: 2000, keyPrefix: '/vmmigrate', dialTimeoutMs: 5000, callTimeoutMs: 1000 });
  const bad: [unknown, string, RegExp][] = [
    [{ kind: 'zookeeper' }, 'arbiter.kind', /none, etcd or memory/],
    [{ kind: 'etcd' }, 'arbiter.endpoints', /required with kind etcd/],
    [{ kind: 'etcd', endpoints: ['10.0.0.5:2379'] }, 'arbiter.endpoints.0', /http:\/\/host:port/],
    [{ kind: 'etcd', endpoints: ['http://a:2379'], leaseTtlMs: 1500 }, 'arbiter.leaseTtlMs', /whole seconds/],
    [{ kind: 'etcd', endpoints: ['https://a:2379'] }, 'arbiter.tls', /need tls.ca/],
    [{ kind: 'etcd', endpoints: ['http://a:2379', 'https://b:2379'], tls: { ca: 'ca.pem' } }, 'arbiter.endpoints', /mixes/],
    [{ kind: 'etcd', endpoints: ['https://a:2379'], tls: { ca: 'ca.pem', cert: 'c.pem' } }, 'arbiter.tls.key', /go together/],
    [{ kind: 'etcd', endpoints: ['http://a:2379'], keyPrefix: 'vmmigrate/' }, 'arbiter.keyPrefix', /not ending in '\/'/],
    [{ kind: 'etcd', endpoints: ['http://a:2379'], ttl: 3 }, 'arbiter.ttl', /unknown field 'ttl'/],
  ];
  for (const [arbiter, field, says] of bad) {
    t.throws(() => validateConfig({ ...base, arbiter }, 'test'), { name: 'ConfigError', field, message: says }, field);
  }

  const memory = validateConfig({ ...base, arbiter: { kind: 'memory', leaseTtlMs: 500 } }, 'test').arbiter;
  const one = createArbiter(memory, { holderId: 'a' });
  const two = createArbiter(memory, { holderId: 'b' });
  t.type(one, MemoryArbiter);
  await one!.claim('vm-1');
  await t.rejects(two!.claim('vm-1'), { code: 'FAILED_PRECONDITION', reason: 'ARBITER_PRIMARY_HELD' }, 'the agents of one process share one store');
  await Promise.all([one!.close(), two!.close()]);

  const dir = mkdtempSync(join(tmpdir(), 'vmm-arbiter-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'ca.pem'), 'not really a certificate');
  const missing = { kind: 'etcd' as const, endpoints: ['https://a:2379'], leaseTtlMs: 2000, keyPrefix: '/v', dialTimeoutMs: 100, callTimeoutMs: 100, tls: { ca: join(dir, 'nope.pem') } };
  t.throws(() => createArbiter(missing, { holderId: 'a' }), ConfigError);
  t.throws(() => createArbiter(missing, { holderId: 'a' }), { field: 'arbiter.tls.ca', message: /cannot read .*nope\.pem/ });
  const unreachable = createArbiter({ kind: 'etcd', endpoints: ['http://127.0.0.1:1'], leaseTtlMs: 1000, keyPrefix: '/v', dialTimeoutMs: 200, callTimeoutMs: 100, holderId: 'x' }, { holderId: 'a' });
  t.type(unreachable, EtcdArbiter);
  t.equal(unreachable!.holderId, 'x', 'the section names the holder');
  // The arbiter's retry pauses are on the system clock, whose timers do not hold the process open.
  const keepOpen = setInterval(() => undefined, 1000);
  await t.rejects(unreachable!.read('vm-1'), { code: 'UNAVAILABLE', reason: 'ARBITER_UNAVAILABLE', message: /etcd range failed.*3 attempts/ });
  clearInterval(keepOpen);
  await unreachable!.close();
});
