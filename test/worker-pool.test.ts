// The worker pool on its own (shared/worker-pool.ts), with a worker that does what each task asks
// (test/support/task-worker.ts): it holds no more tasks than its bound, a task's error reaches the
// caller with its class, a dying worker fails its tasks and leaves the pool, and closing it fails
// what is left and ends the workers. Then the pool that packs payloads (shared/pack-pool.ts): the
// messages its workers make are byte for byte those packMessage makes here, and decode the same.
import t from 'tap';
import { fillText } from '../shared/driver/sim/content.js';
import { AbortedError, CorruptDataError, LimitExceededError, UnavailableError } from '../shared/errors.js';
import { PackPool } from '../shared/pack-pool.js';
import { packMessage, type PayloadBody, PAYLOAD_RAW_BYTES_MAX, unpackPayload } from '../shared/protocol.js';
import { Random } from '../shared/random.js';
import { pb } from '../shared/transport/grpc.js';
import { WorkerPool } from '../shared/worker-pool.js';
import type { TaskRequest, TaskResult } from './support/task-worker.js';

const SEED = 1717;
const script = new URL('./support/task-worker.js', import.meta.url);

function pool(workers: number, tasksPerWorkerMax: number): WorkerPool<TaskRequest, TaskResult> {
  return new WorkerPool<TaskRequest, TaskResult>({ script, workers, tasksPerWorkerMax, name: 'test' });
}

t.test('bounded: no more tasks than workers × tasksPerWorkerMax; room again once they end', async (t) => {
  const p = pool(2, 2);
  t.teardown(() => p.close());
  t.equal(p.capacity, 4);
  const held = [0, 1, 2, 3].map(() => p.tryRun({ op: 'block', ms: 50 }));
  t.ok(held.every((task) => task !== null), 'four tasks taken');
  t.equal(p.pending, 4);
  t.equal(p.tryRun({ op: 'block', ms: 1 }), null, 'a fifth is refused: the caller does the work itself');
  await Promise.all(held);
  t.equal(p.pending, 0);
  const again = p.tryRun({ op: 'echo', buffer: new ArrayBuffer(16) });
  t.not(again, null, 'taken once the others ended');
  t.equal((await again)!.bytes, 16);
});

t.test('buffers are transferred both ways, not copied', async (t) => {
  const p = pool(1, 1);
  t.teardown(() => p.close());
  const buffer = new ArrayBuffer(1 << 20);
  new Uint8Array(buffer).fill(7);
  const result = await p.tryRun({ op: 'echo', buffer }, [buffer])!;
  t.equal(buffer.byteLength, 0, 'detached here once handed over');
  t.equal(result.buffer!.byteLength, 1 << 20);
  t.equal(new Uint8Array(result.buffer!)[12345], 7, 'the same bytes came back');
});

t.test("a task's error reaches its caller with its class; the worker goes on", async (t) => {
  const p = pool(1, 2);
  t.teardown(() => p.close());
  await t.rejects(p.tryRun({ op: 'throw', message: 'chunk 3: bad bytes' })!, new CorruptDataError('chunk 3: bad bytes'));
  const error = await p.tryRun({ op: 'throw', message: 'x' })!.catch((e: unknown) => e);
  t.ok(error instanceof CorruptDataError, 'an instance of the class thrown');
  t.equal((await p.tryRun({ op: 'echo', buffer: new ArrayBuffer(3) })!).bytes, 3, 'the worker still answers');
  t.equal(p.workers, 1);
});

t.test('a worker that dies fails the tasks it held and leaves the pool', async (t) => {
  const p = pool(2, 2);
  t.teardown(() => p.close());
  const dying = p.tryRun({ op: 'exit', code: 3 })!;
  await t.rejects(dying, UnavailableError);
  await t.rejects(dying, /a test worker exited with code 3; 1 left/);
  t.equal(p.workers, 1);
  t.equal(p.capacity, 2);
  t.equal((await p.tryRun({ op: 'echo', buffer: new ArrayBuffer(5) })!).bytes, 5, 'the other worker still answers');
});

t.test('close fails the tasks not finished with AbortedError, then refuses new ones', async (t) => {
  const p = pool(1, 2);
  const running = p.tryRun({ op: 'block', ms: 2000 })!;
  const queued = p.tryRun({ op: 'echo', buffer: new ArrayBuffer(1) })!;
  const failures = [t.rejects(running, AbortedError), t.rejects(queued, /the test pool was closed/)];
  await p.close();
  await Promise.all(failures);
  t.equal(p.workers, 0);
  t.equal(p.tryRun({ op: 'echo', buffer: new ArrayBuffer(1) }), null);
  await p.close();
});

t.test('payloads packed in workers are the bytes packMessage makes here, and decode the same', async (t) => {
  t.comment(`seed ${SEED}`);
  const random = new Random(SEED);
  const packer = new PackPool(2);
  t.teardown(() => packer.close());
  const text = new Uint8Array(1 << 20);
  fillText(text, random);
  const noise = new Uint8Array(300_000);
  random.fill(noise);
  const cases: Array<[string, Uint8Array]> = [
    ['text, 1 MiB', text],
    ['random, 300 kB', noise],
    ['zero, 64 kB', new Uint8Array(65_536)],
    ['small (pooled by Node), 100 B', text.slice(0, 100)],
  ];
  for (const [what, raw] of cases) {
    for (const compress of [true, false]) {
      const body: PayloadBody = { kind: 'chunk', index: 9, final: false, memoryBytesCovered: 1 << 20 };
      const expected = packMessage(body, raw, compress);
      const copy = raw.slice();
      const pending = packer.pack(body, raw, compress);
      // The raw bytes may be reused as soon as pack returns: the worker has its own copy.
      raw.fill(0xee);
      const packed = await pending;
      raw.set(copy);
      t.ok(packed.bytes.equals(expected.bytes), `${what}, lz4 ${compress}: the same bytes`);
      t.same({ ...packed, bytes: null, release: null }, { ...expected, bytes: null, release: null }, `${what}, lz4 ${compress}: the same fields`);
      packed.release?.();
      const decoded = pb.SourceMessage.decode(packed.bytes);
      t.ok(Buffer.from(unpackPayload(decoded.chunk!.payload, what)).equals(Buffer.from(copy)), `${what}, lz4 ${compress}: unpacks to the raw bytes`);
    }
  }
  // More at once than the workers hold: the rest are packed on this thread, in the same bytes.
  const body: PayloadBody = { kind: 'unit', sequence: 1, final: false, guestNs: 5, eventCount: 2 };
  const many = await Promise.all(Array.from({ length: 20 }, () => packer.pack(body, text, true)));
  const expected = packMessage(body, text, true);
  t.ok(many.every((m) => m.bytes.equals(expected.bytes)), '20 at once: all the same bytes');
});

t.test("a message's buffer is reused only once the stream released it", async (t) => {
  const random = new Random(SEED + 1);
  const packer = new PackPool(1);
  t.teardown(() => packer.close());
  const body: PayloadBody = { kind: 'chunk', index: 0, final: false, memoryBytesCovered: 1 << 20 };
  const a = new Uint8Array(1 << 20);
  const b = new Uint8Array(1 << 20);
  fillText(a, random);
  fillText(b, random);
  const first = await packer.pack(body, a, true);
  const firstBytes = Buffer.from(first.bytes);
  const second = await packer.pack(body, b, true);
  t.ok(first.bytes.equals(firstBytes), 'the first message is intact after the second was packed');
  t.ok(second.bytes.equals(packMessage(body, b, true).bytes));
  t.equal(packer.spareSlots, 0, 'both slots still held');
  first.release!();
  first.release!();
  t.equal(packer.spareSlots, 1, 'released once, however often it is called');
  second.release!();
  const third = await packer.pack(body, a, true);
  t.equal(packer.spareSlots, 1, 'the next message took a released slot');
  t.ok(third.bytes.equals(firstBytes), 'and packs the same bytes into it');
});

t.test("a packing error in a worker is the same error as on this thread", async (t) => {
  const packer = new PackPool(1);
  t.teardown(() => packer.close());
  const tooBig = new Uint8Array(PAYLOAD_RAW_BYTES_MAX + 1);
  await t.rejects(packer.pack({ kind: 'machineState' }, tooBig, true), LimitExceededError);
});
