// The source's transfer channel resuming on a new stream, over fake streams on a manual clock: a
// write waiting for a stream that broke is not left waiting forever (what it sent goes again on
// the new stream), and while the guest is stopped the attempts do not back off.
import { EventEmitter } from 'node:events';
import t from 'tap';
import { ManualClock } from '../shared/clock.js';
import { UnavailableError } from '../shared/errors.js';
import { pb } from '../shared/transport/grpc.js';
import { GrpcTransferChannel, type TransferCall } from '../source-agent/channel.js';

/** A duplex call that records what is written and takes it (or not) as told. */
class FakeCall extends EventEmitter {
  readonly written: unknown[] = [];
  accepting = true;
  cancelled = false;
  write(message: unknown, callback?: () => void): boolean {
    this.written.push(message);
    callback?.();
    return this.accepting;
  }
  cancel(): void {
    this.cancelled = true;
  }
  end(): void {}
  /** The transport failed, as grpc-js reports a lost connection. */
  breakLink(): void {
    this.emit('error', Object.assign(new Error('Connection dropped'), { code: 14, details: 'Connection dropped', metadata: new (class { getMap() { return {}; } get() { return []; } })() }));
  }
  answer(message: object): void {
    this.emit('data', pb.TargetMessage.create(message as never));
  }
}

function channelOn(clock: ManualClock, first: FakeCall, reopen: () => FakeCall, urgent: () => boolean) {
  const controller = new AbortController();
  const channel = new GrpcTransferChannel(first as unknown as TransferCall, {
    compress: false,
    pingIntervalMs: 60_000,
    resumeWindowMs: 10_000,
    address: 'fake',
    signal: controller.signal,
    ping: async () => {},
    clock,
    reopen: () => reopen() as unknown as TransferCall,
    urgent,
  });
  channel.send({ open: { reservationId: 'r', migrationId: 'm', firstSequence: 0, method: 'precopy' } } as never);
  return channel;
}

t.test('a write waiting for a stream to drain ends when a resume replaces the stream; the message goes again on the new one', async (t) => {
  const clock = new ManualClock();
  const first = new FakeCall();
  const second = new FakeCall();
  const channel = channelOn(clock, first, () => second, () => false);
  first.accepting = false;
  let written = false;
  const write = channel.write(channel.pack({ kind: 'chunk', index: 0, final: false, memoryBytesCovered: 4096 }, new Uint8Array(4096)), 0).then(() => (written = true));
  await clock.advance(10);
  t.notOk(written, 'the write waits while the stream holds too much');
  first.breakLink();
  await clock.advance(0);
  t.ok(channel.linkDown, 'the broken stream is being resumed');
  t.equal(second.written.length, 1, 'the new stream carries the Resume');
  second.answer({ resumed: { messagesReceived: 0 } });
  await clock.advance(300);
  await write;
  t.ok(written, 'the waiting write ended: the old stream will never drain');
  t.notOk(channel.linkDown, 'resumed');
  t.equal(second.written.length, 2, 'the chunk the target had not counted was sent again on the new stream');
  t.equal(channel.resumes.resumes, 1);
  channel.close();
});

for (const urgent of [false, true]) {
  t.test(`resume attempts while the guest ${urgent ? 'is stopped follow each other within 50 ms' : 'runs back off'}`, async (t) => {
    const clock = new ManualClock();
    const first = new FakeCall();
    let reopened = 0;
    const refused = () => {
      reopened++;
      const call = new FakeCall();
      // The connection is refused: the new stream fails at once.
      setImmediate(() => call.breakLink());
      return call;
    };
    const channel = channelOn(clock, first, refused, () => urgent);
    first.breakLink();
    for (let ms = 0; ms < 1_000; ms += 10) await clock.advance(10);
    if (urgent) t.ok(reopened >= 15, `${reopened} attempts in 1 s`);
    else t.ok(reopened <= 5, `${reopened} attempts in 1 s (backing off from 100 ms)`);
    channel.close();
  });
}
