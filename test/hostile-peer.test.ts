// The target agent against hostile and broken sources: a raw gRPC client (test/support/
// hostile-source.ts) sends what no correct source would, and each case must end its call with
// the precise status and reason at the first message that shows the fault, free the reservation at
// once (Capacity shows the memory back), and leave the agent answering its health service.
import t, { type Test } from 'tap';
import { agentOptionsFromArgs, startAgent } from '../cli/agent.js';
import { sealChunk } from '../shared/driver/sim/checkpoint.js';
import { SimDriver } from '../shared/driver/sim/driver.js';
import { MachineState } from '../shared/driver/sim/machine.js';
import { encodeUnit, peekUnitHeader } from '../shared/driver/sim/unit-codec.js';
import type { CheckpointChunk } from '../shared/driver/types.js';
import { xxh64 } from '../shared/hash.js';
import { grpc } from '../shared/transport/grpc.js';
import { startAgentProcess, stopAgentProcess } from '../cli/agent-process.js';
import { chunkMessage, encoded, type EndStatus, floodOfPings, healthLatencyMs, MiB, payloadMessage, RawPeer, rawHttp2Call, rssMiB, SourceSide, unitMessage } from './support/hostile-source.js';

const TRANSFER_PATH = '/vmmigrate.v1.Migration/Transfer';

interface Target {
  address: string;
  peer: RawPeer;
  source: SourceSide;
}

/** A target agent in this process with `limits` laid over its configuration, a raw peer, and a source host. */
async function startTarget(t: Test, limits: Record<string, number> = {}, memoryMib = 4096): Promise<Target> {
  const options = agentOptionsFromArgs('target', ['--listen', '127.0.0.1:0', '--log-level', 'silent', '--insecure-plaintext', '--memory-mib', String(memoryMib)]);
  Object.assign(options.config.limits, limits);
  const agent = await startAgent(options);
  const peer = new RawPeer(agent.address);
  const source = new SourceSide();
  t.teardown(async () => {
    peer.close();
    source.shutdown();
    await agent.shutdown('test over');
  });
  return { address: agent.address, peer, source };
}

/** `ended` is `code` with `reason`, and the target holds no reservation any more and still answers. */
async function expectEnd(t: Test, target: Target, ended: EndStatus | Promise<EndStatus>, code: grpc.status, reason: string, what: string): Promise<void> {
  const status = await ended;
  t.equal(status.name, grpc.status[code], `${what}: ${grpc.status[code]} (got ${status.name}: ${status.details.slice(0, 300)})`);
  if (reason !== '') t.equal(status.reason, reason, `${what}: reason ${reason}`);
  t.equal(await target.peer.reserved(), 0, `${what}: the reservation is freed`);
  t.ok((await healthLatencyMs(target.address)) < 2_000, `${what}: the agent still answers its health service`);
}

function withWord(chunk: CheckpointChunk, offset: number, value: number): CheckpointChunk {
  const bytes = chunk.bytes.slice();
  new DataView(bytes.buffer).setUint32(offset, value, true);
  return { ...chunk, bytes: sealChunk(bytes) };
}

t.test('a pre-copy machine state whose position is NaN is DATA_LOSS, and the agent lives on', async (t) => {
  const target = await startTarget(t);
  const guest = target.source.guest();
  const transfer = await target.peer.open(guest, 'precopy');
  const state = new MachineState();
  state.position = Number.NaN;
  await transfer.send(payloadMessage({ kind: 'machineState' }, state.serialize()));
  await transfer.send(encoded({ commit: { digest: 'x' } }));
  await expectEnd(t, target, transfer.ended, grpc.status.DATA_LOSS, 'CORRUPT_DATA', 'NaN position');
});

t.test("a bug in a guest's runner suspends that guest, and the host goes on", async (t) => {
  const failures: string[] = [];
  const driver = new SimDriver({ replicaMemory: 'lazy', segmentPoolBytesMax: 0, guest: { onRunnerFailure: (guestId, error) => failures.push(`${guestId}: ${String(error)}`) } });
  t.teardown(() => driver.shutdown());
  const guest = driver.createGuest({ id: 'buggy', profile: 'idle', memoryBytes: 64 * MiB, start: false });
  // A state no unit runs from, as a NaN position was before machine states were checked.
  guest.machine.state.position = Number.NaN;
  guest.start();
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.match(failures, [/^buggy: AssertionFailure: unit 0 starts at NaN/]);
  t.equal(guest.describe().state, 'suspended');
});

t.test('a truncated message is INVALID_ARGUMENT (MALFORMED_MESSAGE), on a transfer and before one', async (t) => {
  const target = await startTarget(t);
  const guest = target.source.guest();
  const { chunks } = await target.source.checkpoint(guest);
  const whole = chunkMessage(chunks[0]);
  const transfer = await target.peer.open(target.source.guest());
  await transfer.send(whole.subarray(0, whole.length - 100));
  await expectEnd(t, target, transfer.ended, grpc.status.INVALID_ARGUMENT, 'MALFORMED_MESSAGE', 'truncated chunk on a transfer');
  const raw = await rawHttp2Call(target.address, TRANSFER_PATH, [{ bytes: whole.subarray(0, 40) }]);
  await expectEnd(t, target, raw, grpc.status.INVALID_ARGUMENT, 'MALFORMED_MESSAGE', 'truncated first message');
});

t.test('a corrupt grpc-compressed frame is DATA_LOSS (CORRUPT_DATA)', async (t) => {
  const target = await startTarget(t);
  const garbage = Buffer.from('this is not a gzip stream at all, not even close');
  const raw = await rawHttp2Call(target.address, TRANSFER_PATH, [{ bytes: garbage, compressed: true }], { 'grpc-encoding': 'gzip' });
  await expectEnd(t, target, raw, grpc.status.DATA_LOSS, 'CORRUPT_DATA', 'gzip frame');
  const deflate = await rawHttp2Call(target.address, '/vmmigrate.v1.Migration/GetCapacity', [{ bytes: garbage, compressed: true }], { 'grpc-encoding': 'deflate' });
  await expectEnd(t, target, deflate, grpc.status.DATA_LOSS, 'CORRUPT_DATA', 'deflate frame on a unary call');
});

t.test('a commit sent twice ends the stream with a status and frees the reservation', async (t) => {
  const target = await startTarget(t);
  // Twice before anything to commit.
  const early = await target.peer.open(target.source.guest());
  await early.send(encoded({ commit: { digest: 'a' } }));
  await early.send(encoded({ commit: { digest: 'a' } }));
  await expectEnd(t, target, early.ended, grpc.status.FAILED_PRECONDITION, 'PROTOCOL_VIOLATION', 'two commits after Open');
  // Twice behind the final unit: the first is held until the final unit is replayed.
  const guest = target.source.guest();
  const { chunks, units, digest, firstSequence } = await target.source.checkpoint(guest);
  const transfer = await target.peer.open(guest, 'crtr', firstSequence);
  for (const chunk of chunks) await transfer.send(chunkMessage(chunk));
  for (const unit of units) await transfer.send(unitMessage(unit));
  await transfer.send(encoded({ commit: { digest } }));
  await transfer.send(encoded({ commit: { digest } }));
  // Either the first was held and the second refused, or the first was done (the guest runs here)
  // before the second came, which then finds the stream ended: never a stream left without a status.
  const status = await transfer.ended;
  if (status.name === 'OK') {
    t.same(transfer.kinds().filter((k) => k !== 'progress' && k !== 'stopRequest'), ['commitResult', 'activated'], 'two commits behind the final unit: the first committed');
    t.equal(await target.peer.reserved(), 64 * MiB, 'and the guest runs here');
  } else {
    t.equal(status.name, 'FAILED_PRECONDITION', `two commits behind the final unit: FAILED_PRECONDITION (${status.details})`);
    t.equal(await target.peer.reserved(), 0, 'two commits behind the final unit: nothing reserved');
  }
});

t.test('a chunk with an over-long varint is INVALID_ARGUMENT', async (t) => {
  const target = await startTarget(t);
  const transfer = await target.peer.open(target.source.guest());
  // SourceMessage.chunk (field 2) holding CheckpointChunk.index (field 1) as an 11-byte varint.
  const inner = Buffer.from([0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
  await transfer.send(Buffer.concat([Buffer.from([0x12, inner.length]), inner]));
  await expectEnd(t, target, transfer.ended, grpc.status.INVALID_ARGUMENT, 'MALFORMED_MESSAGE', 'over-long varint');
});

t.test('every u32 of a checkpoint chunk set to its largest value ends the transfer at that chunk', async (t) => {
  const target = await startTarget(t);
  const guest = target.source.guest();
  const { chunks, firstSequence } = await target.source.checkpoint(guest);
  for (const offset of [8, 12, 16, 20]) {
    const transfer = await target.peer.open(target.source.guest(), 'crtr', firstSequence);
    const started = performance.now();
    await transfer.send(chunkMessage(withWord(chunks[0], offset, 0xffffffff)));
    const status = await transfer.ended;
    t.not(status.name, 'OK', `word at ${offset}: refused (${status.name}: ${status.details.slice(0, 200)})`);
    t.ok(performance.now() - started < 5_000, `word at ${offset}: refused at once`);
    t.equal(await target.peer.reserved(), 0, `word at ${offset}: nothing reserved`);
  }
  // The chunk's own count of the memory it covers, past the guest's size.
  const covered = await target.peer.open(target.source.guest(), 'crtr', firstSequence);
  await covered.send(chunkMessage({ ...chunks[0], memoryBytesCovered: 2 ** 40 }));
  await expectEnd(t, target, covered.ended, grpc.status.INVALID_ARGUMENT, 'INVALID_FIELD', 'memory_bytes_covered of 1 TiB');
  // The final chunk's page count and state length too.
  const last = chunks.length - 1;
  for (const offset of [12, 16]) {
    const transfer = await target.peer.open(target.source.guest(), 'crtr', firstSequence);
    for (const chunk of chunks.slice(0, last)) await transfer.send(chunkMessage(chunk));
    await transfer.send(chunkMessage(withWord(chunks[last], offset, 0xffffffff)));
    await expectEnd(t, target, transfer.ended, grpc.status.DATA_LOSS, 'CORRUPT_DATA', `state chunk word at ${offset}`);
  }
});

t.test('a chunk whose bitmap was changed is refused at that chunk', async (t) => {
  const target = await startTarget(t);
  const guest = target.source.guest();
  const { chunks, firstSequence } = await target.source.checkpoint(guest);
  const chunk = chunks[0];
  // Move one present page's bit onto a page the chunk elides (same count of pages present).
  const bitmap = chunk.bytes.subarray(24, 24 + 512);
  let from = -1;
  let to = -1;
  for (let i = 0; i < 4096 && (from < 0 || to < 0); i++) {
    const set = (bitmap[i >>> 3] & (1 << (i & 7))) !== 0;
    if (set && from < 0) from = i;
    if (!set && to < 0) to = i;
  }
  t.ok(from >= 0 && to >= 0, `the chunk has present (${from}) and elided (${to}) pages`);
  const bytes = chunk.bytes.slice();
  bytes[24 + (from >>> 3)] &= ~(1 << (from & 7));
  bytes[24 + (to >>> 3)] |= 1 << (to & 7);
  const transfer = await target.peer.open(target.source.guest(), 'crtr', firstSequence);
  await transfer.send(chunkMessage({ ...chunk, bytes: sealChunk(bytes) }));
  await expectEnd(t, target, transfer.ended, grpc.status.DATA_LOSS, 'CORRUPT_DATA', 'a checkpoint chunk with a moved bitmap bit');

  // A pre-copy page batch of four pages present and four elided, whose bitmap (after 16 bytes of
  // header and 8 page numbers) has a bit moved the same way.
  const source = target.source.guest();
  const batch = source.pages.encodePages(Uint32Array.of(from, from + 1, from + 2, from + 3, to, to + 1, to + 2, to + 3)).slice();
  const at = 16 + 4 * 8;
  const present = batch[at];
  t.ok(present !== 0 && present !== 0xff, `page batch: some of the first 8 pages present, not all (${present.toString(2)})`);
  batch[at] = (present << 1) | (present >>> 7);
  const view = new DataView(batch.buffer);
  view.setBigUint64(batch.length - 8, xxh64(batch.subarray(0, batch.length - 8)), true);
  const precopy = await target.peer.open(source, 'precopy');
  await precopy.send(payloadMessage({ kind: 'pages', round: 0, pageCount: 8 }, batch));
  await expectEnd(t, target, precopy.ended, grpc.status.DATA_LOSS, 'CORRUPT_DATA', 'a page batch with a moved bitmap bit');
});

t.test('a unit resealed with a page-write count of 2^32-1 is refused at once', async (t) => {
  const target = await startTarget(t);
  const guest = target.source.guest();
  const { chunks, units, firstSequence } = await target.source.checkpoint(guest);
  const transfer = await target.peer.open(guest, 'crtr', firstSequence);
  for (const chunk of chunks) await transfer.send(chunkMessage(chunk));
  const header = peekUnitHeader(units[0].bytes);
  const bad = encodeUnit({ ...header, final: false, guestNs: 10e6, instructionCount: 1000, pageWriteCount: 0xffffffff }, []);
  const started = performance.now();
  await transfer.send(unitMessage({ ...units[0], final: false, bytes: bad }));
  await expectEnd(t, target, transfer.ended, grpc.status.DATA_LOSS, 'CORRUPT_DATA', 'page-write count 2^32-1');
  t.ok(performance.now() - started < 5_000, 'refused at once');
});

t.test('a source that goes silent after Open is cut at the idle timeout (DEADLINE_EXCEEDED)', async (t) => {
  const target = await startTarget(t, { reservationTimeoutMs: 2_000, transferIdleTimeoutMs: 1_500 });
  const transfer = await target.peer.open(target.source.guest());
  t.equal(await target.peer.reserved(), 64 * MiB, 'reserved while the transfer is open');
  const started = performance.now();
  await expectEnd(t, target, transfer.ended, grpc.status.DEADLINE_EXCEEDED, 'PEER_IDLE', 'silent after Open');
  t.ok(performance.now() - started < 4_000, 'cut within the idle timeout and a bit');
});

t.test('a peer cannot hold more than its share of the host (RESOURCE_EXHAUSTED), others still can', async (t) => {
  // A transfer cancelled without an Abort may be a link lost: it waits its resume window (1 s here) for the source.
  const target = await startTarget(t, { peerMemoryPercent: 25, peerTransfersMax: 6, resumeWindowMs: 1_000 }, 1024);
  const transfers = [];
  for (let i = 0; i < 4; i++) transfers.push(await target.peer.open(target.source.guest()));
  t.equal(await target.peer.reserved(), 256 * MiB, 'four 64 MiB guests: 25% of 1 GiB');
  const refused = await target.peer.reserve(target.source.guest()).then(
    () => null,
    (error: { code?: string; reason?: string }) => error,
  );
  t.equal(refused?.code, 'RESOURCE_EXHAUSTED', 'the fifth is refused');
  t.equal(refused?.reason, 'PEER_QUOTA_EXCEEDED', 'by the per-peer quota');
  // Another peer (another loopback address) still has room.
  const other = await target.peer.reserveFrom('127.0.0.2', target.source.guest());
  t.equal(other.name, 'OK', `another peer reserves (${other.details})`);
  // Streams: four hold reservations, two more may be open, then none.
  const extra = [target.peer.transfer(), target.peer.transfer(), target.peer.transfer()];
  await Promise.all(extra.map((transfer) => transfer.send({ ping: { sentMs: 1 } })));
  const third = await extra[2].ended;
  t.equal(third.name, 'RESOURCE_EXHAUSTED', `a seventh transfer stream of the peer is refused (${third.details})`);
  t.equal(third.reason, 'PEER_QUOTA_EXCEEDED');
  for (const transfer of extra.slice(0, 2)) transfer.cancel();
  for (const transfer of transfers) transfer.cancel();
  for (const transfer of transfers) await transfer.ended;
  await new Promise((resolve) => setTimeout(resolve, 1_300));
  t.equal(await target.peer.reserved(), 64 * MiB, "cancelled transfers free their reservations once their resume window passed (the other peer's is left)");
});

t.test('a flood of pings that never reads is ended (RESOURCE_EXHAUSTED): the target stays small, its health answers quick', async (t) => {
  // A target process of its own, so that its memory is its alone; the flood on raw HTTP/2 with the
  // default windows, never read, as the fuzzing peer sent it.
  const agent = await startAgentProcess('target', ['--log-level', 'error']);
  t.teardown(() => stopAgentProcess(agent));
  const peer = new RawPeer(agent.address);
  const source = new SourceSide();
  t.teardown(() => {
    peer.close();
    source.shutdown();
  });
  const guest = source.guest();
  const reservationId = await peer.reserve(guest);
  const flood = floodOfPings(agent.address, encoded({ open: { reservationId, migrationId: `job-${guest.id}`, method: 'crtr' } }), 1_000_000);
  const rssBeforeMiB = rssMiB(agent.pid);
  let healthMs = 0;
  let rssMaxMiB = rssBeforeMiB;
  const sampler = setInterval(() => {
    rssMaxMiB = Math.max(rssMaxMiB, rssMiB(agent.pid));
    void healthLatencyMs(agent.address).then((ms) => (healthMs = Math.max(healthMs, ms)), () => {});
  }, 50);
  const { status, sent } = await flood;
  clearInterval(sampler);
  healthMs = Math.max(healthMs, await healthLatencyMs(agent.address));
  t.equal(status.name, 'RESOURCE_EXHAUSTED', `ended RESOURCE_EXHAUSTED after ${sent} pings sent (${status.details})`);
  t.ok(rssMaxMiB - rssBeforeMiB < 32, `the target grew by ${(rssMaxMiB - rssBeforeMiB).toFixed(0)} MiB`);
  t.ok(healthMs < 500, `its health service answered within ${healthMs.toFixed(0)} ms`);
  t.equal(await peer.reserved(), 0, 'the reservation is freed');
});
