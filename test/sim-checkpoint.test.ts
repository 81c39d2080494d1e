// The live checkpoint of a `sim` guest under concurrent writes: copy-on-write must keep the
// checkpoint instant even when the guest rewrites most of its memory before the checkpoint
// stream reaches it, and the copy-on-write pool's bound must stall the guest, not the image.
import t, { type Test } from 'tap';
import { PAGE_BYTES } from '../shared/driver/types.js';
import { SimDriver, type SimReplica, ZERO_CONTENT_MIX } from '../shared/driver/sim/index.js';

const MiB = 2 ** 20;
const GUEST_BYTES = 64 * MiB;

function puller<T>(iterable: AsyncIterable<T>): () => Promise<T | null> {
  const it = iterable[Symbol.asyncIterator]();
  return async () => {
    const r = await it.next();
    return r.done === true ? null : r.value;
  };
}

/** Lets pending promise continuations (a guest woken from a stall) run. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

function pagesDiffering(a: Uint8Array, b: Uint8Array): number[] {
  const out: number[] = [];
  for (let p = 0; p * PAGE_BYTES < a.length; p++) {
    const x = Buffer.from(a.buffer, a.byteOffset + p * PAGE_BYTES, PAGE_BYTES);
    const y = Buffer.from(b.buffer, b.byteOffset + p * PAGE_BYTES, PAGE_BYTES);
    if (!x.equals(y)) out.push(p);
  }
  return out;
}

/** With `reuseBuffer` the checkpoint writes every chunk into one buffer: each is restored before the next is pulled. */
async function mmuncherCheckpoint(t: Test, reuseBuffer: boolean): Promise<void> {
  const environmentSeed = 424242;
  t.comment(`environmentSeed ${environmentSeed}`);
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  const guest = source.createGuest({ id: 'munch', profile: 'mmuncher', memoryBytes: GUEST_BYTES, environmentSeed, contentSeed: 9 });
  await guest.step(2);
  const pageCount = guest.pages.pageCount;

  const start = guest.startRecording();
  const instantDigest = guest.digest();
  const instantImage = new Uint8Array(GUEST_BYTES);
  guest.pages.readPages(0, pageCount, instantImage);

  const replica = target.reserve(guest.describe()) as SimReplica;
  const next = puller(guest.liveCheckpoint({ chunkPages: 256, reuseBuffer }));
  const digests = [instantDigest];
  let chunks = 0;
  const buffers = new Set<ArrayBufferLike>();
  for (let c = await next(); c !== null; c = await next()) {
    replica.restoreChunk(c);
    chunks++;
    if (!c.final) buffers.add(c.bytes.buffer);
    // One unit (~600 whole-page writes, sequential) per 256-page chunk: the guest's sweep runs
    // far ahead of the checkpoint, so nearly every page is rewritten before it is sent.
    if (!c.final) {
      await guest.step(1);
      digests.push(guest.digest());
    }
  }
  t.equal(chunks, pageCount / 256 + 1, 'one chunk per 256 pages plus the state chunk');
  t.equal(buffers.size, reuseBuffer ? 1 : chunks - 1, reuseBuffer ? 'every memory chunk in one buffer' : 'a buffer per chunk');
  t.ok(replica.restored);
  t.equal(replica.nextSequence, start.firstSequence);
  t.equal(replica.digest(), instantDigest, 'the restored replica has exactly the digest of the checkpoint instant');
  t.not(guest.digest(), instantDigest, 'the source has moved on');

  const sourceNow = new Uint8Array(GUEST_BYTES);
  guest.pages.readPages(0, pageCount, sourceNow);
  const rewritten = pagesDiffering(instantImage, sourceNow);
  t.ok(rewritten.length > pageCount * 0.9, `most pages were rewritten during the checkpoint (${rewritten.length} of ${pageCount})`);
  // The rewritten pages are exactly the ones copy-on-write had to preserve: the replica must
  // hold their old contents, byte for byte.
  const replicaImage = new Uint8Array(GUEST_BYTES);
  replica.pages.readPages(0, pageCount, replicaImage);
  const wrong = pagesDiffering(instantImage, replicaImage);
  t.same(wrong.slice(0, 20), [], `every page of the replica is as of the instant (${wrong.length} differ)`);
  for (const page of [rewritten[0], rewritten[rewritten.length >> 1], rewritten[rewritten.length - 1]]) {
    const a = new Uint8Array(PAGE_BYTES);
    replica.pages.readPages(page, 1, a);
    t.ok(Buffer.from(a).equals(Buffer.from(instantImage.subarray(page * PAGE_BYTES, (page + 1) * PAGE_BYTES))), `rewritten page ${page} was preserved`);
    t.notOk(Buffer.from(a).equals(Buffer.from(sourceNow.subarray(page * PAGE_BYTES, (page + 1) * PAGE_BYTES))), `page ${page} differs from the source's current one`);
  }

  // And the replay from there still reaches the source's state at every boundary.
  await guest.suspend();
  const finalDigest = guest.digest();
  let k = 0;
  const mismatches: number[] = [];
  for (let u = await guest.nextSealedUnit(); u !== null; u = await guest.nextSealedUnit()) {
    replica.applyUnit(u.bytes);
    if (!u.final) {
      k++;
      if (replica.digest() !== digests[k]) mismatches.push(u.sequence);
    }
  }
  t.equal(k, digests.length - 1, 'every stepped unit was replayed');
  t.same(mismatches, [], 'digests equal at every boundary');
  t.ok(replica.complete);
  t.equal(replica.digest(), finalDigest);
}

t.test('mmuncher: a checkpoint pulled slowly while the guest rewrites its memory restores the instant', (t) => mmuncherCheckpoint(t, false));
t.test('mmuncher: the same with one chunk buffer reused for every chunk', (t) => mmuncherCheckpoint(t, true));

t.test('a full copy-on-write pool stalls the guest until the checkpoint catches up', async (t) => {
  const environmentSeed = 777;
  t.comment(`environmentSeed ${environmentSeed}`);
  const cowBytesMax = 1 * MiB; // 256 pages; one mmuncher unit writes ~600
  const source = new SimDriver({ guest: { pacing: 'manual', cowBytesMax } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  const guest = source.createGuest({ id: 'munch', profile: 'mmuncher', memoryBytes: GUEST_BYTES, environmentSeed, contentSeed: 3 });
  await guest.step(1);
  guest.startRecording();
  const instantDigest = guest.digest();
  const replica = target.reserve(guest.describe()) as SimReplica;
  const next = puller(guest.liveCheckpoint({ chunkPages: 64 }));
  const digests = [instantDigest];

  // The first unit runs (the pool is empty) and preserves pages beyond the pool's bound.
  await guest.step(1);
  digests.push(guest.digest());
  // The second must wait for the checkpoint reader to send those preserved pages.
  let stepped = false;
  const pending = guest.step(1).then(() => {
    stepped = true;
  });
  await settle();
  t.equal(stepped, false, 'the guest is stalled while the pool is full');
  const before = guest.digest();
  t.equal(before, digests[1], 'a stalled guest does not run');

  let pulls = 0;
  let last = null;
  while (!stepped) {
    const c = await next();
    if (c === null) break;
    replica.restoreChunk(c);
    last = c;
    pulls++;
    await settle();
  }
  await pending;
  t.ok(stepped, 'the guest ran once the checkpoint had sent the preserved pages');
  t.ok(pulls > 1 && last !== null && !last.final, `it ran before the checkpoint finished (after ${pulls} chunks)`);
  digests.push(guest.digest());

  // Finish the checkpoint while stepping; it still has the instant.
  for (let c = await next(); c !== null; c = await next()) {
    replica.restoreChunk(c);
    if (!c.final && c.index % 16 === 0) {
      await guest.step(1);
      digests.push(guest.digest());
    }
  }
  t.equal(replica.digest(), instantDigest, 'the restored replica has the digest of the instant');
  for (let i = 0; i < 3; i++) {
    await guest.step(1);
    digests.push(guest.digest());
  }
  await guest.suspend();
  const finalDigest = guest.digest();
  let k = 0;
  const mismatches: number[] = [];
  for (let u = await guest.nextSealedUnit(); u !== null; u = await guest.nextSealedUnit()) {
    replica.applyUnit(u.bytes);
    k++;
    if (!u.final && replica.digest() !== digests[k]) mismatches.push(u.sequence);
  }
  t.equal(k, digests.length, 'every stepped unit, then the final one');
  t.same(mismatches, [], 'digests equal at every boundary');
  t.equal(replica.digest(), finalDigest);
  t.ok(replica.complete);
});

t.test('the checkpoint stream of a stopped recording does not deliver live memory as the instant', async (t) => {
  const environmentSeed = 31;
  t.comment(`environmentSeed ${environmentSeed}`);
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  const guest = source.createGuest({ id: 'ab', profile: 'mmuncher', memoryBytes: GUEST_BYTES, environmentSeed, contentSeed: 4 });
  guest.startRecording();
  const instantDigest = guest.digest();
  const replica = target.reserve(guest.describe()) as SimReplica;
  const next = puller(guest.liveCheckpoint());
  for (let i = 0; i < 8; i++) replica.restoreChunk((await next())!);
  await guest.step(20); // rewrites most pages the checkpoint has not reached: preserved
  await guest.suspend();
  guest.resume(); // an aborted migration: the recording, and its checkpoint, end
  t.equal(guest.state, 'running');
  let streamError: unknown;
  try {
    for (let c = await next(); c !== null; c = await next()) replica.restoreChunk(c);
  } catch (error) {
    streamError = error;
  }
  t.comment(`stream after stopRecording: ${streamError instanceof Error ? `${streamError.name}: ${streamError.message}` : `ended, replica restored=${replica.restored}`}`);
  t.ok(streamError !== undefined || (replica.restored && replica.digest() === instantDigest), 'the stream either fails or still yields the instant');
});

t.test('pages written to a replica while it restores do not survive as stale data', async (t) => {
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  const guest = source.createGuest({ id: 'wp', profile: 'idle', memoryBytes: GUEST_BYTES, environmentSeed: 13, contentMix: ZERO_CONTENT_MIX });
  guest.startRecording();
  const instantDigest = guest.digest();
  const replica = target.reserve(guest.describe()) as SimReplica;
  const junk = new Uint8Array(PAGE_BYTES).fill(0xab);
  const refused = (() => {
    try {
      replica.pages.writePages(5000, 1, junk); // page 5000 is zero at the instant: elided from the checkpoint
      return false;
    } catch {
      return true;
    }
  })();
  for await (const c of guest.liveCheckpoint()) replica.restoreChunk(c);
  t.ok(replica.restored);
  const page = new Uint8Array(PAGE_BYTES);
  replica.pages.readPages(5000, 1, page);
  t.comment(`writePages while restoring was ${refused ? 'refused' : 'accepted'}; page 5000 byte 0 is now ${page[0]}`);
  t.ok(refused || replica.digest() === instantDigest, 'either the write is refused, or the restore still yields the instant');
});
