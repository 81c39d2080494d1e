// The lifecycle of `sim` guests and replicas on their hosts: suspend/resume, discard, the
// reservation checks, createGuest's argument checks, dirty-page tracking, throttling and
// activation of a replica.
import t, { type Test } from 'tap';
import { PAGE_BYTES } from '../shared/driver/types.js';
import { SimDriver, type SimReplica, type SimSourceGuest, ZERO_CONTENT_MIX } from '../shared/driver/sim/index.js';
import { peekUnitHeader } from '../shared/driver/sim/unit-codec.js';
import { AlreadyExistsError, CorruptDataError, InvalidArgumentError, InvalidStateError, NotFoundError, ReservationRefusedError, VmMigrateError } from '../shared/errors.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const GUEST_BYTES = 64 * MiB;

function thrown(fn: () => unknown): Error | undefined {
  try {
    fn();
  } catch (error) {
    return error as Error;
  }
  return undefined;
}

async function rejection(p: Promise<unknown>): Promise<Error | undefined> {
  try {
    await p;
  } catch (error) {
    return error as Error;
  }
  return undefined;
}

function expectError(t: Test, error: Error | undefined, type: new (...args: never[]) => Error, message: RegExp, what: string): void {
  t.ok(error instanceof type, `${what}: ${type.name} (got ${error?.name}: ${error?.message})`);
  t.match(error?.message ?? '', message, `${what}: message`);
}

function drivers(t: Test, options: ConstructorParameters<typeof SimDriver>[0] = {}): [SimDriver, SimDriver] {
  const source = new SimDriver({ ...options, guest: { pacing: 'manual', ...options.guest } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  return [source, target];
}

/** Streams the whole checkpoint of a guest that is recording into a new replica on `target`. */
async function restore(guest: SimSourceGuest, target: SimDriver): Promise<SimReplica> {
  const replica = target.reserve(guest.describe()) as SimReplica;
  for await (const c of guest.liveCheckpoint()) replica.restoreChunk(c);
  return replica;
}

async function replayAll(guest: SimSourceGuest, replica: SimReplica): Promise<number> {
  let n = 0;
  for (let u = await guest.nextSealedUnit(); u !== null; u = await guest.nextSealedUnit()) {
    replica.applyUnit(u.bytes);
    n++;
  }
  return n;
}

t.test('suspend, then resume: the guest runs on and its recording is stopped', async (t) => {
  const environmentSeed = 5150;
  t.comment(`environmentSeed ${environmentSeed}`);
  // A small copy-on-write pool: if the aborted recording kept its checkpoint, the guest would stall.
  const [source, target] = drivers(t, { guest: { cowBytesMax: 1 * MiB } });
  const guest = source.createGuest({ id: 'sr', profile: 'web', memoryBytes: GUEST_BYTES, environmentSeed });
  await guest.step(2);
  const start = guest.startRecording();
  t.equal(start.firstSequence, 2);
  expectError(t, thrown(() => guest.startRecording()), InvalidStateError, /already recording \(since unit 2\)/, 'second startRecording');
  await guest.step(1);
  t.equal(guest.recordingStats().unitsRecorded, 1);

  await guest.suspend();
  t.equal(guest.state, 'suspended');
  t.equal(guest.describe().state, 'suspended');
  t.equal(guest.recordingStats().unitsRecorded, 2, 'suspend sealed the final unit');
  const atSuspend = guest.digest();
  expectError(t, await rejection(guest.step(1)), InvalidStateError, /is suspended, not running/, 'step while suspended');
  await guest.suspend(); // again: nothing happens
  t.equal(guest.digest(), atSuspend, 'a suspended guest does not change');
  t.equal(guest.recordingStats().unitsRecorded, 2, 'a second suspend seals nothing');

  guest.resume();
  t.equal(guest.state, 'running');
  expectError(t, thrown(() => guest.resume()), InvalidStateError, /is running, not suspended/, 'resume while running');
  t.same(
    { ...guest.recordingStats(), stallMs: 0 },
    { unitsRecorded: 0, logBytes: 0, unitsQueued: 0, bytesQueued: 0, stallMs: 0 },
    'the recording and its queued units are gone',
  );
  t.equal(await guest.nextSealedUnit(), null, 'no units after resume');
  t.equal(guest.machine.memory.cow, null, 'the checkpoint of the stopped recording was released');
  expectError(t, thrown(() => guest.liveCheckpoint()), InvalidStateError, /start one first/, 'liveCheckpoint without a recording');

  const runBefore = guest.runnerStats().unitsRun;
  await guest.step(10); // would stall on the 1 MiB pool if it were still held
  t.equal(guest.runnerStats().unitsRun, runBefore + 10, 'the guest runs on');
  t.not(guest.digest(), atSuspend);

  // A new recording from here replays like any other.
  const again = guest.startRecording();
  t.equal(again.firstSequence, start.firstSequence + 1 + 1 + 10, 'the new recording starts at the current unit');
  const replica = await restore(guest, target);
  expectError(t, thrown(() => guest.liveCheckpoint()), InvalidStateError, /already taken/, 'second liveCheckpoint');
  await guest.step(3);
  await guest.suspend();
  t.equal(await replayAll(guest, replica), 4);
  t.equal(replica.digest(), guest.digest(), 'replica of the second recording equals the source');
});

t.test('discard frees the guest; every operation then fails', async (t) => {
  const [source, target] = drivers(t);
  const guest = source.createGuest({ id: 'gone', profile: 'idle', memoryBytes: GUEST_BYTES, environmentSeed: 1, contentMix: ZERO_CONTENT_MIX });
  await guest.step(1);
  guest.startRecording();
  t.equal(source.capacity().memoryBytesReserved, GUEST_BYTES);
  const waiting = guest.nextSealedUnit();

  guest.discard();
  t.equal(await waiting, null, 'a consumer waiting for a unit gets null');
  t.equal(guest.describe().state, 'discarded', 'describe still works');
  t.equal(source.capacity().memoryBytesReserved, 0, 'its memory is freed');
  t.equal(source.capacity().vcpusReserved, 0);
  t.same(source.listGuests(), []);
  expectError(t, thrown(() => source.guest('gone')), NotFoundError, /no guest 'gone' on this host/, 'driver.guest');
  t.equal(guest.machine.memory.allocatedBytes, 0, 'its segments are dropped');

  expectError(t, thrown(() => guest.digest()), InvalidStateError, /gone was discarded/, 'digest');
  expectError(t, thrown(() => guest.startRecording()), InvalidStateError, /discarded/, 'startRecording');
  expectError(t, thrown(() => guest.liveCheckpoint()), InvalidStateError, /.+/, 'liveCheckpoint');
  expectError(t, thrown(() => guest.resume()), InvalidStateError, /discarded/, 'resume');
  expectError(t, thrown(() => guest.pages.readPages(0, 1, new Uint8Array(PAGE_BYTES))), InvalidStateError, /discarded/, 'readPages');
  expectError(t, await rejection(guest.step(1)), InvalidStateError, /discarded/, 'step');
  expectError(t, await rejection(guest.suspend()), InvalidStateError, /discarded/, 'suspend');
  t.equal(await guest.nextSealedUnit(), null, 'nextSealedUnit: null');
  guest.discard(); // again: nothing happens
  t.equal(source.capacity().memoryBytesReserved, 0);

  // The id is free again.
  const reborn = source.createGuest({ id: 'gone', profile: 'idle', memoryBytes: GUEST_BYTES, environmentSeed: 1, contentMix: ZERO_CONTENT_MIX });
  t.equal(reborn.state, 'running');

  // A replica, discarded part-way through its restore.
  reborn.startRecording();
  const replica = target.reserve(reborn.describe()) as SimReplica;
  const it = reborn.liveCheckpoint()[Symbol.asyncIterator]();
  const first = await it.next();
  replica.restoreChunk(first.value);
  const second = await it.next();
  t.equal(target.capacity().memoryBytesReserved, GUEST_BYTES);
  replica.discard();
  t.equal(target.capacity().memoryBytesReserved, 0, 'a discarded reservation frees its room');
  t.equal(replica.describe().state, 'discarded');
  expectError(t, thrown(() => replica.restoreChunk(second.value)), InvalidStateError, /discarded/, 'restoreChunk after discard');
  expectError(t, thrown(() => replica.digest()), InvalidStateError, /discarded/, 'replica digest after discard');
  expectError(t, thrown(() => replica.applyUnit(new Uint8Array(48))), InvalidStateError, /discarded/, 'applyUnit after discard');
  expectError(t, thrown(() => replica.activate()), InvalidStateError, /discarded/, 'activate after discard');
  expectError(t, thrown(() => replica.pages.writePages(0, 1, new Uint8Array(PAGE_BYTES))), InvalidStateError, /discarded/, 'writePages after discard');
  await it.return?.();
  t.ok(target.reserve(reborn.describe()), 'the id can be reserved again');
});

t.test('reserve refuses what the target cannot host, saying why', async (t) => {
  const [source] = drivers(t);
  const guest = source.createGuest({ id: 'g1', profile: 'idle', memoryBytes: GUEST_BYTES, environmentSeed: 2, contentMix: ZERO_CONTENT_MIX });
  const desc = guest.describe();

  // Not enough memory.
  const small = new SimDriver({ memoryBytesTotal: 96 * MiB, guest: { pacing: 'manual' } });
  t.teardown(() => small.shutdown());
  small.createGuest({ id: 'resident', profile: 'idle', memoryBytes: GUEST_BYTES, environmentSeed: 3, contentMix: ZERO_CONTENT_MIX });
  const before = small.capacity();
  t.equal(before.memoryBytesFree, 32 * MiB);
  const noRoom = thrown(() => small.reserve(desc));
  expectError(t, noRoom, ReservationRefusedError, /not enough memory for guest 'g1': it needs 64 MiB, this host has 32 MiB free of 96 MiB/, 'not enough memory');
  t.equal((noRoom as VmMigrateError).code, 'RESOURCE_EXHAUSTED');
  t.same(small.capacity(), before, 'a refused reservation takes nothing');
  expectError(t, thrown(() => new SimDriver({ memoryBytesTotal: 32 * MiB }).reserve(desc)), ReservationRefusedError, /needs 64 MiB, this host has 32 MiB free of 32 MiB/, 'host smaller than the guest');

  // The id is already on the target, as a guest or as a reservation.
  const busy = new SimDriver({ guest: { pacing: 'manual' } });
  t.teardown(() => busy.shutdown());
  busy.createGuest({ id: 'g1', profile: 'idle', memoryBytes: GUEST_BYTES, environmentSeed: 4, contentMix: ZERO_CONTENT_MIX });
  // (Since 53acfdb the driver refuses an id already present with AlreadyExistsError.)
  const dupGuest = thrown(() => busy.reserve(desc));
  expectError(t, dupGuest, AlreadyExistsError, /guest 'g1' already runs on this host/, 'id of a running guest');
  t.equal((dupGuest as VmMigrateError).code, 'ALREADY_EXISTS');
  const other = new SimDriver({ guest: { pacing: 'manual' } });
  t.teardown(() => other.shutdown());
  other.reserve(desc);
  const dupReservation = thrown(() => other.reserve(desc));
  expectError(t, dupReservation, AlreadyExistsError, /guest 'g1' already has a reservation on this host/, 'id of a reservation');
  const busyBefore = busy.capacity();
  expectError(t, thrown(() => busy.createGuest({ id: 'g1', profile: 'idle', memoryBytes: GUEST_BYTES, environmentSeed: 4, contentMix: ZERO_CONTENT_MIX })), AlreadyExistsError, /already runs/, 'createGuest with an id in use');
  t.same(busy.capacity(), busyBefore, 'refusals take nothing');
  t.equal(other.capacity().memoryBytesReserved, GUEST_BYTES, 'the first reservation stands, alone');

  // Another driver's guest.
  expectError(t, thrown(() => new SimDriver().reserve({ ...desc, driver: 'xen' })), ReservationRefusedError, /guest 'g1' runs on driver 'xen'; this host runs 'sim'/, 'driver differs');

  // No vCPU left.
  const oneCpu = new SimDriver({ vcpusTotal: 1, guest: { pacing: 'manual' } });
  t.teardown(() => oneCpu.shutdown());
  oneCpu.createGuest({ id: 'solo', profile: 'idle', memoryBytes: GUEST_BYTES, environmentSeed: 5, contentMix: ZERO_CONTENT_MIX });
  expectError(t, thrown(() => oneCpu.reserve(desc)), ReservationRefusedError, /no vCPU free for guest 'g1': 1 of 1 in use/, 'no vCPU');

  // A description that does not hold together.
  expectError(t, thrown(() => new SimDriver().reserve({ ...desc, memoryBytes: 128 * MiB })), InvalidArgumentError, /description says 134217728 bytes, its machine configuration 67108864/, 'size mismatch');
  expectError(t, thrown(() => new SimDriver().reserve({ ...desc, machineConfig: new Uint8Array([1, 2, 3]) })), CorruptDataError, /not valid JSON/, 'garbled machine configuration');
});

t.test('createGuest refuses out-of-range sizes and unit lengths', async (t) => {
  const driver = new SimDriver({ memoryBytesTotal: 128 * GiB, guest: { pacing: 'manual' } });
  t.teardown(() => driver.shutdown());
  const spec = { profile: 'idle' as const, memoryBytes: GUEST_BYTES, environmentSeed: 6, contentMix: ZERO_CONTENT_MIX };
  for (const memoryBytes of [0, 32 * MiB, 64 * MiB - 2 * MiB, 65 * MiB, 64 * MiB + PAGE_BYTES, 64 * GiB + 2 * MiB, Number.NaN, -64 * MiB, 2 ** 60]) {
    expectError(
      t,
      thrown(() => driver.createGuest({ ...spec, memoryBytes })),
      InvalidArgumentError,
      new RegExp(`guest memory of ${memoryBytes} bytes: expected a multiple of 2 MiB from 64 MiB to 64 GiB`),
      `memoryBytes ${memoryBytes}`,
    );
  }
  for (const unitMs of [0, -1, 101, 2.5, Number.NaN]) {
    expectError(t, thrown(() => driver.createGuest({ ...spec, unitMs })), InvalidArgumentError, new RegExp(`unit length ${unitMs} ms: expected an integer from 1 to 100 ms`), `unitMs ${unitMs}`);
  }
  for (const id of ['', 'has space', '-lead', 'x'.repeat(65), 'a/b']) {
    expectError(t, thrown(() => driver.createGuest({ ...spec, id })), InvalidArgumentError, /expected 1-64 letters/, `id '${id}'`);
  }
  expectError(t, thrown(() => driver.createGuest({ ...spec, rates: { busyFraction: 0 } })), InvalidArgumentError, /busyFraction=0 is out of range/, 'rate out of range');
  expectError(t, thrown(() => driver.createGuest({ ...spec, profile: 'nope' as never })), InvalidArgumentError, /profile 'nope': expected one of idle, web/, 'unknown profile');
  expectError(t, thrown(() => driver.createGuest({ ...spec, contentMix: { zeroFraction: 0.5, textFraction: 0.2, randomFraction: 0.2 } })), InvalidArgumentError, /add up to/, 'content mix');
  t.same(driver.listGuests(), [], 'no guest was created by the refusals');
  t.equal(driver.capacity().memoryBytesReserved, 0, 'and no room taken');

  // The bounds themselves are accepted.
  t.equal(driver.createGuest({ ...spec, id: 'u1', unitMs: 1 }).describe().unitMs, 1);
  t.equal(driver.createGuest({ ...spec, id: 'u100', unitMs: 100 }).describe().unitMs, 100);
  t.equal(driver.createGuest({ ...spec, id: 'm66', memoryBytes: 66 * MiB }).describe().memoryBytes, 66 * MiB);
  const big = driver.createGuest({ ...spec, id: 'max', memoryBytes: 64 * GiB });
  t.equal(big.pages.pageCount, (64 * GiB) / PAGE_BYTES, 'a 64 GiB guest (sparse) is accepted');
  big.discard();
  // A host without room refuses a valid guest.
  const full = new SimDriver({ memoryBytesTotal: 64 * MiB });
  expectError(t, thrown(() => full.createGuest({ ...spec, memoryBytes: 128 * MiB })), ReservationRefusedError, /needs 128 MiB, this host has 64 MiB free of 64 MiB/, 'host full');
});

t.test('dirty tracking: fetch-and-clear returns the written pages, ascending, once', async (t) => {
  const environmentSeed = 8080;
  t.comment(`environmentSeed ${environmentSeed}`);
  const [source, target] = drivers(t);
  const guest = source.createGuest({ id: 'dirty', profile: 'web', memoryBytes: GUEST_BYTES, environmentSeed, contentSeed: 2 });
  const pageCount = guest.pages.pageCount;
  await guest.step(1);
  guest.pages.startDirtyTracking();
  const before = new Uint8Array(GUEST_BYTES);
  guest.pages.readPages(0, pageCount, before);
  await guest.step(3);
  const after = new Uint8Array(GUEST_BYTES);
  guest.pages.readPages(0, pageCount, after);

  const dirty = guest.pages.fetchAndClearDirty();
  t.ok(dirty instanceof Uint32Array);
  t.ok(dirty.length > 10, `${dirty.length} pages dirtied by 3 units`);
  let ascending = true;
  for (let i = 1; i < dirty.length; i++) if (!(dirty[i] > dirty[i - 1])) ascending = false;
  t.ok(ascending, 'strictly ascending');
  t.ok(dirty[dirty.length - 1] < pageCount, 'all within guest memory');
  const dirtySet = new Set(dirty);
  const changedButClean: number[] = [];
  let changed = 0;
  for (let p = 0; p < pageCount; p++) {
    const a = Buffer.from(before.buffer, p * PAGE_BYTES, PAGE_BYTES);
    const b = Buffer.from(after.buffer, p * PAGE_BYTES, PAGE_BYTES);
    if (!a.equals(b)) {
      changed++;
      if (!dirtySet.has(p)) changedButClean.push(p);
    }
  }
  t.ok(changed > 0);
  t.same(changedButClean, [], `every one of the ${changed} changed pages is reported dirty`);
  t.equal(guest.pages.fetchAndClearDirty().length, 0, 'a second fetch at once returns nothing');

  await guest.step(1);
  const one = guest.pages.fetchAndClearDirty();
  t.ok(one.length > 0 && one.length < dirty.length, `one more unit: ${one.length} pages`);
  await guest.step(1);
  guest.pages.startDirtyTracking();
  t.equal(guest.pages.fetchAndClearDirty().length, 0, 'startDirtyTracking counts every page clean');

  // A replica replaying the same units dirties exactly the same pages, unit by unit.
  guest.startRecording();
  const replica = await restore(guest, target);
  replica.pages.startDirtyTracking();
  t.equal(replica.pages.fetchAndClearDirty().length, 0, 'restore leaves the replica clean');
  const perUnit: number[][] = [];
  for (let k = 0; k < 5; k++) {
    guest.pages.fetchAndClearDirty();
    await guest.step(1);
    perUnit.push([...guest.pages.fetchAndClearDirty()]);
  }
  await guest.suspend();
  for (let k = 0; k < 5; k++) {
    const u = await guest.nextSealedUnit();
    replica.applyUnit(u!.bytes);
    t.same([...replica.pages.fetchAndClearDirty()], perUnit[k], `unit ${u!.sequence}: replica dirtied the same ${perUnit[k].length} pages`);
  }
});

t.test('throttle scales the busy work of each unit', async (t) => {
  // A fixed instruction rate makes the unit's budget exact: busyFraction x throttle x unitMs x rate.
  const [source] = drivers(t, { guest: { instructionsPerMs: 1000 } });
  const guest = source.createGuest({ id: 'thr', profile: 'web', memoryBytes: GUEST_BYTES, environmentSeed: 9, contentMix: ZERO_CONTENT_MIX });
  guest.startRecording();
  await guest.step(1);
  guest.setThrottle(0.5);
  await guest.step(1);
  for (const bad of [0, -0.5, 1.01, Number.NaN]) {
    expectError(t, thrown(() => guest.setThrottle(bad)), InvalidArgumentError, new RegExp(`throttle factor ${bad} is out of range`), `throttle ${bad}`);
  }
  const full = peekUnitHeader((await guest.nextSealedUnit())!.bytes);
  const half = peekUnitHeader((await guest.nextSealedUnit())!.bytes);
  t.equal(full.instructionCount, Math.round(0.35 * 10 * 1000), 'full speed');
  t.equal(half.instructionCount, Math.round(0.35 * 0.5 * 10 * 1000), 'half speed');
  t.equal(full.pageWriteCount, 40, 'web: 4000 page writes/s, 10 ms');
  t.equal(half.pageWriteCount, 20);
  t.equal(guest.runnerStats().throttle, 0.5);
});

t.test('an activated replica runs on as a guest of the target host', async (t) => {
  const environmentSeed = 123;
  t.comment(`environmentSeed ${environmentSeed}`);
  const [source, target] = drivers(t);
  const guest = source.createGuest({ id: 'mover', profile: 'db', memoryBytes: GUEST_BYTES, environmentSeed });
  await guest.step(2);
  guest.startRecording();
  const replica = await restore(guest, target);
  await guest.step(5);
  await guest.suspend();
  await replayAll(guest, replica);
  t.equal(replica.digest(), guest.digest());
  const finalDigest = guest.digest();
  guest.discard();

  const moved = replica.activate();
  t.equal(moved.describe().state, 'running');
  t.same(
    target.listGuests().map((d) => [d.id, d.state]),
    [['mover', 'running']],
  );
  t.equal(target.capacity().memoryBytesReserved, GUEST_BYTES, 'the reservation became the guest: counted once');
  t.equal(target.guest('mover'), moved);
  t.equal(moved.digest(), finalDigest, 'it starts from the replayed state');
  expectError(t, thrown(() => replica.applyUnit(new Uint8Array(48))), InvalidStateError, /activated/, 'the replica takes no more units');
  await (moved as ReturnType<SimDriver['createGuest']>).step(3);
  t.not(moved.digest(), finalDigest, 'and it runs');
  t.equal(source.capacity().memoryBytesReserved, 0);
});

t.test('a step stalled on the full log queue does not run past suspend', async (t) => {
  const environmentSeed = 4711;
  t.comment(`environmentSeed ${environmentSeed}`);
  const [source, target] = drivers(t, { guest: { logQueueUnitsMax: 2 } });
  const guest = source.createGuest({ id: 'q', profile: 'web', memoryBytes: GUEST_BYTES, environmentSeed, contentMix: ZERO_CONTENT_MIX });
  guest.startRecording();
  const replica = await restore(guest, target);
  await guest.step(2);
  t.equal(guest.recordingStats().unitsQueued, 2, 'the log queue is full');
  let stepped = false;
  let stepError: unknown;
  const pending = guest.step(1).then(
    () => (stepped = true),
    (error: unknown) => (stepError = error),
  );
  await new Promise<void>((resolve) => setImmediate(resolve));
  t.equal(stepped, false, 'the guest stalls rather than queue a third unit');
  const unitsRun = guest.runnerStats().unitsRun;

  await guest.suspend();
  const atSuspend = guest.digest();
  let units = 0;
  for (let u = await guest.nextSealedUnit(); u !== null; u = await guest.nextSealedUnit()) {
    replica.applyUnit(u.bytes);
    units++;
    await new Promise<void>((resolve) => setImmediate(resolve)); // let the stalled step wake
  }
  await pending;
  t.equal(units, 3, 'two units and the final one');
  t.ok(replica.complete);
  t.equal(replica.digest(), atSuspend, 'the replica ends where the source was suspended');
  t.comment(`stalled step: ${stepped ? 'resolved' : 'rejected'} ${stepError instanceof Error ? stepError.message : ''}`);
  t.equal(guest.runnerStats().unitsRun, unitsRun + 1, 'only the final unit ran after the stall began');
  t.equal(guest.digest(), atSuspend, 'a suspended guest does not change');
  t.equal(guest.digest(), replica.digest(), 'source and replica agree at the end of the migration');
});

t.test('recording a guest that is already suspended still ends with a final unit', async (t) => {
  const [source, target] = drivers(t);
  const guest = source.createGuest({ id: 'cold', profile: 'idle', memoryBytes: GUEST_BYTES, environmentSeed: 12, contentMix: ZERO_CONTENT_MIX, start: false });
  t.equal(guest.state, 'suspended', 'created with start: false');
  const start = guest.startRecording();
  t.equal(start.firstSequence, 0);
  const replica = await restore(guest, target);
  t.equal(replica.digest(), guest.digest(), 'the checkpoint of a suspended guest restores');
  await guest.suspend();
  // suspend() is the only way to seal the final unit; without it nextSealedUnit() waits forever.
  t.equal(guest.recordingStats().unitsQueued, 1, 'suspend sealed the final unit');
  if (guest.recordingStats().unitsQueued > 0) {
    const u = await guest.nextSealedUnit();
    t.equal(u?.final, true);
    replica.applyUnit(u!.bytes);
    t.ok(replica.complete);
  }
});
