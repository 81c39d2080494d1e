// The source's retransmit log (source-agent/retransmit.ts): what was sent and not yet counted by
// the target, kept for a resume, let go as the target's count grows.
import t from 'tap';
import { pb } from '../shared/transport/grpc.js';
import { RetransmitLog } from '../source-agent/retransmit.js';

const message = (i: number) => pb.SourceMessage.create({ stopDecision: { granted: false, reason: `m${i}` } });

t.test('messages are numbered in order, kept until counted, and their buffers given back then', async (t) => {
  const log = new RetransmitLog();
  const released: number[] = [];
  for (let i = 1; i <= 5; i++) t.equal(log.add(message(i), 100, () => released.push(i)), i);
  t.equal(log.pending, 5);
  t.equal(log.bytes, 500);
  log.ack(3);
  t.same(released, [1, 2, 3], 'released as counted, in order');
  t.equal(log.pending, 2);
  t.equal(log.bytes, 200);
  log.ack(2);
  t.equal(log.acked, 3, 'a count that goes back is ignored');
  log.ack(9);
  t.equal(log.acked, 3, 'a count beyond what was sent is ignored');
  const again = log.after(3);
  t.same(
    again.map((e) => e.seq),
    [4, 5],
  );
  t.equal(log.resentMessages, 2);
  t.equal(log.resentBytes, 200);
  log.clear();
  t.same(released, [1, 2, 3, 4, 5], 'every buffer given back when the transfer ends');
  t.equal(log.pending, 0);
});

t.test('a long transfer does not grow the log: counted entries are compacted away', async (t) => {
  const log = new RetransmitLog();
  for (let i = 1; i <= 100_000; i++) {
    log.add(message(i), 10);
    if (i % 8 === 0) log.ack(i - 4);
  }
  t.equal(log.pending, 4);
  t.ok((log as unknown as { kept: unknown[] }).kept.length < 4_000, 'the array is compacted');
  t.same(
    log.after(99_996).map((e) => e.seq),
    [99_997, 99_998, 99_999, 100_000],
  );
});
