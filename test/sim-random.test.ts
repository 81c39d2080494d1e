// Randomized determinism: random profile, rate overrides, unit length, memory size, boot content
// and chunk size; record, checkpoint while running, replay; the replica must match the source at
// every unit boundary. The seed is printed; rerun one with SIM_TEST_SEED=<seed>.
// (The guest's clock reads come from the host's wall clock and the instruction budget adapts to
// the host's speed, both recorded: a seed reproduces the configuration and the outside world's
// packets, disk data and random values, not every instruction.)
import t from 'tap';
import { PROFILE_NAMES, type ProfileName, SimDriver, type SimReplica, type WorkloadRates } from '../shared/driver/sim/index.js';
import { Random } from '../shared/random.js';

const MiB = 2 ** 20;
const ROUNDS = 3;

/** Ranges for the overrides: inside the driver's bounds, small enough to keep a round quick. */
const RATE_RANGES: Record<keyof WorkloadRates, [number, number]> = {
  busyFraction: [0.001, 1],
  pageWritesPerSec: [0, 40_000],
  bytesPerPageWrite: [4, 4096],
  workingSetFraction: [0.0001, 1],
  sequentialFraction: [0, 1],
  timerHz: [0, 2000],
  packetsPerSec: [0, 8000],
  packetBytes: [0, 9000],
  diskReadsPerSec: [0, 2000],
  clockReadsPerSec: [0, 20_000],
  randomReadsPerSec: [0, 5000],
};
const INTEGER_RATES = new Set<keyof WorkloadRates>(['bytesPerPageWrite', 'packetBytes']);

function pick<T>(random: Random, items: readonly T[]): T {
  return items[random.nextInt(items.length)];
}

const masterSeed = process.env.SIM_TEST_SEED !== undefined ? Number(process.env.SIM_TEST_SEED) >>> 0 : Random.seedFromOs();

t.test('randomized record/checkpoint/replay keeps the replica identical to the source', async (t) => {
  t.comment(`seed ${masterSeed} (rerun with SIM_TEST_SEED=${masterSeed})`);
  const master = new Random(masterSeed);
  for (let round = 0; round < ROUNDS; round++) {
    const random = new Random(master.nextU32());
    const profile: ProfileName = pick(random, PROFILE_NAMES);
    const rates: Partial<WorkloadRates> = {};
    for (const [name, [min, max]] of Object.entries(RATE_RANGES) as [keyof WorkloadRates, [number, number]][]) {
      if (random.nextFloat() < 0.5) continue;
      const value = min + random.nextFloat() * (max - min);
      rates[name] = INTEGER_RATES.has(name) ? Math.round(value) : value;
    }
    const unitMs = 1 + random.nextInt(30);
    const memoryBytes = pick(random, [64, 64, 66, 96]) * MiB;
    const z = random.nextFloat();
    const x = random.nextFloat() * (1 - z);
    const contentMix = { zeroFraction: z, textFraction: x, randomFraction: 1 - z - x };
    const chunkPages = 8 * (1 + random.nextInt(128));
    const environmentSeed = random.nextU32();
    const contentSeed = random.nextU32();
    const unitsBefore = random.nextInt(4);
    const unitsAfter = 5 + random.nextInt(20);
    const config = { round, profile, rates, unitMs, memoryBytes: memoryBytes / MiB, contentMix, chunkPages, environmentSeed, contentSeed, unitsBefore, unitsAfter };
    t.comment(JSON.stringify(config));

    const source = new SimDriver({ guest: { pacing: 'manual' } });
    const target = new SimDriver({ guest: { pacing: 'manual' } });
    try {
      const guest = source.createGuest({ id: `r${round}`, profile, rates, unitMs, memoryBytes, contentMix, environmentSeed, contentSeed });
      await guest.step(unitsBefore);
      const start = guest.startRecording();
      const digests = [guest.digest()];
      const replica = target.reserve(guest.describe()) as SimReplica;
      const chunkCount = Math.ceil(memoryBytes / 4096 / chunkPages) + 1;
      // At most 8 units while the checkpoint streams, spread at random: few enough that the
      // pages they preserve always fit the copy-on-write pool (a full pool would stall step()
      // here forever, since this same code is the checkpoint's reader).
      const stepChance = Math.min(1, 8 / chunkCount);
      let stepsDuringCheckpoint = 0;
      for await (const c of guest.liveCheckpoint({ chunkPages })) {
        replica.restoreChunk(c);
        if (!c.final && stepsDuringCheckpoint < 8 && random.nextFloat() < stepChance) {
          stepsDuringCheckpoint++;
          await guest.step(1);
          digests.push(guest.digest());
        }
      }
      t.equal(replica.digest(), digests[0], `round ${round}: restored at the instant`);
      for (let i = 0; i < unitsAfter; i++) {
        await guest.step(1);
        digests.push(guest.digest());
      }
      await guest.suspend();
      const finalDigest = guest.digest();
      const mismatches: number[] = [];
      let k = 0;
      let last = null;
      for (let u = await guest.nextSealedUnit(); u !== null; u = await guest.nextSealedUnit()) {
        replica.applyUnit(u.bytes);
        last = u;
        if (!u.final && replica.digest() !== digests[++k]) mismatches.push(u.sequence);
      }
      t.equal(k, digests.length - 1, `round ${round}: ${k} units replayed`);
      t.same(mismatches, [], `round ${round}: digests equal at every unit boundary`);
      t.equal(last?.final, true, `round ${round}: the last unit is final`);
      t.ok(replica.complete);
      t.equal(replica.nextSequence, start.firstSequence + k + 1);
      t.equal(replica.digest(), finalDigest, `round ${round}: final digests equal`);
    } finally {
      source.shutdown();
      target.shutdown();
    }
  }
});
