// The `sim` guest with its vCPU on a thread of its own (vCPU mode `thread`): the guest runs in real
// time while this thread streams its live checkpoint and its deltas, and the replica that restores
// them and replays the log ends with the source's digest; suspend stops the vCPU at once and seals
// the final unit; a post-copy guest fetches its pages through this thread; a discarded guest's
// thread ends before its memory is reused. The checkpoint is pulled slowly through a small
// copy-on-write pool, so that the guest preserves pages (some past the pool, in the overflow) while
// this thread reads the same pages.
import t, { type Test } from 'tap';
import type { CheckpointChunk, SealedUnit } from '../shared/driver/types.js';
import { SimDriver, type SimReplica, type SimSourceGuest } from '../shared/driver/sim/index.js';
import { encodePages } from '../shared/driver/sim/page-codec.js';

const MiB = 2 ** 20;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `done()` holds, at most 10 s (a thread starts in a fifth of a second, more under load). */
async function until(done: () => boolean): Promise<boolean> {
  for (let i = 0; i < 1000 && !done(); i++) await sleep(10);
  return done();
}

function drivers(t: Test, cowBytesMax = 64 * MiB) {
  const failures: unknown[] = [];
  const options = { guest: { vcpu: 'thread' as const, cowBytesMax, onRunnerFailure: (_id: string, error: unknown) => failures.push(error) } };
  const source = new SimDriver(options);
  const target = new SimDriver(options);
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  return { source, target, failures };
}

/** Takes sealed units as they come, until the final one. */
function collectUnits(guest: SimSourceGuest): Promise<SealedUnit[]> {
  return (async () => {
    const units: SealedUnit[] = [];
    for (let u = await guest.nextSealedUnit(); u !== null; u = await guest.nextSealedUnit()) units.push(u);
    return units;
  })();
}

/** Restores `chunks` into `apply`, a pause every few chunks so that the guest writes meanwhile. */
async function slowly(chunks: AsyncIterable<CheckpointChunk>, apply: (c: CheckpointChunk) => void): Promise<number> {
  let n = 0;
  for await (const c of chunks) {
    apply({ ...c, bytes: c.bytes.slice() });
    if (++n % 8 === 0) await sleep(5);
  }
  return n;
}

t.test('a guest on its own thread: live checkpoint, a delta and the log give the replica its digest', async (t) => {
  const environmentSeed = 4242;
  t.comment(`environmentSeed ${environmentSeed}`);
  // 1 MiB pool: one mmuncher unit writes more pages than that, so the overflow is used too.
  const { source, target, failures } = drivers(t, 1 * MiB);
  const guest = source.createGuest({ id: 'munch', profile: 'mmuncher', memoryBytes: 64 * MiB, environmentSeed, contentSeed: 5 });
  t.ok(guest.threaded, 'the vCPU runs on its own thread');
  t.ok(await until(() => guest.runnerStats().unitsRun >= 10), 'the guest runs before the migration');
  const start = guest.startRecording();
  const replica = target.reserve(guest.describe()) as SimReplica;
  await replica.memoryReady;
  const units = collectUnits(guest);
  const chunks = await slowly(guest.liveCheckpoint({ chunkPages: 64 }), (c) => replica.restoreChunk(c));
  t.ok(replica.restored, `restored from ${chunks} chunks while the guest ran`);
  t.ok(guest.runnerStats().stallMs > 0, `the guest stalled ${guest.runnerStats().stallMs.toFixed(1)} ms on the 1 MiB pool`);
  await sleep(100);
  // A delta as of a unit boundary while the vCPU runs on: rebase parks it for the instant.
  const delta = guest.rebase();
  t.ok(delta.firstSequence > start.firstSequence, `delta 1 as of unit ${delta.firstSequence}`);
  replica.beginDelta(delta.generation, delta.firstSequence);
  await slowly(guest.deltaCheckpoint({ chunkPages: 64 }), (c) => replica.restoreDeltaChunk(c));
  await sleep(150);
  const suspendStart = performance.now();
  await guest.suspend();
  const suspendMs = performance.now() - suspendStart;
  t.ok(suspendMs < 1000, `suspend took ${suspendMs.toFixed(1)} ms: at most the unit in progress`);
  const sourceDigest = guest.digest();
  const log = await units;
  t.ok(log.at(-1)?.final, 'the log ends with the final unit sealed at the suspend');
  let replayed = 0;
  for (const u of log) {
    if (u.sequence < delta.firstSequence) continue;
    replica.applyUnit(u.bytes);
    replayed++;
  }
  t.ok(replayed > 1, `${replayed} units replayed after the delta`);
  t.ok(replica.complete);
  t.equal(replica.digest(), sourceDigest, 'the replica has the digest of the suspended source');
  t.same(failures, [], 'the vCPU thread did not fail');
});

t.test('suspend and resume: the vCPU stops between units and goes on from the final unit', async (t) => {
  const { source, failures } = drivers(t);
  const guest = source.createGuest({ id: 'web', profile: 'web', memoryBytes: 64 * MiB, environmentSeed: 9 });
  t.ok(await until(() => guest.runnerStats().unitsRun >= 10), 'it runs');
  guest.startRecording();
  const units = collectUnits(guest);
  await sleep(100);
  await guest.suspend();
  const sealed = await units;
  const at = guest.machine.state.unitSequence;
  t.equal(sealed.at(-1)?.sequence, at - 1, 'the final unit is the last one the machine ran');
  const run = guest.runnerStats().unitsRun;
  await sleep(100);
  t.equal(guest.runnerStats().unitsRun, run, 'a suspended guest runs nothing');
  guest.resume();
  t.ok(await until(() => guest.runnerStats().unitsRun > run + 5), 'resumed, it runs again');
  await guest.suspend();
  t.ok(guest.machine.state.unitSequence > at, 'from where the final unit left it');
  t.same(failures, []);
});

t.test('post-copy: the guest on its own thread fetches its missing pages through the agent', async (t) => {
  const { source, target, failures } = drivers(t);
  const origin = source.createGuest({ id: 'pc', profile: 'web', memoryBytes: 64 * MiB, environmentSeed: 3 });
  await until(() => origin.runnerStats().unitsRun >= 10);
  await origin.suspend();
  const replica = target.reserve(origin.describe()) as SimReplica;
  await replica.memoryReady;
  let requests = 0;
  let receive: ((bytes: Uint8Array) => number) | null = null;
  const { guest, postcopy } = replica.activatePostcopy(origin.machineState(), async (pages) => {
    requests++;
    await sleep(1);
    receive!(encodePages(origin.machine.memory, pages));
  });
  receive = (bytes) => postcopy.receivePages(bytes);
  await until(() => (guest as SimSourceGuest).runnerStats().unitsRun >= 5);
  const stats = (guest as SimSourceGuest).runnerStats();
  t.ok(requests > 0 && stats.pagesFetched > 0, `${requests} fetches, ${stats.pagesFetched} pages`);
  t.ok(stats.unitsRun > 0, `${stats.unitsRun} units ran on fetched pages`);
  t.ok(postcopy.missingPages > 0, 'pages not touched yet are still missing');
  t.same(failures, []);
});

t.test("a guest on its own thread: its replies go through the agent's output device, and a replica reproduces them", async (t) => {
  const { source, target, failures } = drivers(t);
  const guest = source.createGuest({ id: 'out', profile: 'web', memoryBytes: 64 * MiB, environmentSeed: 21 });
  t.ok(await until(() => guest.output.produced > 0), `the guest replied to ${guest.output.produced} packets`);
  guest.output.hold();
  const start = guest.startRecording();
  const replica = target.reserve(guest.describe()) as SimReplica;
  await replica.memoryReady;
  const units = collectUnits(guest);
  for await (const c of guest.liveCheckpoint()) replica.restoreChunk({ ...c, bytes: c.bytes.slice() });
  t.ok(await until(() => guest.output.heldCount > 0), `held while the gate is closed: ${guest.output.heldCount}`);
  await guest.suspend();
  for (const u of await units) replica.applyUnit(u.bytes);
  guest.output.openGate();
  const replies = (o: typeof guest.output) =>
    o
      .releasedAfter(-1, 100_000)
      .packets.filter((p) => p.unit >= start.firstSequence)
      .map((p) => `${p.sequence}:${p.unit}:${p.payload}`);
  const mine = replies(guest.output);
  t.ok(mine.length > 0, `${mine.length} replies since the recording began`);
  t.same(replies(replica.machine.output), mine, 'the replica replied the same, unit for unit');
  t.same(failures, []);
});

t.test("a discarded guest's thread ends, and only then do its segments go to the pool", async (t) => {
  const driver = new SimDriver({ guest: { vcpu: 'thread' } });
  t.teardown(() => driver.shutdown());
  const guest = driver.createGuest({ id: 'gone', profile: 'compile', memoryBytes: 64 * MiB, environmentSeed: 1 });
  await until(() => guest.runnerStats().unitsRun > 0);
  guest.discard();
  t.equal(driver.pooledBytes, 0, 'not while the thread may still write them');
  for (let i = 0; i < 200 && driver.pooledBytes === 0; i++) await sleep(10);
  t.equal(driver.pooledBytes, 64 * MiB, 'once it ended');
});
