// Checkpoints over a base image (target-agent/base-image.ts): a replica that adopts an image of the
// guest its host holds already (a standby's replica left by a broken transfer, or the guest's own
// copy stopped there by a failover) gets only the pages whose hash differs, and ends equal to the
// source all the same. Zero pages written since the base go too; a full checkpoint restores over a
// base as well (its elided zero pages written); a replica without a base refuses based chunks.
import t, { type Test } from 'tap';
import type { CheckpointChunk } from '../shared/driver/types.js';
import { collectChunks as collect, drainUnits as drain } from './support/sim-log.js';
import { SimDriver, type SimReplica, type SimSourceGuest } from '../shared/driver/sim/index.js';
import { PAGE_BYTES } from '../shared/driver/types.js';

const MiB = 2 ** 20;

function drivers(t: Test) {
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  return { source, target };
}

const sum = (chunks: CheckpointChunk[], key: 'pagesSkipped' | 'bytesSaved') => chunks.reduce((n, c) => n + (c[key] ?? 0), 0);
const rawBytes = (chunks: CheckpointChunk[]) => chunks.reduce((n, c) => n + c.bytes.length, 0);

/** A standby restored and replayed part of the way, its guest run on, its recording ended (the stream was given up). */
async function abandonedStandby(t: Test, profile = 'db') {
  const { source, target } = drivers(t);
  const guest = source.createGuest({ id: 'g', profile, memoryBytes: 64 * MiB, environmentSeed: 5 }) as SimSourceGuest;
  await guest.step(2);
  guest.startRecording();
  const standby = target.reserve(guest.describe()) as SimReplica;
  const full = await collect(guest.liveCheckpoint({ chunkPages: 256 }));
  for (const c of full) standby.restoreChunk(c);
  await guest.step(30);
  for (const u of (await drain(guest)).slice(0, 12)) standby.applyUnit(u);
  guest.stopRecording();
  await guest.step(20);
  return { source, target, guest, standby, full };
}

t.test('a resync over the standby sends only the pages that differ, and the new replica equals the source', async (t) => {
  const { target, guest, standby, full } = await abandonedStandby(t);
  t.throws(() => target.reserve(guest.describe()), /already has a reservation/, 'without a base the standby still holds the guest');
  const replica = target.reserve(guest.describe(), { kind: 'standby', replica: standby });
  t.equal(replica.base?.kind, 'standby');
  t.throws(() => standby.applyUnit(new Uint8Array(64)), /discarded/, 'the old replica is no longer usable');
  const hashes = replica.base!.pageHashes();
  t.equal(hashes.length, (64 * MiB) / PAGE_BYTES);
  guest.startRecording();
  const chunks = await collect(guest.liveCheckpoint({ chunkPages: 256, base: hashes }));
  const pages = (64 * MiB) / PAGE_BYTES;
  const skipped = sum(chunks, 'pagesSkipped');
  t.ok(skipped > pages / 2, `${skipped} of ${pages} pages left out as the same as the base`);
  t.ok(sum(chunks, 'bytesSaved') > 0, `${sum(chunks, 'bytesSaved')} raw bytes saved`);
  t.ok(rawBytes(chunks) < rawBytes(full) / 2, `${rawBytes(chunks)} raw bytes over the base against ${rawBytes(full)} for the full checkpoint`);
  for (const c of chunks) replica.restoreChunk(c);
  await guest.step(8);
  await guest.suspend();
  for (const u of await drain(guest)) replica.applyUnit(u);
  t.ok(replica.complete);
  t.equal(replica.digest(), guest.digest(), 'digests agree: the base plus the differing pages is the source');
});

t.test('a page zeroed since the base goes too (the target memory is not fresh)', async (t) => {
  const { target, guest, standby } = await abandonedStandby(t, 'web');
  // A page the standby holds non-zero, zeroed on the source since.
  const page = 10;
  const memory = guest.machine.memory;
  t.ok(memory.pageBytesOrNull(page) !== null, 'the page was written');
  memory.writePage(page, new Uint8Array(PAGE_BYTES));
  const replica = target.reserve(guest.describe(), { kind: 'standby', replica: standby });
  guest.startRecording();
  for (const c of await collect(guest.liveCheckpoint({ base: replica.base!.pageHashes() }))) replica.restoreChunk(c);
  await guest.suspend();
  for (const u of await drain(guest)) replica.applyUnit(u);
  t.equal(replica.digest(), guest.digest());
});

t.test('a full checkpoint restores over a base too: its elided zero pages are written', async (t) => {
  const { target, guest, standby } = await abandonedStandby(t, 'web');
  guest.machine.memory.writePage(11, new Uint8Array(PAGE_BYTES));
  const replica = target.reserve(guest.describe(), { kind: 'standby', replica: standby });
  guest.startRecording();
  for (const c of await collect(guest.liveCheckpoint())) replica.restoreChunk(c);
  await guest.suspend();
  for (const u of await drain(guest)) replica.applyUnit(u);
  t.equal(replica.digest(), guest.digest());
});

t.test('a fail back: the guest copy stopped by a failover is retired, never resumes, and is the base of the replica that takes it back', async (t) => {
  const { source, target } = drivers(t);
  const guest = source.createGuest({ id: 'g', profile: 'compile', memoryBytes: 64 * MiB, environmentSeed: 9 }) as SimSourceGuest;
  const old = target.createGuest({ id: 'g', profile: 'compile', memoryBytes: 64 * MiB, environmentSeed: 9 }) as SimSourceGuest;
  await old.step(3);
  t.throws(() => old.retire(), /only a suspended guest/, 'a running guest is not retired');
  await old.suspend();
  old.retire();
  t.throws(() => old.resume(), /failed over elsewhere: this copy never runs again/, 'a retired copy never resumes');
  await guest.step(5);
  const replica = target.reserve(guest.describe(), { kind: 'stopped' });
  t.equal(replica.base?.kind, 'stopped');
  t.same(target.listGuests(), [], 'the stopped copy left the host: it is the replica now');
  guest.startRecording();
  const chunks = await collect(guest.liveCheckpoint({ base: replica.base!.pageHashes() }));
  t.ok(sum(chunks, 'pagesSkipped') > 0, `${sum(chunks, 'pagesSkipped')} pages the same as the stopped copy`);
  for (const c of chunks) replica.restoreChunk(c);
  await guest.step(4);
  await guest.suspend();
  for (const u of await drain(guest)) replica.applyUnit(u);
  t.equal(replica.digest(), guest.digest());
});

t.test('no base: a guest still running, another size; a replica without a base refuses based chunks', async (t) => {
  const { source, target } = drivers(t);
  const running = target.createGuest({ id: 'g', profile: 'web', memoryBytes: 64 * MiB }) as SimSourceGuest;
  const guest = source.createGuest({ id: 'g', profile: 'web', memoryBytes: 64 * MiB }) as SimSourceGuest;
  t.throws(() => target.reserve(guest.describe(), { kind: 'stopped' }), /already runs on this host/, 'a guest not retired is never taken');
  running.discard();
  const other = target.createGuest({ id: 'g', profile: 'web', memoryBytes: 128 * MiB }) as SimSourceGuest;
  await other.suspend();
  other.retire();
  t.throws(() => target.reserve(guest.describe(), { kind: 'stopped' }), /already runs on this host/, 'a copy of another size is no base');
  other.discard();
  const fresh = target.reserve(guest.describe(), { kind: 'stopped' });
  t.equal(fresh.base, null, 'nothing to adopt: fresh memory');
  guest.startRecording();
  t.throws(() => guest.liveCheckpoint({ base: new BigUint64Array(3) }), /base image of 3 pages/);
  const zeros = new BigUint64Array((64 * MiB) / PAGE_BYTES);
  const based = await collect(guest.liveCheckpoint({ base: zeros }));
  t.throws(() => fresh.restoreChunk(based[0]), /kind 3.*holds no base image/);
});
