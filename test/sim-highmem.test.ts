// Guest memory above 4 GiB: page numbers past 2^20, byte offsets past 2^32. Writes there (direct,
// by the workload's own code, by disk reads into the page cache at the top of memory) must be
// checkpointed, restored and replayed like any other. The guest stays sparse: only the 64 MiB
// segments actually written are allocated.
import t from 'tap';
import { PAGE_BYTES } from '../shared/driver/types.js';
import { SimDriver, type SimReplica, ZERO_CONTENT_MIX } from '../shared/driver/sim/index.js';
import { memoryLayout } from '../shared/driver/sim/machine.js';
import { Random } from '../shared/random.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const GUEST_BYTES = 5 * GiB;
const FOUR_GIB_PAGE = 2 ** 20; // first page above 4 GiB

t.test('a 5 GiB guest: pages above 4 GiB are checkpointed, restored and replayed', async (t) => {
  const environmentSeed = 0x4a1b;
  const dataSeed = 99;
  t.comment(`environmentSeed ${environmentSeed}, dataSeed ${dataSeed}`);
  // A fixed instruction budget makes the pages the workload writes the same on every run (they
  // depend on instruction counts only); this one reaches above 4 GiB within a few units, so few
  // 64 MiB segments get allocated and the checkpoint stays quick.
  const source = new SimDriver({ memoryBytesTotal: 6 * GiB, guest: { pacing: 'manual', instructionsPerMs: 1500 } });
  // A lazy replica, so that it stays sparse too (a replica's memory is otherwise made ready, all 5 GiB of it, at reservation).
  const target = new SimDriver({ memoryBytesTotal: 6 * GiB, guest: { pacing: 'manual' }, replicaMemory: 'lazy' });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  const rates = { workingSetFraction: 1, sequentialFraction: 0, pageWritesPerSec: 100, diskReadsPerSec: 100 };
  const guest = source.createGuest({ id: 'big', profile: 'idle', memoryBytes: GUEST_BYTES, contentMix: ZERO_CONTENT_MIX, rates, environmentSeed });
  const pageCount = guest.pages.pageCount;
  t.equal(pageCount, GUEST_BYTES / PAGE_BYTES);
  const layout = memoryLayout(pageCount, guest.config.rates);
  t.ok(layout.pageCacheFirstPage > FOUR_GIB_PAGE, 'the page cache lies above 4 GiB');
  t.ok(layout.workingSetFirstPage + layout.workingSetPages > FOUR_GIB_PAGE, 'the working set reaches above 4 GiB');
  t.equal(guest.machine.memory.allocatedBytes, 0, 'a zero-content guest allocates nothing at boot');

  // Direct writes around and above the 4 GiB boundary, before the recording (not events).
  const random = new Random(dataSeed);
  const written = new Map<number, Uint8Array>();
  for (const page of [FOUR_GIB_PAGE - 1, FOUR_GIB_PAGE, FOUR_GIB_PAGE + 12345, pageCount - 1]) {
    const data = new Uint8Array(PAGE_BYTES);
    random.fill(data);
    guest.machine.memory.writePage(page, data);
    written.set(page, data);
  }

  const start = guest.startRecording();
  const digests = [guest.digest()];
  const replica = target.reserve(guest.describe()) as SimReplica;
  guest.pages.startDirtyTracking();
  let checkpointBytes = 0;
  let chunks = 0;
  for await (const c of guest.liveCheckpoint({ chunkPages: 4096 })) {
    replica.restoreChunk(c);
    checkpointBytes += c.bytes.length;
    if (++chunks % 80 === 0) {
      await guest.step(1);
      digests.push(guest.digest());
    }
  }
  t.equal(chunks, pageCount / 4096 + 1);
  t.ok(checkpointBytes < 64 * MiB, `zero pages are elided: ${(checkpointBytes / MiB).toFixed(1)} MiB of checkpoint for 5 GiB`);
  t.equal(replica.digest(), digests[0], 'restored at the instant');
  for (const [page, data] of written) {
    const out = new Uint8Array(PAGE_BYTES);
    replica.pages.readPages(page, 1, out);
    t.ok(Buffer.from(out).equals(Buffer.from(data)), `page ${page} (byte offset ${page * PAGE_BYTES}) restored with the bytes written`);
  }

  // Run until the workload's own writes and the disk reads have landed above 4 GiB.
  const dirty = new Set<number>(guest.pages.fetchAndClearDirty());
  const above = () => [...dirty].filter((p) => p >= FOUR_GIB_PAGE);
  const aboveInWorkingSet = () => above().filter((p) => p < layout.pageCacheFirstPage);
  for (let k = 0; k < 100 && (aboveInWorkingSet().length === 0 || k === 0); k++) {
    await guest.step(1);
    digests.push(guest.digest());
    for (const p of guest.pages.fetchAndClearDirty()) dirty.add(p);
  }
  t.comment(`${digests.length - 1} units recorded`);
  t.ok(aboveInWorkingSet().length >= 1, `the workload wrote pages above 4 GiB: ${aboveInWorkingSet().slice(0, 5).join(', ')}`);
  t.ok(above().some((p) => p >= layout.pageCacheFirstPage), 'disk reads landed in the page cache above 4 GiB');
  await guest.suspend();
  const finalDigest = guest.digest();

  let k = 0;
  const mismatches: number[] = [];
  for (let u = await guest.nextSealedUnit(); u !== null; u = await guest.nextSealedUnit()) {
    replica.applyUnit(u.bytes);
    if (!u.final && replica.digest() !== digests[++k]) mismatches.push(u.sequence);
  }
  t.equal(k, digests.length - 1, 'every unit replayed');
  t.same(mismatches, [], 'digests equal at every unit boundary');
  t.ok(replica.complete);
  t.equal(replica.digest(), finalDigest, 'final digests equal');
  t.equal(replica.nextSequence, start.firstSequence + k + 1);

  // Byte for byte, every page written above 4 GiB during the recording, and the direct writes.
  const a = new Uint8Array(PAGE_BYTES);
  const b = new Uint8Array(PAGE_BYTES);
  const differing: number[] = [];
  for (const p of above()) {
    guest.pages.readPages(p, 1, a);
    replica.pages.readPages(p, 1, b);
    if (!Buffer.from(a).equals(Buffer.from(b))) differing.push(p);
  }
  t.same(differing, [], `${above().length} pages above 4 GiB equal on source and replica`);
  for (const [page, data] of written) {
    replica.pages.readPages(page, 1, b);
    if (!dirty.has(page)) t.ok(Buffer.from(b).equals(Buffer.from(data)), `page ${page} still holds the bytes written`);
  }

  // Sparse: only the segments written are allocated, on both sides.
  t.ok(guest.machine.memory.allocatedBytes <= GUEST_BYTES / 4, `source allocated ${guest.machine.memory.allocatedBytes / MiB} MiB of 5 GiB`);
  t.ok(replica.machine.memory.allocatedBytes <= GUEST_BYTES / 4, `replica allocated ${replica.machine.memory.allocatedBytes / MiB} MiB of 5 GiB`);
});
