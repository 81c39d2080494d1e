// A `sim` replica must reject every bad unit or checkpoint chunk without changing anything: the
// digest and the expected sequence stay as they were, and the right unit or chunk still applies
// afterwards and brings the replica to the source's state.
import t, { type Test } from 'tap';
import type { CheckpointChunk, SealedUnit } from '../shared/driver/types.js';
import { SimDriver, type SimReplica } from '../shared/driver/sim/index.js';
import { decodeUnit, encodeUnit, type GuestEvent } from '../shared/driver/sim/unit-codec.js';
import { CorruptDataError, InvalidStateError, ReplayDivergenceError, UnitOrderError } from '../shared/errors.js';

const MiB = 2 ** 20;
const GUEST_BYTES = 64 * MiB;

interface Session {
  /** Checkpoint chunks as the source made them (pulled while the guest ran). */
  chunks: CheckpointChunk[];
  /** Every sealed unit, the final one last. */
  units: SealedUnit[];
  /** Source digests: [0] at the checkpoint instant, [k] after unit k-1 of the recording, last after the final unit. */
  digests: string[];
  target: SimDriver;
  describe: ReturnType<ReturnType<SimDriver['createGuest']>['describe']>;
}

/** Records a short session on a `web` guest (it has every kind of event) and keeps its output. */
async function record(t: Test, environmentSeed: number, unitsAfter = 8): Promise<Session> {
  t.comment(`environmentSeed ${environmentSeed}`);
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  t.teardown(() => {
    source.shutdown();
    target.shutdown();
  });
  const guest = source.createGuest({ id: 'web1', profile: 'web', memoryBytes: GUEST_BYTES, environmentSeed, contentSeed: 11 });
  await guest.step(3);
  guest.startRecording();
  const digests = [guest.digest()];
  const chunks: CheckpointChunk[] = [];
  for await (const c of guest.liveCheckpoint({ chunkPages: 1024 })) {
    chunks.push(c);
    if (!c.final && c.index % 4 === 0) {
      await guest.step(1);
      digests.push(guest.digest());
    }
  }
  for (let i = 0; i < unitsAfter; i++) {
    await guest.step(1);
    digests.push(guest.digest());
  }
  await guest.suspend();
  digests.push(guest.digest());
  const units: SealedUnit[] = [];
  for (let u = await guest.nextSealedUnit(); u !== null; u = await guest.nextSealedUnit()) units.push(u);
  return { chunks, units, digests, target, describe: guest.describe() };
}

/** Runs `fn`, which must throw; returns the error (or undefined when nothing was thrown). */
function thrown(fn: () => unknown): Error | undefined {
  try {
    fn();
  } catch (error) {
    return error as Error;
  }
  return undefined;
}

function flipped(bytes: Uint8Array, at: number): Uint8Array {
  const copy = bytes.slice();
  copy[at] ^= 0x40;
  return copy;
}

/** Re-encodes a unit with some header fields changed (a valid checksum over wrong contents). */
function reencoded(bytes: Uint8Array, change: (u: ReturnType<typeof decodeUnit>) => void): Uint8Array {
  const u = decodeUnit(bytes);
  change(u);
  const events: GuestEvent[] = [...u.asyncEvents, ...u.syncEvents].sort((a, b) => a.position - b.position);
  return encodeUnit(u, events);
}

/**
 * Checks that `attempt` throws an error of class `type` (and `code`) whose message matches
 * `message`, and that the replica's digest and expected sequence did not change.
 */
function rejects(
  t: Test,
  replica: SimReplica,
  what: string,
  attempt: () => unknown,
  type: new (...args: never[]) => Error,
  code: string,
  message: RegExp,
): Error | undefined {
  const digest = replica.digest();
  const nextSequence = replica.nextSequence;
  const restored = replica.restored;
  const error = thrown(attempt);
  t.ok(error instanceof type, `${what}: rejected with ${type.name} (got ${error?.name}: ${error?.message})`);
  t.equal((error as { code?: string } | undefined)?.code, code, `${what}: code ${code}`);
  t.match(error?.message ?? '', message, `${what}: message is informative`);
  t.equal(replica.digest(), digest, `${what}: digest unchanged`);
  t.equal(replica.nextSequence, nextSequence, `${what}: nextSequence unchanged`);
  t.equal(replica.restored, restored, `${what}: restore progress unchanged`);
  return error;
}

t.test('bad units are rejected and change nothing; the right unit still applies', async (t) => {
  const s = await record(t, 1001);
  const { chunks, units, digests } = s;
  const replica = s.target.reserve(s.describe) as SimReplica;

  // Before the checkpoint finished: not even a valid unit applies.
  for (const c of chunks.slice(0, 2)) replica.restoreChunk(c);
  rejects(t, replica, 'unit before the checkpoint finished', () => replica.applyUnit(units[0].bytes), InvalidStateError, 'FAILED_PRECONDITION', /restoring/);
  for (const c of chunks.slice(2)) replica.restoreChunk(c);
  t.ok(replica.restored);
  t.equal(replica.digest(), digests[0], 'restored at the instant');
  t.equal(replica.nextSequence, units[0].sequence);

  replica.applyUnit(units[0].bytes);
  t.equal(replica.digest(), digests[1]);
  const u1 = units[1];
  const seq1 = u1.sequence;
  t.ok(u1.eventCount > 0, `unit ${seq1} has events (${u1.eventCount})`);

  // One flipped byte anywhere: in the magic, the version, the sequence, the events, the checksum.
  const len = u1.bytes.length;
  rejects(t, replica, 'flipped magic byte', () => replica.applyUnit(flipped(u1.bytes, 0)), CorruptDataError, 'DATA_LOSS', /magic/);
  rejects(t, replica, 'flipped version byte', () => replica.applyUnit(flipped(u1.bytes, 4)), CorruptDataError, 'DATA_LOSS', /version/);
  rejects(t, replica, 'flipped flags byte', () => replica.applyUnit(flipped(u1.bytes, 5)), CorruptDataError, 'DATA_LOSS', new RegExp(`unit ${seq1}: checksum mismatch`));
  rejects(t, replica, 'flipped sequence byte', () => replica.applyUnit(flipped(u1.bytes, 8)), CorruptDataError, 'DATA_LOSS', /checksum mismatch/);
  rejects(t, replica, 'flipped start position byte', () => replica.applyUnit(flipped(u1.bytes, 17)), CorruptDataError, 'DATA_LOSS', new RegExp(`unit ${seq1}: checksum mismatch`));
  rejects(t, replica, 'flipped event byte', () => replica.applyUnit(flipped(u1.bytes, 40 + ((len - 48) >> 1))), CorruptDataError, 'DATA_LOSS', new RegExp(`unit ${seq1}: checksum mismatch`));
  rejects(t, replica, 'flipped checksum byte', () => replica.applyUnit(flipped(u1.bytes, len - 1)), CorruptDataError, 'DATA_LOSS', new RegExp(`unit ${seq1}: checksum mismatch`));

  // Truncated: any prefix, down to nothing.
  for (const keep of [len - 1, len - 8, len >> 1, 48, 47, 10, 1]) {
    rejects(t, replica, `unit truncated to ${keep} of ${len} bytes`, () => replica.applyUnit(u1.bytes.subarray(0, keep)), CorruptDataError, 'DATA_LOSS', /truncated|checksum mismatch/);
  }
  rejects(t, replica, 'empty buffer', () => replica.applyUnit(new Uint8Array(0)), CorruptDataError, 'DATA_LOSS', /truncated: 0 bytes/);
  // Extended with a trailing byte: the checksum no longer sits at the end.
  const longer = new Uint8Array(len + 1);
  longer.set(u1.bytes);
  rejects(t, replica, 'unit with a byte appended', () => replica.applyUnit(longer), CorruptDataError, 'DATA_LOSS', /checksum mismatch/);

  // Order: a duplicate, and a unit that skips ahead.
  const dup = rejects(t, replica, 'duplicate unit', () => replica.applyUnit(units[0].bytes), UnitOrderError, 'FAILED_PRECONDITION', new RegExp(`unit ${seq1 - 1} was already applied.*at unit ${seq1}`));
  t.equal((dup as UnitOrderError).kind, 'duplicate');
  t.equal((dup as UnitOrderError).expectedSequence, seq1);
  t.equal((dup as UnitOrderError).receivedSequence, seq1 - 1);
  const gap = rejects(t, replica, 'unit skipping ahead', () => replica.applyUnit(units[3].bytes), UnitOrderError, 'FAILED_PRECONDITION', new RegExp(`unit ${seq1 + 2} skips ahead: expected unit ${seq1}, 2 missing`));
  t.equal((gap as UnitOrderError).kind, 'gap');
  t.equal((gap as UnitOrderError).expectedSequence, seq1);
  t.equal((gap as UnitOrderError).receivedSequence, seq1 + 2);
  const finalUnit = units[units.length - 1];
  const early = rejects(t, replica, 'the final unit, early', () => replica.applyUnit(finalUnit.bytes), UnitOrderError, 'FAILED_PRECONDITION', new RegExp(`unit ${finalUnit.sequence} skips ahead: expected unit ${seq1}`));
  t.equal((early as UnitOrderError).kind, 'gap');

  // Well-formed (valid checksum) but inconsistent with the replica.
  const moved = rejects(
    t,
    replica,
    'unit at the wrong start position',
    () => replica.applyUnit(reencoded(u1.bytes, (u) => (u.startPosition += 1))),
    UnitOrderError,
    'FAILED_PRECONDITION',
    new RegExp(`unit ${seq1} starts at instruction \\d+, the replica is at instruction \\d+`),
  );
  t.equal((moved as UnitOrderError).kind, 'position');
  rejects(
    t,
    replica,
    'final unit that carries execution',
    () => replica.applyUnit(reencoded(u1.bytes, (u) => (u.final = true))),
    CorruptDataError,
    'DATA_LOSS',
    new RegExp(`final unit ${seq1} carries execution`),
  );
  t.equal(replica.complete, false, 'a rejected final unit does not complete the replica');

  // The right unit still applies, and so does the rest of the log.
  t.equal(replica.applyUnit(u1.bytes).sequence, seq1);
  t.equal(replica.digest(), digests[2], 'after the rejections, the replica matches the source');
  for (let k = 2; k < units.length; k++) {
    replica.applyUnit(units[k].bytes);
    t.equal(replica.digest(), digests[k + 1], `digest after unit ${units[k].sequence}`);
  }
  t.ok(replica.complete);

  // Nothing applies after the final unit, not even the final unit again.
  const after = rejects(t, replica, 'final unit again', () => replica.applyUnit(finalUnit.bytes), UnitOrderError, 'FAILED_PRECONDITION', new RegExp(`unit ${finalUnit.sequence}`));
  t.equal((after as UnitOrderError).receivedSequence, finalUnit.sequence);
  // A retransmitted final unit is a duplicate of one applied; the replica calls it a gap.
  t.equal((after as UnitOrderError).kind, 'duplicate', 'a retransmitted final unit is classified as a duplicate');
  rejects(t, replica, 'old unit after the final one', () => replica.applyUnit(units[2].bytes), UnitOrderError, 'FAILED_PRECONDITION', new RegExp(`unit ${units[2].sequence}`));
  t.equal(replica.digest(), digests[digests.length - 1]);
});

t.test('bad checkpoint chunks are rejected and change nothing; the right chunk still restores', async (t) => {
  const s = await record(t, 2002, 4);
  const { chunks, units, digests } = s;
  t.ok(chunks.length >= 5, `${chunks.length} chunks`);
  const replica = s.target.reserve(s.describe) as SimReplica;
  replica.restoreChunk(chunks[0]);
  replica.restoreChunk(chunks[1]);
  const c2 = chunks[2];
  const c3 = chunks[3];
  const last = chunks[chunks.length - 1];
  t.ok(c2.bytes.length > 1000, 'chunk 2 holds pages');

  rejects(t, replica, 'corrupt chunk (page data)', () => replica.restoreChunk({ ...c2, bytes: flipped(c2.bytes, c2.bytes.length >> 1) }), CorruptDataError, 'DATA_LOSS', /checkpoint chunk 2: checksum mismatch/);
  rejects(t, replica, 'corrupt chunk (header)', () => replica.restoreChunk({ ...c2, bytes: flipped(c2.bytes, 12) }), CorruptDataError, 'DATA_LOSS', /checkpoint chunk 2: checksum mismatch/);
  rejects(t, replica, 'corrupt chunk (checksum)', () => replica.restoreChunk({ ...c2, bytes: flipped(c2.bytes, c2.bytes.length - 1) }), CorruptDataError, 'DATA_LOSS', /checkpoint chunk 2/);
  rejects(t, replica, 'truncated chunk', () => replica.restoreChunk({ ...c2, bytes: c2.bytes.subarray(0, c2.bytes.length - 4096) }), CorruptDataError, 'DATA_LOSS', /checkpoint chunk 2/);
  rejects(t, replica, 'chunk of 10 bytes', () => replica.restoreChunk({ ...c2, bytes: c2.bytes.subarray(0, 10) }), CorruptDataError, 'DATA_LOSS', /checkpoint chunk 2 truncated: 10 bytes/);
  const ahead = rejects(t, replica, 'chunk out of order', () => replica.restoreChunk(c3), UnitOrderError, 'FAILED_PRECONDITION', /checkpoint chunk 3 out of order: expected chunk 2/);
  t.equal((ahead as UnitOrderError).kind, 'gap');
  const dup = rejects(t, replica, 'duplicate chunk', () => replica.restoreChunk(chunks[1]), UnitOrderError, 'FAILED_PRECONDITION', /checkpoint chunk 1 out of order: expected chunk 2/);
  t.equal((dup as UnitOrderError).kind, 'duplicate');
  rejects(t, replica, 'chunk 3 relabelled as chunk 2', () => replica.restoreChunk({ ...c3, index: 2 }), CorruptDataError, 'DATA_LOSS', /checkpoint chunk 2 carries index 3 inside/);
  rejects(t, replica, 'state chunk relabelled as chunk 2', () => replica.restoreChunk({ ...last, index: 2 }), CorruptDataError, 'DATA_LOSS', new RegExp(`checkpoint chunk 2 carries index ${last.index} inside`));
  rejects(t, replica, 'memory chunk marked final', () => replica.restoreChunk({ ...c2, final: true }), CorruptDataError, 'DATA_LOSS', /checkpoint chunk 2 has kind 0 and is marked final/);
  rejects(t, replica, 'final chunk early', () => replica.restoreChunk(last), UnitOrderError, 'FAILED_PRECONDITION', new RegExp(`checkpoint chunk ${last.index} out of order: expected chunk 2`));
  rejects(t, replica, 'unit during restore', () => replica.applyUnit(units[0].bytes), InvalidStateError, 'FAILED_PRECONDITION', /restoring/);

  // The right chunks still restore the exact instant.
  for (const c of chunks.slice(2, -1)) replica.restoreChunk(c);
  t.equal(replica.restored, false);
  rejects(t, replica, 'final chunk with a flipped state byte', () => replica.restoreChunk({ ...last, bytes: flipped(last.bytes, 30) }), CorruptDataError, 'DATA_LOSS', new RegExp(`checkpoint chunk ${last.index}: checksum mismatch`));
  rejects(t, replica, 'final chunk not marked final', () => replica.restoreChunk({ ...last, final: false }), CorruptDataError, 'DATA_LOSS', new RegExp(`checkpoint chunk ${last.index} holds the machine state but is not marked final`));
  replica.restoreChunk(last);
  t.ok(replica.restored);
  t.equal(replica.digest(), digests[0], 'restored at the instant despite the rejections');

  // A chunk once restored is refused, and changes nothing.
  const again = thrown(() => replica.restoreChunk(last));
  t.ok(again instanceof Error, `the final chunk again is refused (${again?.name}: ${again?.message})`);
  t.ok(again instanceof UnitOrderError && again.kind === 'duplicate', 'a retransmitted final chunk is an out-of-order (duplicate) chunk, as TargetReplica.restoreChunk documents');
  t.equal(replica.digest(), digests[0]);
  t.equal(replica.nextSequence, units[0].sequence);

  for (const [k, u] of units.entries()) {
    replica.applyUnit(u.bytes);
    t.equal(replica.digest(), digests[k + 1], `digest after unit ${u.sequence}`);
  }
  t.ok(replica.complete);
});

t.test('a well-formed unit that does not match the execution makes the replica diverge', async (t) => {
  const s = await record(t, 3003, 4);
  const replica = s.target.reserve(s.describe) as SimReplica;
  for (const c of s.chunks) replica.restoreChunk(c);
  const u = s.units[0];
  const decoded = decodeUnit(u.bytes);
  t.ok(decoded.syncEvents.length > 0, `unit ${u.sequence} has synchronous events (${decoded.syncEvents.length})`);
  // Drop the last synchronous event: the guest will ask for a value the log does not have.
  const forged = reencoded(u.bytes, (d) => {
    d.syncEvents.pop();
  });
  const error = thrown(() => replica.applyUnit(forged));
  t.ok(error instanceof ReplayDivergenceError, `ReplayDivergenceError (got ${error?.name}: ${error?.message})`);
  t.equal((error as { code?: string }).code, 'DATA_LOSS');
  t.match(error?.message ?? '', new RegExp(`replica diverged in unit ${u.sequence}`));
  // A diverged replica refuses everything; its only way out is discard.
  const next = thrown(() => replica.applyUnit(u.bytes));
  t.ok(next instanceof InvalidStateError, `a diverged replica refuses units (${next?.message})`);
  t.ok(thrown(() => replica.digest()) instanceof InvalidStateError, 'and digests');
  t.ok(thrown(() => replica.activate()) instanceof InvalidStateError, 'and activation');
  const reserved = s.target.capacity().memoryBytesReserved;
  t.equal(reserved, GUEST_BYTES, 'the diverged replica still holds its reservation');
  replica.discard();
  t.equal(s.target.capacity().memoryBytesReserved, 0, 'discard frees it');
});
