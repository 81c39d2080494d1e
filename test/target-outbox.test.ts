// The target's outbox (target-agent/outbox.ts) on a stream that takes what it is given only when
// the test says: above the soft bound progress is coalesced and pongs dropped, past the hard bound
// the transfer fails, and pings past the rate are not answered.
import t from 'tap';
import { ManualClock } from '../shared/clock.js';
import type { LimitExceededError } from '../shared/errors.js';
import { pb, type Preserialized } from '../shared/transport/grpc.js';
import { OUTBOX, Outbox } from '../target-agent/outbox.js';
import type { TransferStream } from '../target-agent/session-host.js';

/** A stream whose writes wait until flush(): a source that does not read. */
function slowStream() {
  const pending: Array<() => void> = [];
  const kinds: string[] = [];
  const stream = {
    on: () => stream,
    write(message: Preserialized, callback?: () => void) {
      kinds.push(String(pb.TargetMessage.decode(message.bytes).body));
      if (callback) pending.push(callback);
      return false;
    },
    end: () => {},
    emit: () => true,
  } as unknown as TransferStream;
  return { stream, kinds, flush: () => pending.splice(0).forEach((callback) => callback()) };
}

t.test('above the soft bound progress waits for the source to read, and past the hard bound the transfer fails', async (t) => {
  const clock = new ManualClock();
  const { stream, kinds, flush } = slowStream();
  const failures: LimitExceededError[] = [];
  let drained = 0;
  const outbox = new Outbox(stream, clock, { overflow: (error) => failures.push(error), drained: () => drained++ });
  const pages = Array.from({ length: 4096 }, (_, i) => i + 1_000_000);
  while (outbox.buffered <= OUTBOX.softBytesMax) outbox.send({ pageRequest: { pages } });
  const written = kinds.length;
  outbox.send({ progress: { unitsReceived: 1 } });
  outbox.send({ pong: { sentMs: 1 } });
  t.equal(kinds.length, written, 'neither progress nor a pong is queued above the soft bound');
  flush();
  t.equal(outbox.buffered, 0);
  t.equal(drained, 1, 'once read, the held report is asked for again');
  while (failures.length === 0) outbox.send({ pageRequest: { pages } });
  t.ok(outbox.buffered > OUTBOX.hardBytesMax);
  t.match(failures[0], { code: 'RESOURCE_EXHAUSTED', reason: 'PEER_NOT_READING' });
});

t.test(`pings are answered ${OUTBOX.pongsPerSec} a second at most; a flood fails the transfer`, async (t) => {
  const clock = new ManualClock();
  const { stream, kinds, flush } = slowStream();
  const failures: LimitExceededError[] = [];
  const outbox = new Outbox(stream, clock, { overflow: (error) => failures.push(error), drained: () => {} });
  for (let i = 0; i < 100; i++) outbox.send({ pong: { sentMs: i } });
  flush();
  t.equal(kinds.length, OUTBOX.pongBurst, 'a burst');
  await clock.advance(1_000);
  for (let i = 0; i < 100; i++) outbox.send({ pong: { sentMs: i } });
  t.equal(kinds.length, OUTBOX.pongBurst + OUTBOX.pongsPerSec, 'then the rate');
  t.same(failures, []);
  for (let i = 0; i < OUTBOX.pingsOverRateMax; i++) outbox.send({ pong: { sentMs: i } });
  t.match(failures[0], { code: 'RESOURCE_EXHAUSTED', reason: 'LIMIT_EXCEEDED' });
});
