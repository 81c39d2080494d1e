// Migration of a QEMU guest by record/replay (shared/driver/qemu/rr/). Without QEMU: the replay
// log's slicer on a synthetic log of QEMU 7.2's format (cut only after instruction events, in
// any chunking, icounts summed, the part before a snapshot dropped, corrupt logs refused), the
// frames on the stream, the target's checks of what it receives, and the lag and speed figures.
// With the real guest (Debian's kernel and a busybox initramfs under TCG): it boots recording,
// a target replays its log as it arrives over a stream, the guest goes live on the target, and
// its counter goes on with its memory pattern intact; no QEMU is left. Skipped, visibly, where
// qemu-system-x86, linux-image-amd64, busybox-static or qemu-utils is missing.

import { readFileSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import t from 'tap';
import {
  encodeFrame,
  type Frame,
  lags,
  type LogSlice,
  LogSlicer,
  msAtIcount,
  readFrames,
  REPLAY_LOG_HEADER_BYTES,
  ReplayEvent,
  replayLogHeader,
  replaySpeed,
  RrTarget,
  runRrMigration,
  scanEvents,
} from '../shared/driver/qemu/rr/index.js';
import { Random } from '../shared/random.js';
import { parseTicks } from './support/initramfs.js';
import { alive, childQemuPids, guestImageFor, tempDirFor, waitForTicks } from './support/qemu.js';
import { afterTicks, continuityOf, rrMachineOf, skipUnlessRrPackages } from './support/qemu-rr.js';

const skip = skipUnlessRrPackages();

/** Writes events the way QEMU 7.2 does: a kind byte, then big-endian fields and length-prefixed arrays. */
class LogWriter {
  private parts: Array<Buffer<ArrayBufferLike>> = [];
  icount = 0;
  /** Log offsets right after each instruction event, with the icount there. */
  readonly boundaries: Array<[number, number]> = [];
  private offset = REPLAY_LOG_HEADER_BYTES;

  private put(bytes: Buffer<ArrayBufferLike>): void {
    this.parts.push(bytes);
    this.offset += bytes.length;
  }
  event(kind: number, ...fields: Array<{ u8?: number; u32?: number; u64?: number; array?: Buffer }>): this {
    const out: Array<Buffer<ArrayBufferLike>> = [Buffer.from([kind])];
    for (const f of fields) {
      if (f.u8 !== undefined) out.push(Buffer.from([f.u8]));
      if (f.u32 !== undefined) out.push(Buffer.from([f.u32 >>> 24, (f.u32 >>> 16) & 255, (f.u32 >>> 8) & 255, f.u32 & 255]));
      if (f.u64 !== undefined) {
        const b = Buffer.alloc(8);
        b.writeBigUInt64BE(BigInt(f.u64));
        out.push(b);
      }
      if (f.array !== undefined) {
        const length = Buffer.alloc(4);
        length.writeUInt32BE(f.array.length);
        out.push(length, f.array);
      }
    }
    this.put(Buffer.concat(out));
    return this;
  }
  instructions(count: number): this {
    this.event(ReplayEvent.INSTRUCTION, { u32: count });
    this.icount += count;
    this.boundaries.push([this.offset, this.icount]);
    return this;
  }
  /** The events after the header. */
  body(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** A log with every kind of event this guest's logs hold, and the rarer ones with payloads. */
function syntheticLog(random: Random, rounds: number): LogWriter {
  const log = new LogWriter();
  const E = ReplayEvent;
  log.event(E.CHECKPOINT_FIRST + 7).event(E.CLOCK_FIRST, { u64: 123_456_789 });
  for (let i = 0; i < rounds; i++) {
    log.instructions(1 + random.nextInt(50_000));
    const extra = random.nextInt(8);
    if (extra === 0) log.event(E.CLOCK_LAST, { u64: 1e12 + i }).event(E.CHECKPOINT_FIRST + 4);
    if (extra === 1) log.event(E.INTERRUPT).event(E.EXCEPTION);
    if (extra === 2) log.event(E.CHAR_WRITE, { u32: 1 }, { u32: 0 });
    if (extra === 3) log.event(E.ASYNC_CHAR_READ, { u8: 0, array: Buffer.from(`read ${i}`) });
    if (extra === 4) log.event(E.RANDOM, { u32: 16, array: Buffer.alloc(16, i & 255) });
    if (extra === 5) log.event(E.ASYNC_BH, { u64: i }).event(E.ASYNC_BLOCK, { u64: i });
    if (extra === 6) log.event(E.ASYNC_INPUT, { u32: 0 }, { u32: 1 }, { u32: 30 }, { u8: 1 }).event(E.ASYNC_INPUT_SYNC);
    if (extra === 7) log.event(E.ASYNC_NET, { u8: 0, u32: 0, array: Buffer.alloc(60, 7) });
  }
  log.event(E.SHUTDOWN_FIRST + 2).event(E.SHUTDOWN_FIRST + 4).event(E.END);
  return log;
}

t.test('the slicer cuts only after instruction events, whatever the chunks, and sums the icount', async (t) => {
  const seed = Random.seedFromOs();
  t.comment(`seed ${seed}`);
  const random = new Random(seed);
  const log = syntheticLog(random, 3000);
  const body = log.body();
  const boundaryAt = new Map(log.boundaries);
  for (const chunkMax of [1, 7, 4096, body.length]) {
    const slicer = new LogSlicer({ startOffset: REPLAY_LOG_HEADER_BYTES, startIcount: 0, sliceBytesMax: 4096, pendingBytesMax: 1 << 20 });
    const slices: LogSlice[] = [];
    for (let at = 0; at < body.length; ) {
      const n = Math.min(body.length - at, 1 + random.nextInt(chunkMax));
      slices.push(...slicer.push(body.subarray(at, at + n)));
      at += n;
    }
    t.ok(slicer.ended, `chunks of up to ${chunkMax} bytes: the END event seen`);
    t.same(Buffer.concat(slices.map((s) => s.data)), body, 'the slices put together are the log');
    t.same(slices.map((s) => s.seq), slices.map((_, i) => i), 'numbered in order');
    const inner = slices.slice(0, -1);
    t.ok(inner.every((s) => boundaryAt.get(s.offset + s.data.length) === s.icountEnd), 'each slice but the last ends right after an instruction event, with the icount there');
    t.ok(inner.every((s, i) => s.offset + s.data.length === slices[i + 1]!.offset), 'each starts where the one before ended');
    t.ok(slices.slice(0, -1).every((s) => s.data.length <= 4096), "slices stay within their bound (no event here is larger)");
    const last = slices.at(-1)!;
    t.ok(last.final && last.icountEnd === log.icount, `the last slice holds END and the log's icount ${log.icount}`);
  }
});

t.test('a slicer for a snapshot taken at icount X sends the log from a boundary before X', async (t) => {
  const log = syntheticLog(new Random(7), 2000);
  const body = log.body();
  const [, x] = log.boundaries[1200]!;
  const slicer = new LogSlicer({ startOffset: REPLAY_LOG_HEADER_BYTES, startIcount: 0, sliceBytesMax: 2048, pendingBytesMax: 1 << 20, dropBelowIcount: x + 1 });
  const slices: LogSlice[] = [];
  for (let at = 0; at < body.length; at += 3000) slices.push(...slicer.push(body.subarray(at, at + 3000)));
  const first = slices[0]!;
  const startIcount = first.offset === REPLAY_LOG_HEADER_BYTES ? 0 : new Map(log.boundaries).get(first.offset)!;
  t.ok(slicer.slicesDropped > 0, `${slicer.slicesDropped} slices before the snapshot dropped`);
  t.ok(startIcount <= x && first.icountEnd >= x + 1, `the first slice sent starts at icount ${startIcount} <= ${x} and reaches ${first.icountEnd}`);
  t.same(Buffer.concat(slices.map((s) => s.data)), body.subarray(first.offset - REPLAY_LOG_HEADER_BYTES), 'from there on, the whole log');
});

t.test('a log QEMU 7.2 would not write is refused, with its offset', async (t) => {
  const slicer = () => new LogSlicer({ startOffset: REPLAY_LOG_HEADER_BYTES, startIcount: 0, sliceBytesMax: 4096, pendingBytesMax: 8192 });
  t.throws(() => slicer().push(Buffer.from([0, 0, 0, 0, 5, 200])), { name: 'CorruptDataError', message: /kind 200 at offset 17/ }, 'an unknown event kind');
  t.throws(() => slicer().push(Buffer.from([0, 0, 0, 0, 5, ReplayEvent.END, 0])), { name: 'CorruptDataError', message: /1 bytes after its END event/ }, 'bytes after END');
  t.throws(() => slicer().push(Buffer.from([0, 0, 0, 0, 0])), { name: 'CorruptDataError', message: /0 instructions/ }, 'an instruction event of none');
  t.throws(() => slicer().push(Buffer.from([ReplayEvent.CHAR_READ_ALL, 0x7f, 0, 0, 0])), { name: 'LimitExceededError' }, 'an array past its bound');
  t.throws(() => slicer().push(Buffer.alloc(9000, ReplayEvent.INTERRUPT)), { name: 'LimitExceededError', message: /since its last instruction event/ }, 'too long without an instruction event to cut at');
  const scan = scanEvents(Buffer.from([0, 0, 0, 0, 9, ReplayEvent.CLOCK_FIRST, 1, 2]), 0, 8, 100, (at) => at);
  t.same([scan.parsedTo, scan.icount, scan.lastInstructionEnd], [5, 109, 5], 'an event cut short waits for its bytes');
  t.same(replayLogHeader().toString('hex'), '00e0200c0000000000000000', 'the header a replayer checks');
});

t.test('frames cross a stream cut anywhere; a corrupt or cut stream is refused', async (t) => {
  const sent: Frame[] = [
    { header: { type: 'checkpoint', tag: 'init', icount: 0, bytes: 3 }, payload: Buffer.alloc(0) },
    { header: { type: 'checkpoint-data' }, payload: Buffer.from('abc') },
    { header: { type: 'slice', seq: 0, offset: 12, icountEnd: 99, final: true }, payload: Buffer.alloc(70_000, 1) },
  ];
  const bytes = Buffer.concat(sent.map((f) => encodeFrame(f.header, f.payload)));
  const stream = new PassThrough();
  for (let at = 0; at < bytes.length; at += 333) stream.write(bytes.subarray(at, at + 333));
  stream.end();
  const received: Frame[] = [];
  for await (const frame of readFrames(stream)) received.push(frame);
  t.same(received, sent, 'the same frames');
  const read = async (data: Buffer) => {
    const s = new PassThrough();
    s.end(data);
    for await (const _ of readFrames(s)) void _;
  };
  await t.rejects(read(bytes.subarray(0, bytes.length - 1)), { name: 'CorruptDataError', message: /ended inside a frame/ });
  const badHeader = encodeFrame({ type: 'slice', seq: -1, offset: 0, icountEnd: 0, final: false } as never);
  await t.rejects(read(badHeader), { name: 'CorruptDataError', message: /'seq'/ });
  const huge = Buffer.alloc(8);
  huge.writeUInt32BE(1 << 30, 4);
  await t.rejects(read(huge), { name: 'CorruptDataError', message: /limits are/ });
});

t.test('the target refuses what comes out of order or damaged, before any QEMU starts', async (t) => {
  const dir = tempDirFor(t, 'vmm-qemu-rr-target-');
  const target = () => new RrTarget({ machine: rrMachineOf({ kernel: '/nonexistent', initrd: '/nonexistent', append: '', patternBytes: 0, patternMd5: '' }), dir, now: () => performance.now(), connectTimeoutMs: 1000, commandTimeoutMs: 1000, stopGraceMs: 1000, stepTimeoutMs: 1000, kickMs: 1, liveKickMs: 50 });
  const streamOf = (...frames: Buffer[]) => {
    const s = new PassThrough();
    s.end(Buffer.concat(frames));
    return s;
  };
  const checkpoint = [encodeFrame({ type: 'checkpoint', tag: 'init', icount: 0, bytes: 3 }), encodeFrame({ type: 'checkpoint-data' }, Buffer.from('abc'))];
  const sha = '9a0b4e2f6e3c4e5e27f1a7e0ab1c7b8c0f0b3a0e2c1d4e5f60718293a4b5c6d7';
  await t.rejects(target().run(streamOf(...checkpoint, encodeFrame({ type: 'checkpoint-end', sha256: sha }))), { name: 'CorruptDataError', message: /sha256/ }, 'a checkpoint whose digest differs');
  const good = encodeFrame({ type: 'checkpoint-end', sha256: 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad' });
  await t.rejects(target().run(streamOf(encodeFrame({ type: 'slice', seq: 0, offset: 12, icountEnd: 0, final: false }, Buffer.from([1])))), { name: 'InvalidStateError', message: /before the checkpoint/ });
  await t.rejects(target().run(streamOf(...checkpoint, good, encodeFrame({ type: 'slice', seq: 1, offset: 12, icountEnd: 0, final: false }, Buffer.from([1])))), { name: 'UnitOrderError', message: /slice 1 arrived where slice 0 was due/ });
  await t.rejects(target().run(streamOf(...checkpoint, good)), { name: 'UnavailableError', message: /ended before the log's last slice/ }, 'a stream that ends early');
  t.same(childQemuPids(), [], 'no QEMU was started');
});

t.test('lag and replay speed from the samples of both ends', async (t) => {
  const source = [
    { ms: 0, icount: 0 },
    { ms: 1000, icount: 1000 },
    { ms: 2000, icount: 3000 },
  ];
  t.equal(msAtIcount(source, 2000), 1500, 'interpolated between samples');
  t.equal(msAtIcount(source, 5000), null, 'outside them');
  const steps = [{ fromIcount: 0, toIcount: 1000, startMs: 500, endMs: 1500 }];
  t.same(lags(source, steps), [{ atMs: 1500, icount: 1000, ms: 500 }], 'at 1.5 s the source was at 2000, and had reached 1000 at 1 s');
  t.same(replaySpeed(source, [{ fromIcount: 1000, toIcount: 3000, startMs: 2000, endMs: 2250 }]), { instructions: 2000, recordMs: 1000, replayMs: 250, ratio: 4 });
});

t.test('a guest that boots recording is replayed on a target as its log arrives and goes on live there', { skip }, async (t) => {
  const image = guestImageFor(t);
  const dir = tempDirFor(t, 'vmm-qemu-rr-');
  const migration = await runRrMigration({ machine: rrMachineOf(image), dir, checkpoint: 'init', startWhen: afterTicks(1), startTimeoutMs: 120_000, followMsMin: 0, followMsMax: 60_000, lagMsMax: 1000 });
  t.teardown(() => migration.close());
  const { report, source, target } = migration;
  const live = target.live!;
  t.comment(`checkpoint ${report.source.checkpoint.bytes} bytes, log ${report.source.logBytes} bytes in ${report.source.slicesSent} slices, downtime ${Math.round(report.downtimeMs)} ms, total ${Math.round(report.totalMs)} ms, replay backlog ${report.speed.backlog.ratio.toFixed(2)}x following ${report.speed.following.ratio.toFixed(2)}x`);

  t.equal(report.target.finalIcount, report.stopIcount - 1, 'the target replayed to one instruction short of where the source stopped');
  t.equal(report.target.liveSnapshot?.icount, report.target.finalIcount, 'and handed that state to the live QEMU');
  t.same(readFileSync(target.logFile), readFileSync(source.logFile), "the target's log is the source's, header and all");
  t.equal(source.qemu.process.exitStatus?.code, 0, 'the source QEMU ended, having written its log');

  const before = parseTicks(live.process.serial.text()).counters.length;
  await waitForTicks(live.process.serial, (ticks) => ticks.counters.length >= before + 2);
  const c = continuityOf(source.qemu.process.serial.text(), target.replayConsole, live.process.serial.text());
  t.comment(`source ticks to ${c.sourceLast}, replayed to ${c.replayLast}, live ${c.liveFirst}..${c.liveLast}`);
  t.equal(c.targetBoots.length, 1, 'the target replayed the boot');
  t.same(c.targetBoots, c.sourceBoots, "the source's boot, no other");
  t.ok(c.consecutive, 'the counter goes on one by one across the move, none repeated or skipped');
  t.ok(c.liveLast > c.sourceLast, `the live guest ticks past the source's last tick ${c.sourceLast}`);
  t.equal(c.bad, 0, 'the memory pattern is intact');
  t.ok(c.continued, 'the guest continued');

  const pids = [source.qemu.process.pid, target.replay!.process.pid, live.process.pid];
  await migration.close();
  t.notOk(pids.some(alive), 'every QEMU of the migration is gone');
  t.same(childQemuPids(), [], 'none left behind');
});
