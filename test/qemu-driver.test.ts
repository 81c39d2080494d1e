// The qemu driver with a real Linux guest (Debian's kernel and a busybox initramfs, under TCG):
// it boots and ticks on its serial console, suspends (the ticks stop), resumes (the counter goes
// on, no reboot, its memory pattern intact) and is discarded (its QEMU is gone, with its runtime
// directory; its memory counts until then). Also: a QEMU that cannot boot (its start fails saying
// why, leaving nothing), StartGuest's fields a qemu guest refuses, the reservation of an incoming
// guest (its machine checked, then a QEMU waiting for the stream; a stream it rejects told from a
// QEMU killed), and an agent with driver: qemu starting, listing and stopping guests through
// Control (a stop answers once the QEMU exited), whose stop leaves no QEMU behind.
// Skipped, visibly, where qemu-system-x86, linux-image-amd64 or busybox-static is missing.

import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { VmMigrateError } from '../shared/errors.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';
import { startTestAgent } from './support/agents.js';
import { buildGuestImage, parseTicks, skipUnlessGuestPackages } from './support/initramfs.js';
import { bootFileDigests, fileDigest } from '../shared/driver/qemu/boot-files.js';
import type { QemuBoot } from '../shared/driver/qemu/args.js';
import type { QemuDriver } from '../shared/driver/qemu/driver.js';
import { alive, childQemuPids, guestImageFor, QEMU_GUEST_BYTES, qemuDriverFor, tempDirFor, waitForTicks } from './support/qemu.js';

const skip = skipUnlessGuestPackages();
const { GuestState } = pb2;

/** The machine a guest started on `driver` describes (its QEMU is ended at once). */
async function createGuestMachine(driver: QemuDriver): Promise<{ bootFiles?: unknown }> {
  const guest = driver.createGuest({ id: 'vm-described', profile: '', memoryBytes: QEMU_GUEST_BYTES });
  const machine = JSON.parse(new TextDecoder().decode(guest.describe().machineConfig)) as { bootFiles?: unknown };
  guest.discard();
  await guest.stopped();
  return machine;
}

/** A span of several tick periods (500 ms and the pattern's check): long enough that a running guest would tick. */
const QUIET_SPAN_MS = 2_000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

t.test('a guest boots, ticks, suspends, resumes where it was and is discarded', { skip }, async (t) => {
  const driver = qemuDriverFor(t, guestImageFor(t));
  const guest = driver.createGuest({ id: 'vm-ticks', profile: '', memoryBytes: QEMU_GUEST_BYTES });
  t.same(driver.listGuests().map((g) => [g.id, g.driver, g.memoryBytes, g.state]), [['vm-ticks', 'qemu', QEMU_GUEST_BYTES, 'running']], 'listed at once, running');
  t.equal(driver.capacity().memoryBytesReserved, QEMU_GUEST_BYTES, 'its memory is on the host\'s books');
  const qmp = await guest.qmp();
  t.equal(qmp.greeting.version.major >= 7, true, `QMP greets as QEMU ${qmp.greeting.version.major}.${qmp.greeting.version.minor}`);
  t.same(await qmp.execute('query-kvm'), { enabled: false, present: true }, 'TCG, as asked');

  const booted = await waitForTicks(guest.serial, (ticks) => ticks.counters.length >= 3);
  t.equal(booted.boots.length, 1, 'one boot');
  t.equal(booted.bad, 0, 'the memory pattern checks out');

  await guest.suspend();
  t.equal(guest.qemuStatus, 'paused', 'QEMU says paused');
  t.equal(driver.listGuests()[0]!.state, 'suspended');
  // A tick may have been on its way out of the console when the vCPU stopped: count from here.
  await sleep(200);
  const atSuspend = parseTicks(guest.serial.text()).counters;
  await sleep(QUIET_SPAN_MS);
  t.same(parseTicks(guest.serial.text()).counters, atSuspend, 'no tick while suspended');

  await guest.cont();
  t.equal(guest.qemuStatus, 'running');
  t.equal(driver.listGuests()[0]!.state, 'running');
  const last = atSuspend.at(-1)!;
  const resumed = await waitForTicks(guest.serial, (ticks) => ticks.counters.at(-1)! >= last + 2);
  t.same(resumed.counters, Array.from({ length: resumed.counters.length }, (_, i) => i + 1), 'the counter went on from where it stopped: 1, 2, 3, ... with none repeated or skipped');
  t.same(resumed.boots, booted.boots, 'no reboot');
  t.equal(resumed.bad, 0, 'the memory pattern is intact');

  const pid = guest.process.pid;
  const runtimeDir = guest.runtimeDir;
  t.ok(existsSync(join(runtimeDir, 'qmp.sock')), 'its QMP socket is in a runtime directory of its own');
  guest.discard();
  t.same(driver.listGuests(), [], 'off the list at once');
  t.equal(driver.capacity().memoryBytesReserved, QEMU_GUEST_BYTES, 'its memory still counts while its QEMU exits');
  const exit = await guest.stopped();
  t.equal(exit.code, 0, 'QEMU quit');
  t.notOk(alive(pid), 'its process is gone');
  t.equal(driver.capacity().memoryBytesReserved, 0, 'and then its memory is free');
  t.notOk(existsSync(runtimeDir), 'its runtime directory is removed with it');
  await t.rejects(guest.suspend(), { code: 'UNAVAILABLE', reason: 'HYPERVISOR_FAILED' }, 'a discarded guest answers nothing');
});

t.test('a QEMU that cannot boot: its start fails saying why, and leaves nothing', { skip }, async (t) => {
  const image = guestImageFor(t);
  const stateDir = tempDirFor(t);
  // Boot files that cannot be read: refused before any QEMU starts, naming the file.
  const missing = qemuDriverFor(t, { ...image, kernel: join(tempDirFor(t), 'no-such-kernel') }, { stateDir });
  t.throws(() => missing.createGuest({ id: 'vm-broken', profile: '', memoryBytes: QEMU_GUEST_BYTES }), { code: 'FAILED_PRECONDITION', message: /guest 'vm-broken' did not start: a boot file cannot be read: ENOENT.*no-such-kernel/ });
  const directory = qemuDriverFor(t, { ...image, kernel: tempDirFor(t) }, { stateDir });
  t.throws(() => directory.createGuest({ id: 'vm-dir', profile: '', memoryBytes: QEMU_GUEST_BYTES }), { code: 'FAILED_PRECONDITION', message: /is not a regular file/ });
  t.same([...missing.listGuests(), ...directory.listGuests(), ...readdirSync(stateDir)], [], 'no guest, no QEMU, no runtime directory');

  // A kernel QEMU reads and cannot load: it exits at once; the start says so and leaves nothing.
  const notKernel = join(tempDirFor(t), 'vmlinuz');
  writeFileSync(notKernel, 'not a kernel at all'.repeat(100));
  const driver = qemuDriverFor(t, { ...image, kernel: notKernel }, { stateDir });
  const broken = driver.createGuest({ id: 'vm-bad-kernel', profile: '', memoryBytes: QEMU_GUEST_BYTES });
  t.equal(readdirSync(stateDir).length, 1, 'its QEMU got a runtime directory of its own');
  await t.rejects(broken.started, { code: 'FAILED_PRECONDITION', reason: 'HYPERVISOR_FAILED', message: /guest 'vm-bad-kernel' did not start: its QEMU ended \(exit status 1\) before it ran the guest; QEMU said: ./ });
  t.notOk(alive(broken.process.pid), 'once the start failed, its process is gone');
  t.same(driver.listGuests(), [], 'off the list');
  t.equal(driver.capacity().memoryBytesReserved, 0, 'off the books');
  t.same(readdirSync(stateDir), [], 'and its runtime directory removed');
  const said = await broken.qmp().then(() => '', (e: unknown) => (e as VmMigrateError).message);
  t.match(said, /QEMU of guest 'vm-bad-kernel' ended \(exit status 1\) before its QMP connection was ready/, 'its QMP says the same');
});

t.test('StartGuest fields a qemu guest refuses, and reservations', { skip }, async (t) => {
  const image = guestImageFor(t);
  const driver = qemuDriverFor(t, image);
  const refused = (spec: Parameters<typeof driver.createGuest>[0], field: string) =>
    t.throws(() => driver.createGuest(spec), { code: 'INVALID_ARGUMENT', fieldViolations: [{ field }] }, `refuses ${field}`);
  refused({ id: 'vm', profile: 'web', memoryBytes: QEMU_GUEST_BYTES }, 'profile');
  t.throws(() => driver.createGuest({ id: 'vm', profile: 'idle', memoryBytes: QEMU_GUEST_BYTES }), { code: 'INVALID_ARGUMENT', fieldViolations: [{ field: 'profile' }], message: /leave the profile out \(vmmigrate guest start without --profile\)/ }, 'even idle: a profile means nothing to a qemu guest');
  refused({ id: 'vm', profile: '', memoryBytes: QEMU_GUEST_BYTES, rates: { busyFraction: 0.5 } }, 'rates');
  refused({ id: 'vm', profile: '', memoryBytes: QEMU_GUEST_BYTES, environmentSeed: 7 }, 'environment_seed');
  refused({ id: 'vm', profile: '', memoryBytes: QEMU_GUEST_BYTES + 4096 }, 'memory_bytes');
  refused({ id: 'bad id', profile: '', memoryBytes: QEMU_GUEST_BYTES }, 'id');
  t.throws(() => driver.createGuest({ id: 'vm', profile: '', memoryBytes: 2 ** 40 }), { code: 'RESOURCE_EXHAUSTED', reason: 'CAPACITY_REFUSED' }, 'more memory than the host has');
  t.same(driver.listGuests(), [], 'no QEMU was started for any of them');
  t.same(driver.capacity().capabilities, ['native-stream'], 'it migrates by QEMU\'s own stream');
  // Reservations of incoming guests: the source's machine, checked before any QEMU starts.
  const own = { kind: 'kernel', kernel: image.kernel, initrd: image.initrd, append: image.append };
  const ownFiles = bootFileDigests(own as QemuBoot)!;
  const machine = (boot: object, memoryBytes = QEMU_GUEST_BYTES, accel = 'tcg', bootFiles: object = ownFiles) => new TextEncoder().encode(JSON.stringify({ memoryBytes, vcpus: 1, accel, boot, bootFiles }));
  const description = { id: 'vm', driver: 'qemu', memoryBytes: QEMU_GUEST_BYTES, vcpus: 1, unitMs: 10, state: 'running' as const, machineConfig: machine(own), summary: '' };
  t.throws(() => driver.reserve({ ...description, machineConfig: new Uint8Array(0) }), { code: 'INVALID_ARGUMENT', fieldViolations: [{ field: 'guest.machine_config' }] }, 'no machine description');
  // The source's guest booted an initramfs of other contents (its description says what it held).
  const other = buildGuestImage(tempDirFor(t, 'vmm-initramfs-'), { patternBytes: 8000 });
  t.throws(() => driver.reserve({ ...description, machineConfig: machine(own, QEMU_GUEST_BYTES, 'tcg', { ...ownFiles, initrd: fileDigest(other.initrd) }) }), { code: 'FAILED_PRECONDITION', reason: 'HYPERVISOR_FAILED', message: new RegExp(`booted an initrd of \\d+ bytes, sha256 [0-9a-f]{16}…, and this agent's qemu\\.initrd ${image.initrd} is`) }, 'an initrd with other contents: refused by content, naming it');
  t.same((await createGuestMachine(driver)).bootFiles, ownFiles, 'a guest started here says what its boot files held');
  t.throws(() => driver.reserve({ ...description, machineConfig: machine({ ...own, append: 'console=ttyS0 rdinit=/bin/sh' }) }), { code: 'FAILED_PRECONDITION', reason: 'HYPERVISOR_FAILED', message: /command line 'console=ttyS0 rdinit=\/bin\/sh'.*qemu.append/ }, 'a kernel command line other than this agent\'s: a peer does not choose it');
  t.throws(() => driver.reserve({ ...description, machineConfig: machine(own, 2 * QEMU_GUEST_BYTES) }), { code: 'INVALID_ARGUMENT', fieldViolations: [{ field: 'guest.memory_bytes' }] }, 'a machine of another size than the description\'s');
  t.throws(() => driver.reserve({ ...description, machineConfig: machine(own, QEMU_GUEST_BYTES, 'kvm') }), { code: 'FAILED_PRECONDITION', message: /runs under kvm/ }, 'another accelerator');
  t.throws(() => driver.reserve({ ...description, driver: 'sim' }), { code: 'INVALID_ARGUMENT', fieldViolations: [{ field: 'guest.driver' }] }, 'a guest of another driver');
  t.same(driver.capacity().memoryBytesReserved, 0, 'no QEMU was started for any of them');
  const replica = driver.reserve(description);
  t.equal(driver.capacity().memoryBytesReserved, QEMU_GUEST_BYTES, 'a reservation is on the host\'s books');
  t.same(driver.listGuests(), [], 'and not among its guests');
  await replica.memoryReady;
  t.equal(replica.guest.qemuStatus, 'inmigrate', 'its QEMU waits for the stream');
  t.equal(replica.describe().state, 'restoring');
  t.throws(() => driver.reserve(description), { code: 'ALREADY_EXISTS' }, 'one reservation a guest');
  replica.discard();
  await replica.guest.stopped();
  t.equal(driver.capacity().memoryBytesReserved, 0, 'discarded: off the books, its QEMU gone');

  // Bytes that are no migration stream: QEMU rejects them (and exits), which it tells apart from a failure of its own.
  const rejecting = driver.reserve(description);
  await rejecting.memoryReady;
  const connection = await rejecting.open({ postcopy: false });
  connection.write(Buffer.from('this is not a QEMU migration stream, only bytes from a peer'.repeat(100)));
  connection.socket.end();
  const exit = await rejecting.guest.process.exited;
  const reason = await rejecting.stopReason();
  t.same([exit.code, reason.exit, reason.rejectedStream], [1, 'exit status 1', true], `QEMU rejected the stream and exited 1 (${reason.said})`);
  t.match(reason.said, /load of migration failed/, 'in its own words');
  rejecting.discard();
  await rejecting.guest.stopped();

  const killed = driver.reserve(description);
  await killed.memoryReady;
  killed.guest.process.signal('SIGKILL');
  const killedReason = await killed.stopReason();
  t.same([killedReason.exit, killedReason.rejectedStream], ['killed by SIGKILL', false], 'a QEMU killed failed by itself: it rejected nothing');
  killed.discard();
});

t.test('an agent with driver: qemu starts and lists a guest through Control, and ends its QEMU when it stops', { skip }, async (t) => {
  const image = guestImageFor(t);
  const config = join(tempDirFor(t), 'agent.yaml');
  writeFileSync(config, `driver: qemu\nqemu:\n  kernel: ${image.kernel}\n  initrd: ${image.initrd}\n  append: "${image.append}"\n  accel: tcg\n`);
  const a = await startTestAgent(t, ['--config', config]);
  const client = makeClient(controlServiceV2, 'Control', a.address, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  const capacity = await unary(client, controlServiceV2.getCapacity, pb2.GetCapacityRequest.create(), 10_000, 'capacity');
  t.equal(capacity.driver, 'qemu');
  t.same(capacity.capabilities, ['native-stream'], 'QEMU\'s own migration stream');
  t.same(capacity.methods, [pb2.Method.METHOD_QEMU_NATIVE], 'so the one method is qemu-native');

  await t.rejects(unary(client, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'vm-web', profile: 'web' }), 10_000, 'start'), { code: 'INVALID_ARGUMENT' }, 'a sim profile is refused');
  const started = await unary(client, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'vm-agent', memoryBytes: QEMU_GUEST_BYTES }), 10_000, 'start');
  t.equal(started.guest?.driver, 'qemu');
  t.equal(started.guest?.state, GuestState.GUEST_STATE_RUNNING);
  const listed = await unary(client, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 10_000, 'list');
  t.same(listed.guests.map((g) => [g.id, g.driver, Number(g.memoryBytes), g.state]), [['vm-agent', 'qemu', QEMU_GUEST_BYTES, GuestState.GUEST_STATE_RUNNING]]);

  const guest = a.agent.driver.guest('vm-agent') as import('../shared/driver/qemu/guest.js').QemuGuest;
  const ticks = await waitForTicks(guest.serial, (ticks) => ticks.counters.length >= 2);
  t.equal(ticks.bad, 0, 'the guest runs, its pattern intact');
  const migrate = pb2.StartMigrationRequest.create({ guestId: 'vm-agent', targetAddress: '127.0.0.1:1', method: pb2.Method.METHOD_CRTR });
  await t.rejects(unary(client, controlServiceV2.startMigration, migrate, 10_000, 'migrate'), { code: 'UNIMPLEMENTED', reason: 'CAPABILITY_MISSING' }, 'a migration by crtr is refused by the capability it lacks, before anything moves');
  // No method named: the agent takes the one the guest's driver carries out (to no agent here: it fails, the guest stays).
  const unnamed = await unary(client, controlServiceV2.startMigration, pb2.StartMigrationRequest.create({ guestId: 'vm-agent', targetAddress: '127.0.0.1:1', maxDurationMs: 5_000 }), 10_000, 'migrate');
  t.equal(unnamed.job?.method, pb2.Method.METHOD_QEMU_NATIVE, 'the default method of a qemu guest is qemu-native');
  for (let i = 0; i < 200; i++) {
    const job = await unary(client, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId: unnamed.jobId }), 10_000, 'job');
    if (job.state !== pb2.JobState.JOB_STATE_RUNNING) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  t.equal(guest.qemuStatus, 'running', 'and the guest runs on');
  const pid = guest.process.pid;
  t.ok(childQemuPids().includes(pid), 'its QEMU is a child of this process');

  // A stop answers once the guest's QEMU has exited: then, and only then, its memory is free.
  await unary(client, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'vm-stop', memoryBytes: QEMU_GUEST_BYTES }), 60_000, 'start');
  const stopping = a.agent.driver.guest('vm-stop') as import('../shared/driver/qemu/guest.js').QemuGuest;
  await unary(client, controlServiceV2.stopGuest, pb2.StopGuestRequest.create({ id: 'vm-stop' }), 30_000, 'stop');
  t.notOk(alive(stopping.process.pid), 'StopGuest answered: its QEMU had exited');
  t.notOk(existsSync(stopping.runtimeDir), 'its runtime directory is gone');
  const afterStop = await unary(client, controlServiceV2.getCapacity, pb2.GetCapacityRequest.create(), 10_000, 'capacity');
  t.equal(Number(afterStop.memoryBytesReserved), QEMU_GUEST_BYTES, 'only the other guest\'s memory is in use');

  await a.agent.shutdown('test: the agent stops with a guest running');
  t.notOk(alive(pid), 'the guest\'s QEMU is gone');
  t.same(childQemuPids(), [], 'no QEMU process is left');
});
