// The checkpoint stream's pipeline (source-agent/streams/checkpoint.ts) against a fake channel
// whose packing the test finishes by hand: chunks go out in order whatever order their packing
// ends in, no more than PACKING_MAX are packed at once, a window of one chunk still moves, and a
// packing error fails the stream.
import t from 'tap';
import { ManualClock } from '../shared/clock.js';
import { CorruptDataError } from '../shared/errors.js';
import type { PackedMessage, PayloadBody } from '../shared/protocol.js';
import { emptyStats } from '../shared/stats.js';
import { CheckpointStream, PACKING_MAX } from '../source-agent/streams/checkpoint.js';
import { FakeChannel, FakeRecorder, quietLog } from './support/fake-source.js';

/** A channel whose packAsync results wait until the test releases them, in any order. */
class HeldChannel extends FakeChannel {
  readonly held: Array<{ index: number; release(): void; fail(error: Error): void }> = [];

  override packAsync(body: PayloadBody, raw: Uint8Array): Promise<PackedMessage> {
    const message = this.pack(body, raw);
    return new Promise((resolve, reject) => this.held.push({ index: body.kind === 'chunk' ? body.index : -1, release: () => resolve(message), fail: reject }));
  }
}

const settle = (clock: ManualClock) => clock.advance(0);
const chunkIndexes = (channel: FakeChannel) => channel.writtenOf('chunk').map((w) => (w.body as { index: number }).index);

t.test('in order whatever order the packing ends in; at most PACKING_MAX packed at once', async (t) => {
  const clock = new ManualClock();
  const channel = new HeldChannel(clock);
  const stats = emptyStats('crtr', 8 * 4096);
  const stream = new CheckpointStream(channel, stats, clock, quietLog, 16, 0);
  const run = stream.run(new FakeRecorder(8));
  await settle(clock);
  t.equal(channel.held.length, PACKING_MAX, `${PACKING_MAX} chunks handed to the packer, no more`);
  // The last of them ends first: nothing may go out before chunk 0.
  channel.held[PACKING_MAX - 1].release();
  await settle(clock);
  t.same(chunkIndexes(channel), []);
  for (const h of channel.held.slice(0, PACKING_MAX - 1)) h.release();
  await settle(clock);
  for (let i = 0; i < 20 && channel.held.some((h) => h.index >= PACKING_MAX); i++) {
    for (const h of channel.held) h.release();
    await settle(clock);
  }
  channel.report({ chunksApplied: 8, checkpointRestored: true });
  await run;
  t.same(chunkIndexes(channel), [0, 1, 2, 3, 4, 5, 6, 7], 'written in index order');
  t.equal(stats.checkpointBytes, 8 * 4096, 'each counted once');
});

t.test('a window of one chunk: each goes out before the stream waits for the target', async (t) => {
  const clock = new ManualClock();
  const channel = new FakeChannel(clock);
  const stream = new CheckpointStream(channel, emptyStats('crtr', 4 * 4096), clock, quietLog, 1, 0);
  const run = stream.run(new FakeRecorder(4));
  for (let applied = 0; applied < 4; applied++) {
    await settle(clock);
    t.equal(channel.writtenOf('chunk').length, applied + 1, `chunk ${applied} written while the window is full`);
    channel.report({ chunksApplied: applied + 1, checkpointRestored: applied === 3 });
  }
  await run;
  t.same(chunkIndexes(channel), [0, 1, 2, 3]);
});

t.test('a packing error fails the stream, and what followed it is not written', async (t) => {
  const clock = new ManualClock();
  const channel = new HeldChannel(clock);
  const stream = new CheckpointStream(channel, emptyStats('crtr', 8 * 4096), clock, quietLog, 16, 0);
  const run = stream.run(new FakeRecorder(8));
  await settle(clock);
  channel.held[0].release();
  channel.held[1].fail(new CorruptDataError('chunk 1 could not be packed'));
  channel.held[2].release();
  await t.rejects(run, /chunk 1 could not be packed/);
  t.same(chunkIndexes(channel), [0]);
});
