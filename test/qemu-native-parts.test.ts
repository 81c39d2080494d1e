// qemu-native's parts that need no QEMU: QEMU's query-migrate read into the job's figures and the
// non-convergence policy's verdict on its passes, the stream's hash, the incoming machine's checks
// (its boot files' contents against this agent's, whatever their paths),
// the source's relay (one connection, Open first, backpressure from the gRPC side, the return path
// refused before the target is ready) against a fake gRPC call, and the target's endpoints
// refusing a stream that names no waiting transfer, another migration, or does not begin with Open;
// and the target's receiver blaming a stream's failure on the peer (a half-close before the end,
// bytes its hypervisor rejects, a cut stream) or on its hypervisor, against a stand-in hypervisor.

import { EventEmitter } from 'node:events';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { pino } from 'pino';
import { systemClock } from '../shared/clock.js';
import { type NativeConnection, type NativeStopReason, type NativeStreamTarget, StreamHasher } from '../shared/driver/native-types.js';
import type { VmMigrateError } from '../shared/errors.js';
import { fileDigest } from '../shared/driver/qemu/boot-files.js';
import { incomingMachine } from '../shared/driver/qemu/incoming-machine.js';
import { migrationInfoOf } from '../shared/driver/qemu/migration-info.js';
import { emptyStats } from '../shared/stats.js';
import { grpc, pb } from '../shared/transport/grpc.js';
import { applyNativeInfo, nativeConvergence } from '../source-agent/methods/qemu-native-stats.js';
import { NativeRelay, type NativeStreamCall } from '../source-agent/native-relay.js';
import { NativeStreamEndpoints, type NativeStreamServerCall } from '../target-agent/native-streams.js';
import { NativeStreamReceiver } from '../target-agent/receivers/native-stream.js';

const MiB = 2 ** 20;
/** query-migrate on QEMU 7.2 at the end of a pre-copy of a 128 MiB guest (docs/qemu.md). */
const COMPLETED = {
  status: 'completed', 'setup-time': 1, downtime: 13, 'total-time': 513,
  ram: { total: 134750208, 'postcopy-requests': 0, 'dirty-sync-count': 3, 'page-size': 4096, remaining: 0, mbps: 1133.26, transferred: 72415065, duplicate: 15486, 'dirty-pages-rate': 0, normal: 17611 },
};

t.test("QEMU's query-migrate, read and written into the job's figures", async (t) => {
  const info = migrationInfoOf(COMPLETED);
  t.same([info.status, info.downtimeMs, info.totalTimeMs, info.transferredBytes, info.passes, info.normalPages, info.error], ['completed', 13, 513, 72415065, 3, 17611, '']);
  const active = migrationInfoOf({ status: 'active', 'expected-downtime': 42, 'cpu-throttle-percentage': 20, ram: { total: 128 * MiB, remaining: 96 * MiB, 'dirty-sync-count': 1, 'dirty-pages-rate': 'lots' } });
  t.equal(active.dirtyPagesPerSec, 0, 'a number QEMU did not give as one reads as 0');
  t.same(migrationInfoOf({ status: 'failed', 'error-desc': 'Unable to write to socket' }).error, 'Unable to write to socket');
  t.same(migrationInfoOf(null).status, '', 'anything else reads as nothing');
  t.equal(migrationInfoOf({ status: 'completed', 'total-time': 375, downtime: 47_772_000 }).downtimeMs, 0, 'a downtime beyond the total time is no measurement');

  const s = emptyStats('qemu-native', 128 * MiB);
  applyNativeInfo(s, active);
  t.same([s.nativeStatus, s.expectedDowntimeMs, s.remainingBytes, s.rounds, s.throttle], ['active', 42, 96 * MiB, 1, 0.8], 'expected downtime, remaining bytes, passes as rounds, throttle: the job\'s own fields');
  t.equal(s.checkpointMemoryBytesCovered, 32 * MiB, 'the first pass covered a quarter of memory so far');
  applyNativeInfo(s, info);
  t.same([s.nativeDowntimeMs, s.nativeTotalTimeMs, s.nativeTransferredBytes, s.pagesSent, s.expectedDowntimeMs], [13, 513, 72415065, 17611, 42], "QEMU's own downtime and total time apart; the last expected downtime kept");
  t.equal(s.checkpointMemoryBytesCovered, 128 * MiB, 'completed: all of memory covered');
});

t.test('the non-convergence policy on QEMU\'s passes', async (t) => {
  const info = migrationInfoOf({ status: 'active', 'expected-downtime': 900, ram: { remaining: 64 * MiB } });
  const passes = [0, 1000, 2000, 3000].map((atMs) => ({ atMs, backlogUnits: 64 * MiB }));
  const base = { elapsedMs: 3000, maxDurationMs: 60_000, downtimeLimitMs: 300, convergenceWindowMs: 2000, passes, info };
  t.equal(nativeConvergence({ ...base, policy: 'abort' }).action, 'abort', 'a backlog that does not shrink, over the limit: abort');
  t.equal(nativeConvergence({ ...base, policy: 'force' }).action, 'force');
  t.equal(nativeConvergence({ ...base, policy: 'throttle' }).action, 'throttle', 'throttle: QEMU\'s auto-converge does it');
  const fits = migrationInfoOf({ status: 'active', 'expected-downtime': 100, ram: { remaining: 64 * MiB } });
  t.equal(nativeConvergence({ ...base, policy: 'abort', info: fits }).action, 'continue', 'what is left fits the downtime limit');
  const late = nativeConvergence({ ...base, policy: 'throttle', info: fits, elapsedMs: 60_000 });
  t.same([late.action, late.trigger], ['abort', 'max-duration'], 'the maximum duration ends it whatever the policy but force');
});

t.test("the stream's hash: the bytes, however they were cut", async (t) => {
  const bytes = Buffer.from(Array.from({ length: 100_000 }, (_, i) => i % 251));
  const whole = new StreamHasher();
  whole.update(bytes);
  const pieces = new StreamHasher();
  for (let at = 0; at < bytes.length; at += 4096) pieces.update(bytes.subarray(at, at + 4096));
  t.equal(pieces.digest(), whole.digest());
  t.match(whole.digest(), /^stream:[0-9a-f]{16}:100000$/);
  const other = new StreamHasher();
  other.update(Buffer.concat([bytes.subarray(0, 50_000), Buffer.from([1]), bytes.subarray(50_001)]));
  t.not(other.digest(), whole.digest(), 'one byte changed: another hash');
});

t.test('the incoming machine is the source\'s, booting this agent\'s files, which must hold what the source booted', async (t) => {
  const digest = (c: string) => ({ bytes: 1000, sha256: c.repeat(64) });
  const files = { kernel: digest('a'), initrd: digest('b') };
  const own = { boot: { kind: 'kernel' as const, kernel: '/boot/k', initrd: '/boot/i', append: 'console=ttyS0' }, accel: 'tcg' as const, bootFiles: () => files };
  const description = (machine: object, memoryBytes = 128 * MiB, vcpus = 2) => ({ id: 'vm', driver: 'qemu', memoryBytes, vcpus, unitMs: 10, state: 'running' as const, summary: '', machineConfig: new TextEncoder().encode(JSON.stringify(machine)) });
  const machine = { memoryBytes: 128 * MiB, vcpus: 1, accel: 'tcg', boot: own.boot, bootFiles: files };
  t.same(incomingMachine(description(machine), own), { memoryBytes: 128 * MiB, vcpus: 2, accel: 'tcg', boot: own.boot, bootFiles: files }, "the description's memory and vCPUs, this agent's own boot files and command line");
  t.same(incomingMachine(description({ ...machine, boot: { ...own.boot, kernel: '/srv/elsewhere/vmlinuz', initrd: '/etc/shadow' } }), own).boot, own.boot, 'files at other paths on the source, with the same contents: this agent boots its own');
  t.throws(() => incomingMachine(description({ ...machine, bootFiles: { ...files, initrd: digest('c') } }), own), { code: 'FAILED_PRECONDITION', reason: 'HYPERVISOR_FAILED', message: /guest 'vm' booted an initrd of 1000 bytes, sha256 cccccccccccccccc…, and this agent's qemu\.initrd \/boot\/i is 1000 bytes, sha256 bbbbbbbbbbbbbbbb…/ }, 'an initrd of other contents at the same path: refused, naming it');
  t.throws(() => incomingMachine(description({ ...machine, bootFiles: { ...files, kernel: { bytes: 999, sha256: 'a'.repeat(64) } } }), own), { code: 'FAILED_PRECONDITION', message: /booted a kernel of 999 bytes.*qemu\.kernel \/boot\/k is 1000 bytes/ }, 'a kernel of another size');
  t.throws(() => incomingMachine(description({ ...machine, bootFiles: undefined }), own), { code: 'FAILED_PRECONDITION', message: /did not say what its boot files hold/ }, 'no contents to check: refused');
  t.throws(() => incomingMachine(description({ ...machine, bootFiles: { kernel: { bytes: -1, sha256: 'x' } } }), own), { code: 'INVALID_ARGUMENT', fieldViolations: [{ field: 'guest.machine_config' }] }, 'malformed contents');
  t.throws(() => incomingMachine(description(machine), { ...own, bootFiles: () => { throw new Error('ENOENT'); } }), { code: 'FAILED_PRECONDITION', message: /this agent's own boot files cannot be read: ENOENT/ });
  t.throws(() => incomingMachine(description({ ...machine, boot: { ...own.boot, append: 'console=ttyS0 rdinit=/bin/sh' } }), own), { code: 'FAILED_PRECONDITION', reason: 'HYPERVISOR_FAILED', message: /qemu\.append/ }, 'a command line other than this agent\'s: the peer does not choose it');
  t.throws(() => incomingMachine(description({ ...machine, boot: { kind: 'kernel', kernel: '/boot/k', append: 'console=ttyS0' } }), own), { code: 'FAILED_PRECONDITION', reason: 'HYPERVISOR_FAILED' }, 'no initrd where this agent boots one');
  t.throws(() => incomingMachine(description({ ...machine, boot: { kind: 'disk', disk: '/d', format: 'raw' } }), own), { code: 'FAILED_PRECONDITION', message: /boots a disk.*cannot migrate/ }, 'a disk guest: its overlay does not travel');
  t.throws(() => incomingMachine(description(machine, 100 * MiB), own), { code: 'INVALID_ARGUMENT' }, 'memory not in 2 MiB pages');
  t.throws(() => incomingMachine(description(machine, 128 * MiB, 0), own), { code: 'INVALID_ARGUMENT' }, 'no vCPU');
  t.throws(() => incomingMachine(description({ boot: 'x'.repeat(20_000) }), own), { code: 'INVALID_ARGUMENT' }, 'too long');
});

t.test("a boot file's digest: its size and SHA-256, again once it changed", async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'vmlinuz');
  writeFileSync(path, 'kernel bytes');
  t.same(fileDigest(path), { bytes: 12, sha256: createHash('sha256').update('kernel bytes').digest('hex') });
  writeFileSync(path, 'other kernel bytes');
  t.equal(fileDigest(path).bytes, 18, 'a changed file is hashed again');
  t.throws(() => fileDigest(dir), /not a regular file/);
});

/** A client NativeStream call: records what is written; write() says true while `room`. */
class FakeCall extends EventEmitter {
  written: Array<InstanceType<typeof pb.NativeSourceMessage>> = [];
  room = true;
  ended = false;
  cancelled = false;
  paused = false;
  write(message: { bytes?: Buffer } & object): boolean {
    const bytes = (message as { bytes?: Buffer }).bytes;
    this.written.push(bytes === undefined ? (message as InstanceType<typeof pb.NativeSourceMessage>) : pb.NativeSourceMessage.decode(bytes));
    return this.room;
  }
  end(): void {
    this.ended = true;
  }
  cancel(): void {
    this.cancelled = true;
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** A short temporary directory (unix socket paths are bounded), removed when `t` ends. */
function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-nt-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
function connectTo(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path, () => resolve(socket));
    socket.once('error', reject);
  });
}

t.test("the source's relay: Open first, one connection, backpressure, the hash of what went", async (t) => {
  const call = new FakeCall();
  const relay = new NativeRelay(call as unknown as NativeStreamCall, { reservationId: 'r1', migrationId: 'm1', postcopy: true }, 'target:1');
  t.teardown(() => relay.close());
  t.same(call.written[0]!.open, { reservationId: 'r1', migrationId: 'm1', postcopy: true }, 'the first message names the transfer');
  call.emit('data', pb.NativeTargetMessage.create({ ready: {} }));
  t.ok(relay.ready, 'ready once the target says so');
  const hypervisor = await connectTo(relay.endpoint);
  const intruder = await connectTo(relay.endpoint).catch(() => null);
  if (intruder !== null) await new Promise((resolve) => intruder.once('close', resolve));
  t.pass('a second connection is closed (or refused): the hypervisor\'s is the only one');

  const sent = new StreamHasher();
  call.room = false;
  const chunk = Buffer.alloc(256 * 1024, 7);
  for (let i = 0; i < 8; i++) {
    hypervisor.write(chunk);
    sent.update(chunk);
  }
  await sleep(200);
  const whileFull = call.written.length;
  await sleep(200);
  t.equal(call.written.length, whileFull, `the gRPC side full: nothing more is read from the hypervisor (${whileFull - 1} messages)`);
  t.ok(relay.sentBytes < 2 * MiB, `${relay.sentBytes} bytes relayed of 2 MiB written`);
  call.room = true;
  call.emit('drain');
  hypervisor.end();
  for (let i = 0; i < 100 && !relay.sourceEnded; i++) await sleep(20);
  t.ok(relay.sourceEnded && call.ended, 'the hypervisor\'s end goes on to the target');
  t.equal(relay.sentBytes, 2 * MiB, 'every byte went, once drained');
  t.equal(relay.digest(), sent.digest(), 'the hash of what the hypervisor wrote');
  t.ok(call.written.slice(1).every((m) => m.body === 'data' && (m.data?.length ?? 0) <= 1 * MiB), 'data messages of at most one socket read');
  relay.close();
  t.notOk(existsSync(relay.endpoint), 'closed: the socket is gone');
});

t.test("the source's relay refuses a return path before the target is ready", async (t) => {
  const call = new FakeCall();
  const relay = new NativeRelay(call as unknown as NativeStreamCall, { reservationId: 'r1', migrationId: 'm1', postcopy: false }, 'target:1');
  t.teardown(() => relay.close());
  call.emit('data', pb.NativeTargetMessage.create({ data: Buffer.from('early') }));
  t.match(relay.error, { code: 'FAILED_PRECONDITION', reason: 'PROTOCOL_VIOLATION', message: /before it said ready/ });
  t.ok(call.cancelled, 'the stream is cancelled');
});

/** A server NativeStream call: what it failed with. */
class FakeServerCall extends EventEmitter {
  failedWith: { code?: number; details?: string } | null = null;
  constructor(private readonly peer: string) {
    super();
    this.on('error', (error: { code?: number; details?: string }) => (this.failedWith = error));
  }
  getPeer(): string {
    return this.peer;
  }
  getAuthContext(): object {
    return {};
  }
}

t.test("the target's endpoints hand a stream to the transfer it names, and refuse others", async (t) => {
  const endpoints = new NativeStreamEndpoints(pino({ level: 'silent' }));
  const accepted: string[] = [];
  endpoints.register('r1', { migrationId: 'm1', peer: '127.0.0.1', accept: (_call, open) => accepted.push(open.reservationId) });
  const open = (reservationId: string, migrationId: string) => pb.NativeSourceMessage.create({ open: { reservationId, migrationId } });
  const attempt = async (message: InstanceType<typeof pb.NativeSourceMessage>, peer = '127.0.0.1:5000') => {
    const call = new FakeServerCall(peer);
    endpoints.handle(call as unknown as NativeStreamServerCall);
    call.emit('data', message);
    await sleep(1);
    return call.failedWith?.code;
  };
  t.equal(await attempt(pb.NativeSourceMessage.create({ data: Buffer.from('x') })), 9, 'data before the Open: FAILED_PRECONDITION');
  t.equal(await attempt(open('r2', 'm1')), 5, 'no such transfer: NOT_FOUND');
  t.equal(await attempt(open('r1', 'm2')), 7, 'another migration: PERMISSION_DENIED');
  t.equal(await attempt(open('r1', 'm1'), '10.0.0.9:5000'), 7, 'another peer: PERMISSION_DENIED');
  t.equal(await attempt(open('r1', 'm1')), undefined, 'its own: taken');
  t.same(accepted, ['r1']);
  t.equal(await attempt(open('r1', 'm1')), 5, 'once only');
});

/**
 * A stand-in for the target's hypervisor: a unix socket the receiver writes the stream into, the
 * statuses it says, and its account once it stopped taking the stream (set by each case).
 */
class FakeHypervisor implements NativeStreamTarget {
  status = '';
  reason: NativeStopReason = { exit: null, rejectedStream: false, said: '' };
  /** Its end of the stream's socket, once the receiver connected. */
  socket: Socket | null = null;
  received = 0;
  private readonly listeners = new Set<(status: string) => void>();
  private readonly path: string;
  private readonly server;

  constructor(dir: string) {
    this.path = join(dir, 'hypervisor.sock');
    this.server = createServer((socket) => {
      this.socket = socket;
      socket.on('data', (chunk: Buffer) => (this.received += chunk.length));
      socket.on('error', () => undefined);
    });
  }

  async open(): Promise<NativeConnection> {
    await new Promise<void>((resolve) => this.server.listen(this.path, resolve));
    const socket = await connectTo(this.path);
    const hasher = new StreamHasher();
    return { socket, write: (bytes) => (hasher.update(bytes), socket.write(bytes)), digest: () => hasher.digest(), get bytesWritten() { return hasher.bytes; } };
  }

  onStatus(listener: (status: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  say(status: string): void {
    this.status = status;
    for (const listener of [...this.listeners]) listener(status);
  }

  // Post-copy is not in these cases.
  runWhenSwitched = () => Promise.resolve(performance.now());
  blockedMs = () => Promise.resolve(0);
  stopReason = () => Promise.resolve(this.reason);

  close(): void {
    this.socket?.destroy();
    this.server.close();
  }
}

/** A server NativeStream call as the receiver holds it: what it wrote, and the status it failed with. */
class FakeStreamCall extends FakeServerCall {
  written: Array<InstanceType<typeof pb.NativeTargetMessage>> = [];
  ended = false;
  write(message: InstanceType<typeof pb.NativeTargetMessage>): boolean {
    this.written.push(message);
    return true;
  }
  end(): void {
    this.ended = true;
  }
  pause(): void {}
  resume(): void {}
}

/** A receiver attached to `hypervisor` by `call`, its transfer's failure and restore recorded. */
async function attached(t: Test, hypervisor: FakeHypervisor) {
  const outcome = { failed: null as VmMigrateError | null, restored: false };
  const context = {
    clock: systemClock,
    log: pino({ level: 'silent' }),
    phase: () => 'restoring' as const,
    restored: () => void (outcome.restored = true),
    resuming: () => undefined,
    resumedHere: () => undefined,
    progress: () => undefined,
    send: () => undefined,
    fail: (error: unknown) => void (outcome.failed = error as VmMigrateError),
  };
  const receiver = new NativeStreamReceiver(context, hypervisor, () => '');
  const call = new FakeStreamCall('127.0.0.1:5000');
  receiver.accept(call as unknown as NativeStreamServerCall, pb.NativeStreamOpen.create({ reservationId: 'r1', migrationId: 'm1' }));
  t.teardown(() => hypervisor.close());
  for (let i = 0; i < 200 && (call.written.length === 0 || hypervisor.socket === null); i++) await sleep(10);
  t.equal(call.written[0]?.body, 'ready', 'the hypervisor listens: ready');
  const send = (bytes: Buffer) => call.emit('data', pb.NativeSourceMessage.create({ data: bytes }));
  /** Waits until the transfer failed (or `done` holds), bounded. */
  const settled = async (done = () => outcome.failed !== null) => {
    for (let i = 0; i < 500 && !done(); i++) await sleep(10);
    return outcome;
  };
  return { call, send, settled, outcome };
}

t.test("the target blames a native stream's failure on whoever caused it", async (t) => {
  await t.test('the source half-closes before the hypervisor had all of it: CANCELLED, PEER_ENDED_STREAM', async (t) => {
    const hypervisor = new FakeHypervisor(tempDir(t));
    const { call, send, settled } = await attached(t, hypervisor);
    send(Buffer.alloc(1000, 1));
    call.emit('end');
    // QEMU, finding the end of its input before the end of the migration, rejects what it got and exits.
    hypervisor.reason = { exit: 'exit status 1', rejectedStream: true, said: 'load of migration failed: Input/output error' };
    for (let i = 0; i < 200 && hypervisor.received < 1000; i++) await sleep(10);
    hypervisor.socket?.destroy();
    const { failed } = await settled();
    t.match(failed, { code: 'CANCELLED', reason: 'PEER_ENDED_STREAM', message: /the source ended its native stream after 1000 bytes, before the target's hypervisor had all of the migration .*load of migration failed/ });
    t.equal(call.failedWith?.code, grpc.status.CANCELLED, 'the stream ends CANCELLED');
  });

  await t.test('the source sends bytes the hypervisor cannot load: INVALID_ARGUMENT, MALFORMED_STREAM', async (t) => {
    const hypervisor = new FakeHypervisor(tempDir(t));
    const { call, send, settled } = await attached(t, hypervisor);
    send(Buffer.from('not a migration stream'));
    hypervisor.reason = { exit: 'exit status 1', rejectedStream: true, said: 'load of migration failed: Invalid argument' };
    hypervisor.say('failed');
    const { failed } = await settled();
    t.match(failed, { code: 'INVALID_ARGUMENT', reason: 'MALFORMED_STREAM', message: /the source sent a migration stream the target's hypervisor could not load .*Invalid argument/ });
    t.equal(call.failedWith?.code, grpc.status.INVALID_ARGUMENT);
  });

  await t.test('the stream from the source is cut: UNAVAILABLE, PEER_UNAVAILABLE', async (t) => {
    const hypervisor = new FakeHypervisor(tempDir(t));
    const { call, send, settled } = await attached(t, hypervisor);
    send(Buffer.alloc(10, 1));
    call.emit('error', new Error('Connection dropped'));
    const { failed } = await settled();
    t.match(failed, { code: 'UNAVAILABLE', reason: 'PEER_UNAVAILABLE', message: /the native stream from the source was cut after \d+ bytes: Connection dropped/ });
  });

  await t.test('the hypervisor dies by itself: FAILED_PRECONDITION, HYPERVISOR_FAILED', async (t) => {
    const hypervisor = new FakeHypervisor(tempDir(t));
    const { call, send, settled } = await attached(t, hypervisor);
    send(Buffer.alloc(10, 1));
    hypervisor.reason = { exit: 'killed by SIGKILL', rejectedStream: false, said: '' };
    hypervisor.socket?.destroy();
    const { failed } = await settled();
    t.match(failed, { code: 'FAILED_PRECONDITION', reason: 'HYPERVISOR_FAILED', message: /the target's hypervisor exited \(killed by SIGKILL\)/ });
    t.equal(call.failedWith?.code, grpc.status.FAILED_PRECONDITION);
  });

  await t.test('a half-close after the whole stream is the normal end', async (t) => {
    const hypervisor = new FakeHypervisor(tempDir(t));
    const { call, send, settled, outcome } = await attached(t, hypervisor);
    send(Buffer.alloc(100, 1));
    call.emit('end');
    hypervisor.say('completed');
    await settled(() => outcome.restored);
    t.ok(outcome.restored, 'the replica is complete');
    t.equal(outcome.failed, null, 'and nothing failed');
  });

  await t.test('a half-close before the Open fails the stream at once: CANCELLED', async (t) => {
    const endpoints = new NativeStreamEndpoints(pino({ level: 'silent' }));
    const call = new FakeServerCall('127.0.0.1:5000');
    endpoints.handle(call as unknown as NativeStreamServerCall);
    call.emit('end');
    t.equal(call.failedWith?.code, grpc.status.CANCELLED, 'refused as it ended, with no wait for an Open');
    t.match(call.failedWith?.details, /ended the native stream before its Open/);
  });
});
