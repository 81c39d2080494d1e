// Record on a source `sim` guest, take its live checkpoint while it keeps running, restore the
// checkpoint on a second host, replay every sealed unit, and check that the replica passes
// through exactly the source's states: the digest at every unit boundary must match.
import t from 'tap';
import { PAGE_BYTES } from '../shared/driver/types.js';
import type { CheckpointChunk, SealedUnit } from '../shared/driver/types.js';
import { PROFILE_NAMES, SimDriver, type SimReplica, type ProfileName } from '../shared/driver/sim/index.js';

const MiB = 2 ** 20;
const GUEST_BYTES = 64 * MiB;
const UNITS_BEFORE = 4;
const UNITS_AFTER = 30;
/** A guest step between every this many checkpoint chunk pulls. */
const STEP_EVERY_CHUNKS = 8;

function puller<T>(iterable: AsyncIterable<T>): () => Promise<T | null> {
  const it = iterable[Symbol.asyncIterator]();
  return async () => {
    const r = await it.next();
    return r.done === true ? null : r.value;
  };
}

for (const [i, profile] of PROFILE_NAMES.entries()) {
  t.test(`${profile}: live checkpoint + replay matches the source at every unit boundary`, async (t) => {
    const environmentSeed = 0x5eed0000 + i;
    const contentSeed = 100 + i;
    t.comment(`profile ${profile}, environmentSeed ${environmentSeed}, contentSeed ${contentSeed}`);
    const source = new SimDriver({ guest: { pacing: 'manual' } });
    const target = new SimDriver({ guest: { pacing: 'manual' } });
    t.teardown(() => {
      source.shutdown();
      target.shutdown();
    });
    const guest = source.createGuest({ id: `g-${profile}`, profile: profile as ProfileName, memoryBytes: GUEST_BYTES, environmentSeed, contentSeed });
    await guest.step(UNITS_BEFORE);
    const before = guest.digest();

    const start = guest.startRecording();
    t.equal(start.firstSequence, UNITS_BEFORE, 'the recording starts at the next unit boundary');
    // Digests of the source at every unit boundary: [0] is the checkpoint instant.
    const digests = [guest.digest()];
    t.equal(digests[0], before, 'starting a recording does not change the guest');

    const replica = target.reserve(guest.describe()) as SimReplica;
    t.equal(replica.describe().state, 'restoring');
    t.equal(target.capacity().memoryBytesReserved, GUEST_BYTES, 'the reservation takes room on the target');

    // Pull the checkpoint slowly, running the guest between pulls.
    const next = puller(guest.liveCheckpoint());
    const chunks: CheckpointChunk[] = [];
    let covered = 0;
    for (let c = await next(); c !== null; c = await next()) {
      chunks.push(c);
      if (replica.restored) t.fail(`restored before chunk ${c.index}`);
      replica.restoreChunk(c);
      covered += c.memoryBytesCovered;
      if (chunks.length % STEP_EVERY_CHUNKS === 0) {
        await guest.step(1);
        digests.push(guest.digest());
      }
    }
    t.same(
      chunks.map((c) => c.index),
      chunks.map((_, k) => k),
      'chunk indexes are 0, 1, 2, ...',
    );
    t.same(
      chunks.map((c) => c.final),
      chunks.map((_, k) => k === chunks.length - 1),
      'only the last chunk is final',
    );
    t.equal(covered, GUEST_BYTES, 'the chunks cover all of guest memory');
    t.ok(replica.restored, 'restored after the final chunk');
    t.equal(replica.describe().state, 'replica');
    t.equal(replica.nextSequence, start.firstSequence, 'the replica expects the first recorded unit');
    t.equal(replica.digest(), digests[0], 'the restored replica is at the checkpoint instant');
    t.ok(digests.length > 1, 'the guest ran while the checkpoint was streamed');

    for (let k = 0; k < UNITS_AFTER; k++) {
      await guest.step(1);
      digests.push(guest.digest());
    }
    await guest.suspend();
    t.equal(guest.state, 'suspended');
    const finalDigest = guest.digest();
    const stats = guest.recordingStats();
    t.equal(stats.unitsRecorded, digests.length, 'one unit per step, plus the final unit');
    t.equal(stats.unitsQueued, digests.length);

    // Replay every sealed unit, comparing at every boundary.
    const units: SealedUnit[] = [];
    const mismatches: string[] = [];
    let logBytes = 0;
    for (let u = await guest.nextSealedUnit(); u !== null; u = await guest.nextSealedUnit()) {
      const expectedSequence = start.firstSequence + units.length;
      units.push(u);
      logBytes += u.bytes.length;
      if (u.sequence !== expectedSequence || replica.nextSequence !== u.sequence) {
        t.fail(`unit ${u.sequence}: expected sequence ${expectedSequence}, replica expects ${replica.nextSequence}`);
      }
      const applied = replica.applyUnit(u.bytes);
      if (applied.sequence !== u.sequence || applied.guestNs !== u.guestNs || applied.final !== u.final) {
        t.fail(`applyUnit returned ${JSON.stringify(applied)} for unit ${u.sequence}`);
      }
      if (!u.final) {
        const boundary = units.length;
        if (replica.digest() !== digests[boundary]) mismatches.push(`after unit ${u.sequence}: replica ${replica.digest()}, source ${digests[boundary]}`);
      }
    }
    t.same(mismatches, [], 'replica digest equals the source digest at every unit boundary');
    t.equal(units.length, digests.length, `${digests.length - 1} units stepped + the final unit`);
    t.same(
      units.map((u) => u.sequence),
      units.map((_, k) => start.firstSequence + k),
      'units are numbered consecutively from the recording start',
    );
    t.equal(logBytes, stats.logBytes, 'the log bytes counted are the bytes taken');
    const last = units[units.length - 1];
    t.equal(last.final, true, 'the last unit is final');
    t.equal(last.eventCount, 0, 'the final unit carries no events');
    t.equal(last.guestNs, 0, 'the final unit covers no guest time');
    t.same(
      units.slice(0, -1).filter((u) => u.final),
      [],
      'no unit but the last is final',
    );
    t.equal(units.slice(0, -1).every((u) => u.guestNs === guest.describe().unitMs * 1e6), true, 'every other unit covers one unit of guest time');
    t.ok(replica.complete, 'the replica has replayed the final unit');
    t.equal(replica.nextSequence, start.firstSequence + units.length);
    t.equal(replica.digest(), finalDigest, 'final digests equal');
    t.equal(await guest.nextSealedUnit(), null, 'nothing after the final unit');
    t.equal(guest.recordingStats().unitsQueued, 0);

    // Content check on top of the digest: a few pages compare byte for byte.
    const a = new Uint8Array(8 * PAGE_BYTES);
    const b = new Uint8Array(8 * PAGE_BYTES);
    for (const first of [0, 16, 1000, guest.pages.pageCount - 8]) {
      guest.pages.readPages(first, 8, a);
      replica.pages.readPages(first, 8, b);
      t.ok(Buffer.from(a).equals(Buffer.from(b)), `pages ${first}..${first + 7} equal`);
    }
  });
}
