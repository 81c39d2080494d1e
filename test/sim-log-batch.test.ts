// A protection's log batches (LogRecorder.setLogBatch, vcpu-outbox.ts): the units a guest on its
// own thread seals reach the agent in batches, in order, none lost; a unit that produced output
// ends its batch (its output waits for no batch); a suspend delivers every unit before the final
// one; the outbox itself keeps order and sends an urgent message's batch at once.
import t, { type Test } from 'tap';
import type { SealedUnit } from '../shared/driver/types.js';
import { SimDriver, type SimSourceGuest } from '../shared/driver/sim/index.js';
import { VcpuOutbox } from '../shared/driver/sim/vcpu-outbox.js';
import type { VcpuMessage } from '../shared/driver/sim/vcpu-protocol.js';

const MiB = 2 ** 20;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** Arrivals closer than this belong to one batch (units are sealed 10 ms apart). */
const SAME_BATCH_MS = 4;

async function until(done: () => boolean): Promise<boolean> {
  for (let i = 0; i < 1000 && !done(); i++) await sleep(10);
  return done();
}

interface Arrival {
  unit: SealedUnit;
  atMs: number;
}

/** Takes sealed units as they come, with when each arrived, until the final one. */
async function arrivals(guest: SimSourceGuest): Promise<Arrival[]> {
  const out: Arrival[] = [];
  for (let u = await guest.nextSealedUnit(); u !== null; u = await guest.nextSealedUnit()) out.push({ unit: u, atMs: performance.now() });
  return out;
}

/** The arrivals cut where two are further apart than SAME_BATCH_MS. */
function batches(list: Arrival[]): Arrival[][] {
  const out: Arrival[][] = [];
  for (const a of list) {
    const last = out.at(-1);
    if (last !== undefined && a.atMs - last.at(-1)!.atMs <= SAME_BATCH_MS) last.push(a);
    else out.push([a]);
  }
  return out;
}

function driver(t: Test) {
  const failures: unknown[] = [];
  const d = new SimDriver({ guest: { vcpu: 'thread' as const, onRunnerFailure: (_id: string, error: unknown) => failures.push(error) } });
  t.teardown(() => d.shutdown());
  return { d, failures };
}

t.test('the outbox: in order; due after its batch time, or at once for an urgent message', async (t) => {
  const sent: number[] = [];
  const box = new VcpuOutbox((m) => sent.push((m as { sequence: number }).sequence));
  const unit = (sequence: number): VcpuMessage => ({ kind: 'unit', recording: 1, sequence, bytes: new Uint8Array(1), guestNs: 1, eventCount: 0 });
  t.equal(box.dueAt(20), Number.POSITIVE_INFINITY, 'nothing queued: never due');
  box.add(unit(1), [], false, 100);
  box.add(unit(2), [], false, 110);
  t.equal(box.dueAt(20), 120, 'due 20 ms after the oldest');
  box.flushIfDue(119, 20);
  t.same(sent, [], 'not yet');
  box.flushIfDue(120, 20);
  t.same(sent, [1, 2], 'both, in order');
  box.add(unit(3), [], false, 200);
  box.add(unit(4), [], true, 205);
  t.equal(box.dueAt(20), 200, 'an urgent message makes the batch due at once');
  box.flushIfDue(205, 20);
  t.same(sent, [1, 2, 3, 4]);
  box.add(unit(5), [], false, 300);
  box.flushIfDue(300, 0);
  t.same(sent, [1, 2, 3, 4, 5], 'a batch of 0 ms: each at once');
  t.equal(box.size, 0);
});

t.test('units sealed on the vCPU thread come in batches, in order, all of them, the final one last', async (t) => {
  const { d, failures } = driver(t);
  // No packets: no unit ends a batch early.
  const guest = d.createGuest({ id: 'batch', profile: 'compile', memoryBytes: 64 * MiB, environmentSeed: 7, rates: { packetsPerSec: 0 } });
  t.ok(await until(() => guest.runnerStats().unitsRun >= 5), 'it runs');
  const start = guest.startRecording();
  t.throws(() => guest.setLogBatch(1001), /expected 0 to 1000/, 'a batch past the most is refused');
  guest.setLogBatch(100);
  const got = arrivals(guest);
  t.ok(await until(() => (guest.recordingStats().unitsUnsent ?? 0) > 0), 'the recording counts the units that wait on the thread (a protection counts them as lag)');
  await sleep(1500);
  await guest.suspend();
  const list = await got;
  const sequences = list.map((a) => a.unit.sequence);
  t.same(sequences, Array.from({ length: list.length }, (_, i) => start.firstSequence + i), `${list.length} units, consecutive from the recording's first: none lost in a batch`);
  t.ok(list.at(-1)!.unit.final, 'the final unit comes last, after every batch');
  const cut = batches(list.slice(0, -1));
  const perBatch = (list.length - 1) / cut.length;
  t.ok(perBatch >= 3, `${cut.length} batches of ${perBatch.toFixed(1)} units on average (100 ms of 10 ms units)`);
  const stats = guest.runnerStats();
  t.ok(stats.instructionsRun > stats.unitsRun, `the vCPU counts the instructions its units ran (${stats.instructionsRun} in ${stats.unitsRun} units)`);
  t.same(failures, []);
});

t.test("a unit that produced output ends its batch: the output's unit does not wait", async (t) => {
  const { d, failures } = driver(t);
  const guest = d.createGuest({ id: 'out', profile: 'web', memoryBytes: 64 * MiB, environmentSeed: 21, rates: { packetsPerSec: 5 } });
  t.ok(await until(() => guest.runnerStats().unitsRun >= 5), 'it runs');
  guest.output.hold();
  const start = guest.startRecording();
  guest.setLogBatch(1000);
  const got = arrivals(guest);
  await sleep(2500);
  await guest.suspend();
  const list = await got;
  guest.output.openGate();
  const outputUnits = new Set(
    guest.output
      .releasedAfter(-1, 100_000)
      .packets.filter((p) => p.unit >= start.firstSequence)
      .map((p) => p.unit),
  );
  t.ok(outputUnits.size >= 3, `${outputUnits.size} units produced output`);
  const cut = batches(list.slice(0, -1));
  const lastOfBatch = new Set(cut.map((b) => b.at(-1)!.unit.sequence));
  const ending = [...outputUnits].filter((u) => lastOfBatch.has(u) || u === list.at(-1)!.unit.sequence).length;
  // A busy host may deliver two batches in one turn of the agent's loop: most, not all, show apart.
  t.ok(ending >= 0.8 * outputUnits.size, `${ending} of ${outputUnits.size} output units ended their batch (the batch was 1 s)`);
  t.ok(cut.length >= outputUnits.size * 0.8, `${cut.length} batches in 2.5 s: one per output, not one per second`);
  t.same(failures, []);
});
