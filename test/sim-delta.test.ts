// Delta checkpoints of the `sim` guest (capability delta-checkpoint, CR/TR's hybrid catch-up): a
// replica restored to the previous instant and replayed part of the way, then given the delta, is
// at the new instant; the log goes on from there and the final digests agree. Bad deltas are
// refused and change nothing.
import t, { type Test } from 'tap';
import type { CheckpointChunk } from '../shared/driver/types.js';
import { collectChunks as collect, drainUnits as drain } from './support/sim-log.js';
import { SimDriver, type SimReplica, type SimSourceGuest } from '../shared/driver/sim/index.js';

const MiB = 2 ** 20;

async function setUp(t: Test, profile = 'compile') {
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  const guest = source.createGuest({ id: 'g', profile, memoryBytes: 64 * MiB, environmentSeed: 77 }) as SimSourceGuest;
  await guest.step(3);
  const start = guest.startRecording();
  const replica = target.reserve(guest.describe()) as SimReplica;
  return { guest, replica, start };
}

t.test('a delta brings a partly replayed replica to the new instant; the log goes on from it', async (t) => {
  const { guest, replica, start } = await setUp(t);
  for (const c of await collect(guest.liveCheckpoint({ chunkPages: 256 }))) replica.restoreChunk(c);
  t.ok(replica.restored);
  await guest.step(20);
  const before = await drain(guest);
  t.equal(before.length, 20);
  // The replica replays 5 of the 20 units: it is anywhere between the two instants.
  for (const u of before.slice(0, 5)) replica.applyUnit(u);
  await guest.step(10);
  const dirty = guest.pagesDirtiedSinceInstant();
  t.ok(dirty > 0, `${dirty} pages dirtied since the recording began`);
  const delta = guest.rebase();
  t.equal(delta.generation, 1);
  t.equal(delta.firstSequence, start.firstSequence + 30);
  t.equal(delta.pages, dirty, 'the delta holds the dirtied pages');
  t.equal(guest.recordingStats().unitsQueued, 0, 'the 10 queued units before the instant were dropped');
  t.equal(guest.recordingStats().unitsDropped, 10);
  t.equal(guest.pagesDirtiedSinceInstant(), 0, 'the instant moved: nothing dirty since');
  // The guest runs on while the delta streams (copy-on-write keeps the instant).
  const chunks = guest.deltaCheckpoint({ chunkPages: 64 })[Symbol.asyncIterator]();
  const first = await chunks.next();
  await guest.step(5);
  const rest = [first.value as CheckpointChunk];
  for (let r = await chunks.next(); r.done !== true; r = await chunks.next()) rest.push(r.value);
  replica.beginDelta(1, delta.firstSequence);
  t.throws(() => replica.applyUnit(before[5]), /no unit replays while delta 1/, 'no replay while a delta is applied');
  for (const c of rest) replica.restoreDeltaChunk(c);
  t.notOk(replica.deltaInProgress);
  t.equal(replica.nextSequence, delta.firstSequence, 'the replica is at the delta instant');
  await guest.suspend();
  for (const u of await drain(guest)) replica.applyUnit(u);
  t.ok(replica.complete);
  t.equal(replica.digest(), guest.digest(), 'digests agree after delta + log');
});

t.test('deltas chain: a second delta after the first one', async (t) => {
  const { guest, replica } = await setUp(t, 'web');
  for (const c of await collect(guest.liveCheckpoint())) replica.restoreChunk(c);
  for (let generation = 1; generation <= 3; generation++) {
    await guest.step(7);
    const d = guest.rebase();
    t.equal(d.generation, generation);
    replica.beginDelta(d.generation, d.firstSequence);
    for (const c of await collect(guest.deltaCheckpoint())) replica.restoreDeltaChunk(c);
    t.equal(replica.nextSequence, d.firstSequence);
  }
  await guest.step(4);
  await guest.suspend();
  for (const u of await drain(guest)) replica.applyUnit(u);
  t.equal(replica.digest(), guest.digest());
});

t.test('refusals: order, preconditions, corruption', async (t) => {
  const { guest, replica } = await setUp(t);
  t.throws(() => guest.rebase(), /previous checkpoint of this recording was not taken/, 'no delta before the full checkpoint streamed');
  for (const c of await collect(guest.liveCheckpoint())) replica.restoreChunk(c);
  await guest.step(6);
  const units = await drain(guest);
  const d = guest.rebase();
  t.throws(() => guest.rebase(), /not taken yet/, 'one delta at a time');
  t.throws(() => replica.beginDelta(2, d.firstSequence), /delta 2 out of order: expected delta 1/);
  const chunks = await collect(guest.deltaCheckpoint({ chunkPages: 64 }));
  t.ok(chunks.length >= 2);
  t.throws(() => replica.restoreDeltaChunk(chunks[0]), /no delta in progress/);
  replica.beginDelta(1, d.firstSequence);
  const corrupt = { ...chunks[0], bytes: chunks[0].bytes.slice() };
  corrupt.bytes[40] ^= 1;
  t.throws(() => replica.restoreDeltaChunk(corrupt), /checksum mismatch/);
  t.throws(() => replica.restoreDeltaChunk(chunks[chunks.length - 1]), /out of order/);
  for (const c of chunks) replica.restoreDeltaChunk(c);
  t.throws(() => replica.restoreDeltaChunk(chunks[0]), /after the delta's final chunk|no delta in progress/);
  t.throws(() => replica.applyUnit(units[0]), /already applied|duplicate/i, 'units before the instant are obsolete');
});

t.test('a replica that replayed past the instant refuses the delta', async (t) => {
  const { guest, replica, start } = await setUp(t);
  for (const c of await collect(guest.liveCheckpoint())) replica.restoreChunk(c);
  await guest.step(4);
  for (const u of await drain(guest)) replica.applyUnit(u);
  t.throws(() => replica.beginDelta(1, start.firstSequence + 2), /past the instant/);
});
