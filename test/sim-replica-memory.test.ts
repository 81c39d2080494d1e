// A `sim` replica's memory is made ready at reservation (allocated, every page mapped, a slice per
// turn of the event loop), and segments of discarded guests are reused: a ready replica still
// reads zero everywhere, counts no page as written, and restores a checkpoint to the source's
// digest, whether its segments are fresh or come from the pool.
import t from 'tap';
import { PAGE_BYTES } from '../shared/driver/types.js';
import { SimDriver, type SimReplica, type SimSourceGuest } from '../shared/driver/sim/index.js';

const MiB = 2 ** 20;
const GUEST_BYTES = 130 * MiB; // two full segments and a short one

function bootGuest(driver: SimDriver, id: string): SimSourceGuest {
  return driver.createGuest({ id, profile: 'web', memoryBytes: GUEST_BYTES, contentSeed: 3, environmentSeed: 11, start: false });
}

/** Checks that every page of `replica` reads zero and none counts as written. */
function readsZero(replica: SimReplica): { nonZero: number; written: number } {
  const memory = replica.machine.memory;
  const out = new Uint8Array(256 * PAGE_BYTES);
  let nonZero = 0;
  let written = 0;
  for (let first = 0; first < memory.pageCount; first += 256) {
    const count = Math.min(256, memory.pageCount - first);
    replica.pages.readPages(first, count, out);
    for (let i = 0; i < count * PAGE_BYTES; i += 4) if (out[i] | out[i + 1] | out[i + 2] | out[i + 3]) nonZero++;
    for (let p = first; p < first + count; p++) if (memory.pageBytesOrNull(p) !== null) written++;
  }
  return { nonZero, written };
}

async function restore(guest: SimSourceGuest, replica: SimReplica): Promise<string> {
  guest.startRecording();
  const digest = guest.digest();
  for await (const chunk of guest.liveCheckpoint()) replica.restoreChunk(chunk);
  return digest;
}

t.test('a ready replica reads zero, counts nothing written, and restores to the digest', async (t) => {
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  const guest = bootGuest(source, 'g1');
  const replica = target.reserve(guest.describe());
  t.ok(replica.machine.memory.unpreparedPages > 0, 'made ready after reserve returns, not inside it');
  await replica.memoryReady;
  t.equal(replica.machine.memory.unpreparedPages, 0);
  t.equal(replica.machine.memory.allocatedBytes, GUEST_BYTES, 'every segment allocated');
  t.same(readsZero(replica), { nonZero: 0, written: 0 }, 'all zero, none written');
  const lazy = new SimDriver({ replicaMemory: 'lazy' }).reserve(guest.describe());
  t.equal(lazy.machine.memory.allocatedBytes, 0, 'a lazy replica allocates nothing');
  t.equal(replica.digest(), lazy.digest(), 'the same digest as an untouched replica');
  lazy.discard();
  t.equal(await restore(guest, replica), replica.digest(), 'restored to the source digest');
});

t.test("reused segments: a replica made of a discarded one's memory reads zero and restores", async (t) => {
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' }, segmentPoolBytesMax: 256 * MiB });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  const first = target.reserve(bootGuest(source, 'g1').describe());
  await first.memoryReady;
  const digest = await restore(source.guest('g1'), first);
  t.equal(first.digest(), digest);
  first.discard();
  t.equal(target.pooledBytes, 128 * MiB, 'its two full segments kept (the short one is not)');

  const guest = bootGuest(source, 'g2');
  const second = target.reserve(guest.describe());
  await second.memoryReady;
  t.equal(target.pooledBytes, 0, 'both taken by the next replica');
  t.same(readsZero(second), { nonZero: 0, written: 0 }, 'the old contents are gone');
  t.equal(await restore(guest, second), second.digest(), 'restored to the source digest');
});

t.test('the pool holds no more than its bound', async (t) => {
  const target = new SimDriver({ guest: { pacing: 'manual' }, segmentPoolBytesMax: 64 * MiB });
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  const replica = target.reserve(bootGuest(source, 'g1').describe());
  await replica.memoryReady;
  replica.discard();
  t.equal(target.pooledBytes, 64 * MiB);
  target.shutdown();
  t.equal(target.pooledBytes, 0, 'let go at shutdown');
});

t.test('a replica discarded while its memory is made ready stops there', async (t) => {
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' }, segmentPoolBytesMax: 0 });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  const replica = target.reserve(bootGuest(source, 'g1').describe());
  replica.discard();
  await replica.memoryReady;
  t.equal(replica.machine.memory.allocatedBytes, 0, 'nothing allocated after the discard');
  t.equal(target.capacity().memoryBytesReserved, 0, 'its room is free again');
});
