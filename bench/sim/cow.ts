// Part 3 of the sim benchmark: copy-on-write pool use and guest stall while a writing guest
// (mmuncher) is checkpointed, the guest stepped between chunk pulls as if each chunk went out over
// a link of a given speed.

import { setImmediate as flushMacrotask } from 'node:timers/promises';
import type { SimReplica, SimSourceGuest } from '../../shared/driver/sim/index.js';
import type { CopyOnWrite } from '../../shared/driver/sim/memory.js';
import type { CheckpointChunk, SealedUnit } from '../../shared/driver/types.js';
import { fixed, MIB_BYTES, mibText, sig, table } from '../format.js';
import { CONTENT_SEED, drainAll, drainQueued, withDrivers } from './drivers.js';
import { collectGarbage, progress } from './measure.js';
import type { SimBenchOptions } from './options.js';

const COW_MEMORY_BYTES = 512 * MIB_BYTES;
const ENVIRONMENT_SEED = 3000;
const BITS_PER_GBIT = 1e9;

interface CowResult {
  linkBitsPerSec: number;
  memoryBytes: number;
  chunks: number;
  rawBytes: number;
  /** Time the checkpoint takes on the link (raw chunk bytes at the link's rate). */
  linkSeconds: number;
  unitsRun: number;
  unitsStalled: number;
  /** Link time during which the guest was waiting for room in the pool. */
  stalledLinkSeconds: number;
  /** Wall time the driver counted the guest as stalled (host time, chunks made at host speed). */
  driverStallMs: number;
  poolMaxBytes: number;
  poolBoundBytes: number;
  wallMs: number;
  checkpointDigestMatch: boolean;
  finalDigestMatch: boolean;
  digest: string;
}

/**
 * Steps a recording guest by the units the link owes it. A unit that has to wait for room in the
 * copy-on-write pool holds the guest until the checkpoint has taken enough preserved pages.
 */
class LinkPacedGuest {
  unitsRun = 0;
  unitsStalled = 0;
  poolMaxBytes = 0;
  /** The step of the unit waiting for room in the pool, while one waits. */
  pending: Promise<void> | null = null;
  private owedUnits = 0;
  private readonly steps: Promise<void>[] = [];

  constructor(
    private readonly guest: SimSourceGuest,
    private readonly cow: CopyOnWrite,
  ) {}

  owe(units: number): void {
    this.owedUnits += units;
  }

  /** Runs the units the guest is owed, until one has to wait for room in the pool. */
  runOwed(): void {
    while (this.owedUnits >= 1 && this.pending === null) {
      this.owedUnits -= 1;
      const before = this.guest.runnerStats().unitsRun;
      const step = this.guest.step(1);
      this.steps.push(step);
      if (this.guest.runnerStats().unitsRun > before) {
        this.unitRan();
      } else {
        // Stalled: it runs once enough preserved pages were sent (taken by the checkpoint).
        this.unitsStalled++;
        const waiting: Promise<void> = step.then(() => {
          this.unitRan();
          if (this.pending === waiting) this.pending = null;
        });
        this.pending = waiting;
      }
    }
  }

  /** Waits for the unit that waits for room, and for every step taken. */
  async settle(): Promise<void> {
    if (this.pending !== null) await this.pending;
    await Promise.all(this.steps);
  }

  private unitRan(): void {
    this.unitsRun++;
    this.poolMaxBytes = Math.max(this.poolMaxBytes, this.cow.preservedBytes);
  }
}

interface Sent {
  chunks: number;
  rawBytes: number;
  linkSeconds: number;
  stalledLinkSeconds: number;
}

/**
 * Pulls every chunk of a live checkpoint, restores it into the replica, and gives the guest the
 * units of guest time the chunk's raw bytes take on the link.
 */
async function sendOverLink(guest: SimSourceGuest, replica: SimReplica, paced: LinkPacedGuest, units: SealedUnit[], linkBitsPerSec: number): Promise<Sent> {
  const unitSeconds = guest.describe().unitMs / 1000;
  const linkBytesPerSec = linkBitsPerSec / 8;
  const sent: Sent = { chunks: 0, rawBytes: 0, linkSeconds: 0, stalledLinkSeconds: 0 };
  const iterator = guest.liveCheckpoint()[Symbol.asyncIterator]();
  for (;;) {
    const next: IteratorResult<CheckpointChunk> = await iterator.next();
    if (next.done === true) break;
    const chunk = next.value;
    sent.chunks++;
    sent.rawBytes += chunk.bytes.length;
    replica.restoreChunk(chunk);
    const chunkSeconds = chunk.bytes.length / linkBytesPerSec;
    sent.linkSeconds += chunkSeconds;
    if (paced.pending !== null) {
      // The guest waited for room while this chunk went out: that time is lost to it.
      sent.stalledLinkSeconds += chunkSeconds;
      await flushMacrotask();
    } else {
      paced.owe(chunkSeconds / unitSeconds);
    }
    paced.runOwed();
    await drainQueued(guest, units);
  }
  return sent;
}

async function benchCow(linkBitsPerSec: number, opts: SimBenchOptions): Promise<CowResult> {
  return withDrivers(async ({ source, target }) => {
    const guest = source.createGuest({ id: 'bench-cow', profile: 'mmuncher', memoryBytes: COW_MEMORY_BYTES, environmentSeed: ENVIRONMENT_SEED, contentSeed: CONTENT_SEED });
    await guest.step(opts.warmupUnits);
    guest.startRecording();
    const cow = guest.machine.memory.cow;
    if (cow === null) throw new Error('startRecording installed no copy-on-write pool');
    const digestAtCheckpoint = guest.digest();
    const replica = target.reserve(guest.describe());
    const units: SealedUnit[] = [];
    const paced = new LinkPacedGuest(guest, cow);
    const stallMsBefore = guest.recordingStats().stallMs;

    const startMs = performance.now();
    const sent = await sendOverLink(guest, replica, paced, units, linkBitsPerSec);
    await paced.settle();
    const wallMs = performance.now() - startMs;
    const driverStallMs = guest.recordingStats().stallMs - stallMsBefore;
    const checkpointDigestMatch = replica.digest() === digestAtCheckpoint;

    await guest.suspend();
    await drainAll(guest, units);
    for (const u of units) replica.applyUnit(u.bytes);
    const digest = guest.digest();
    const finalDigestMatch = replica.digest() === digest;
    guest.discard();
    replica.discard();
    return {
      linkBitsPerSec,
      memoryBytes: COW_MEMORY_BYTES,
      chunks: sent.chunks,
      rawBytes: sent.rawBytes,
      linkSeconds: sent.linkSeconds,
      unitsRun: paced.unitsRun,
      unitsStalled: paced.unitsStalled,
      stalledLinkSeconds: sent.stalledLinkSeconds,
      driverStallMs,
      poolMaxBytes: paced.poolMaxBytes,
      poolBoundBytes: cow.preservedBytesMax,
      wallMs,
      checkpointDigestMatch,
      finalDigestMatch,
      digest,
    };
  });
}

function printCow(results: CowResult[]): void {
  const first = results[0];
  console.log(
    `\n== 3. Copy-on-write pool while checkpointing a writing guest (mmuncher, ${first.memoryBytes / MIB_BYTES} MiB, pool bound ${mibText(first.poolBoundBytes)}): ` +
      `the guest is stepped between chunk pulls, one 10 ms unit per 10 ms a chunk's raw bytes take on the link ==\n`,
  );
  console.log(
    table(
      ['link', 'ckpt MiB', 'ckpt s on link', 'units run', 'units stalled', 'stall s (link)', 'stall %', 'driver stall ms', 'pool max MiB', 'pool max %', 'wall ms', 'digests'],
      results.map((r) => [
        `${fixed(r.linkBitsPerSec / BITS_PER_GBIT, r.linkBitsPerSec < BITS_PER_GBIT ? 1 : 0)} Gbit/s`,
        fixed(r.rawBytes / MIB_BYTES, 0),
        fixed(r.linkSeconds, 2),
        String(r.unitsRun),
        String(r.unitsStalled),
        fixed(r.stalledLinkSeconds, 2),
        fixed((100 * r.stalledLinkSeconds) / r.linkSeconds, 0),
        sig(r.driverStallMs),
        fixed(r.poolMaxBytes / MIB_BYTES, 1),
        fixed((100 * r.poolMaxBytes) / r.poolBoundBytes, 0),
        sig(r.wallMs),
        r.checkpointDigestMatch && r.finalDigestMatch ? 'ok' : `MISMATCH (ckpt ${r.checkpointDigestMatch ? 'ok' : 'bad'}, final ${r.finalDigestMatch ? 'ok' : 'bad'})`,
      ]),
    ),
  );
  console.log(
    '\n  stall s (link): link time of the chunks sent while the guest waited for room in the pool (guest time lost);' +
      '\n  driver stall ms: the same waits in host wall time as the driver counts them (chunks made at host speed, no link).' +
      '\n  digests: replica after restore = guest at the checkpoint instant, and after replaying every unit = guest at suspend.',
  );
}

/** Part 3 at every link speed of `opts`: prints its table; `failures` counts runs whose digests differ. */
export async function runCowPart(opts: SimBenchOptions): Promise<{ failures: number; figures: CowResult[] }> {
  const results: CowResult[] = [];
  let failures = 0;
  for (const link of opts.linkBitsPerSec) {
    progress(`copy-on-write: mmuncher ${COW_MEMORY_BYTES / MIB_BYTES} MiB checkpointed at ${link / BITS_PER_GBIT} Gbit/s`);
    const r = await benchCow(link, opts);
    if (!r.checkpointDigestMatch || !r.finalDigestMatch) failures++;
    results.push(r);
    await collectGarbage();
  }
  printCow(results);
  return { failures, figures: results };
}
