// qemu-native with a real Linux guest (Debian's kernel and a busybox initramfs, under TCG) between
// two agents of the qemu driver in this process, over loopback: QEMU's own migration stream,
// relayed by the agents. One guest boots once and serves every case: first the failures, after
// each of which it must still run on its source (its counter going on, no reboot, its memory
// pattern intact) with nothing left on the target; an estimate (QEMU's pre-copy predicted from its
// own dirty rate, through the API and the CLI's dry run); then pre-copy to the target (the method
// left to the agent, which takes qemu-native) and post-copy back,
// after each of which its console, read across the hosts it ran on, shows the counter going on
// from where it was, with no second boot and the pattern intact; last, a post-copy whose source
// QEMU dies after the switch, which leaves the guest listed blocked on the target (QEMU's own
// migration status), not running.
// Skipped, visibly, where qemu-system-x86, linux-image-amd64 or busybox-static is missing.

import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { controlServiceV2, pb2, unary } from '../shared/transport/grpc.js';
import { findExecutable } from './support/debian.js';
import { type GuestTicks, parseTicks, QEMU_EXECUTABLE, skipUnlessGuestPackages } from './support/initramfs.js';
import { childQemuPids, guestImageFor, QEMU_GUEST_BYTES, tempDirFor, waitForTicks } from './support/qemu.js';
import { sleep } from './support/agents.js';
import { runCli } from './support/cli-run.js';
import { getJob, type Job, jobRunning, qemuGuest, type QemuAgent, reservedBytes, runtimeDirsSettle, startNativeMigration, startQemuAgent, waitJob } from './support/qemu-agents.js';

const skip = skipUnlessGuestPackages();
const { JobState, Phase, ErrorReason } = pb2;
const GUEST = 'vm-native';
/** A bandwidth cap that makes the 128 MiB guest's stream last several seconds, time to break it midway. */
const SLOW_BYTES_PER_SEC = 4_000_000;

/** The guest's console across the hosts it ran on, oldest first: the line cut by a move joins up. */
function consoleOf(parts: readonly { text(): string }[]): GuestTicks {
  return parseTicks(parts.map((p) => p.text()).join(''));
}

/** Checks the console: one boot, the counter 1, 2, 3, ... with none repeated or skipped, the pattern intact; returns the last tick. */
function checkConsole(t: Test, ticks: GuestTicks, what: string): number {
  t.equal(ticks.boots.length, 1, `${what}: one boot, no reboot`);
  t.same(ticks.counters, Array.from({ length: ticks.counters.length }, (_, i) => i + 1), `${what}: the counter went on, none repeated or skipped (${ticks.counters.length} ticks)`);
  t.equal(ticks.bad, 0, `${what}: the memory pattern is intact`);
  return ticks.counters.at(-1) ?? 0;
}

t.test('qemu-native: a real guest moved by QEMU\'s own stream, its failures, and back', { skip }, async (t) => {
  const image = guestImageFor(t);
  const a = await startQemuAgent(t, image);
  const b = await startQemuAgent(t, image);
  const capacity = await unary(a.control, controlServiceV2.getCapacity, pb2.GetCapacityRequest.create(), 10_000, 'capacity');
  t.same(capacity.capabilities, ['native-stream'], 'the qemu driver carries QEMU\'s own stream');
  t.same(capacity.methods, [pb2.Method.METHOD_QEMU_NATIVE], 'so it migrates by qemu-native');
  await unary(a.control, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: GUEST, memoryBytes: QEMU_GUEST_BYTES }), 10_000, 'start guest');
  const first = qemuGuest(a, GUEST);
  await waitForTicks(first.serial, (ticks) => ticks.counters.length >= 2);
  const consoles: Array<{ text(): string }> = [first.serial];

  /** After a failed move: the guest runs on the source (two more ticks), and the target holds nothing. */
  const stillOnSource = async (t: Test, job: Job, target: QemuAgent) => {
    t.equal(qemuGuest(a, GUEST), first, 'the guest is the source\'s, the same QEMU');
    const before = consoleOf(consoles).counters.at(-1)!;
    await waitForTicks(first.serial, (ticks) => ticks.counters.at(-1)! >= before + 2);
    checkConsole(t, consoleOf(consoles), `after ${pb2.JobState[job.state]}`);
    t.equal(first.qemuStatus, 'running', 'QEMU runs it');
    t.equal(await reservedBytes(target), 0, 'the target holds no reservation');
    t.same(target.driver.listGuests(), [], 'nor any guest');
    t.same(await runtimeDirsSettle(target, 0), [], 'nor the runtime directory of its QEMU');
  };

  await t.test('a target whose QEMU refuses to start: refused at the reservation', async (t) => {
    const wrapper = join(tempDirFor(t), 'qemu-bad-args');
    writeFileSync(wrapper, `#!/bin/sh\nexec ${findExecutable(QEMU_EXECUTABLE)} "$@" -no-such-option\n`);
    chmodSync(wrapper, 0o755);
    const c = await startQemuAgent(t, image, { binary: wrapper });
    const job = await waitJob(a, await startNativeMigration(a, c, GUEST));
    t.equal(job.state, JobState.JOB_STATE_FAILED, 'failed');
    t.equal(job.errorReason, ErrorReason.HYPERVISOR_FAILED, `reason HYPERVISOR_FAILED: ${job.errorMessage}`);
    t.match(job.errorMessage, /did not start.*-no-such-option/, 'with QEMU\'s own words');
    t.notOk(job.phasesPassed.includes(Phase.PHASE_CHECKPOINT), 'nothing moved: it ended at the reservation');
    await stillOnSource(t, job, c);
  });

  await t.test('a target whose QEMU dies before the stream', async (t) => {
    const reserve = b.driver.reserve.bind(b.driver);
    b.driver.reserve = (description) => {
      const replica = reserve(description);
      void replica.memoryReady.then(() => replica.guest.process.signal('SIGKILL'));
      return replica;
    };
    t.teardown(() => void (b.driver.reserve = reserve));
    const job = await waitJob(a, await startNativeMigration(a, b, GUEST));
    b.driver.reserve = reserve;
    t.equal(job.state, JobState.JOB_STATE_FAILED, 'failed');
    t.equal(job.errorReason, ErrorReason.HYPERVISOR_FAILED, `reason HYPERVISOR_FAILED: ${job.errorMessage}`);
    await stillOnSource(t, job, b);
  });

  await t.test('a target whose QEMU is killed mid-stream', async (t) => {
    const jobId = await startNativeMigration(a, b, GUEST, { maxBandwidthBytesPerSec: SLOW_BYTES_PER_SEC });
    const midway = await waitJob(a, jobId, (job) => Number(job.source?.bytes?.native?.rawBytes ?? 0) > 8 * 2 ** 20);
    t.ok(jobRunning(midway), `the stream runs (${Number(midway.source?.bytes?.native?.rawBytes)} bytes so far)`);
    b.driver.incomingGuest(GUEST).guest.process.signal('SIGKILL');
    const job = await waitJob(a, jobId);
    t.equal(job.state, JobState.JOB_STATE_FAILED, 'failed');
    t.equal(job.errorReason, ErrorReason.HYPERVISOR_FAILED, `reason HYPERVISOR_FAILED: ${job.errorMessage}`);
    await stillOnSource(t, job, b);
  });

  await t.test('cancelled mid-stream', async (t) => {
    const jobId = await startNativeMigration(a, b, GUEST, { maxBandwidthBytesPerSec: SLOW_BYTES_PER_SEC });
    await waitJob(a, jobId, (job) => Number(job.source?.bytes?.native?.rawBytes ?? 0) > 4 * 2 ** 20);
    // On the target the guest exists, arriving, but is not that agent's to stop or move yet.
    const busy = { code: 'FAILED_PRECONDITION', reason: 'GUEST_BUSY', metadata: { guestId: GUEST, jobId } };
    await t.rejects(unary(b.control, controlServiceV2.stopGuest, pb2.StopGuestRequest.create({ id: GUEST }), 10_000, 'stop'), busy, 'the target answers a stop of the arriving guest naming its incoming job');
    await t.rejects(unary(b.control, controlServiceV2.startMigration, pb2.StartMigrationRequest.create({ guestId: GUEST, targetAddress: a.address }), 10_000, 'migrate'), busy, 'and a migration of it likewise');
    await unary(a.control, controlServiceV2.cancelJob, pb2.CancelJobRequest.create({ jobId }), 10_000, 'cancel');
    const job = await waitJob(a, jobId);
    t.equal(job.state, JobState.JOB_STATE_CANCELLED, `cancelled (${job.errorMessage})`);
    await stillOnSource(t, job, b);
    const target = await getJob(b, jobId);
    t.equal(target.state, JobState.JOB_STATE_CANCELLED, 'the target saw it cancelled');
  });

  await t.test('an estimate before the move: QEMU\'s pre-copy predicted from its own dirty rate, recommended', async (t) => {
    const request = pb2.EstimateMigrationRequest.create({ guestId: GUEST, targetAddress: b.address, sampleMs: 1000 });
    const estimate = await unary(a.control, controlServiceV2.estimateMigration, request, 60_000, 'estimate');
    t.same(estimate.methods.map((m) => m.method), [pb2.Method.METHOD_QEMU_NATIVE], 'the methods a qemu guest\'s driver carries out: qemu-native');
    const m = estimate.methods[0]!;
    t.ok(m.available && m.converges, `available, and converges: ${m.reason}`);
    t.equal(estimate.guest?.dirtySource, pb2.InputSource.INPUT_SOURCE_MEASURED, `its dirtying measured by QEMU (${(estimate.guest?.dirtyWindows ?? []).map((w) => `${w.pages} pages in ${w.windowMs} ms`).join(', ')})`);
    t.equal(estimate.recommendedMethod, pb2.Method.METHOD_QEMU_NATIVE, `recommended: ${estimate.recommendationReason}`);
    const run = await runCli(t, ['migrate', GUEST, '--to', b.address, '--dry-run', '--sample-ms', '1000', '--agent', a.address, '--plaintext']);
    t.equal(run.code, 0, `the CLI's dry run (stderr: ${run.stderr})`);
    t.match(run.stdout, /^qemu-native +yes /m, 'its table has the qemu-native row');
    t.match(run.stdout, /recommended: qemu-native/);
    t.match(run.stdout, /with --method qemu-native/);
    t.notMatch(run.stdout, /^cpu:/m, 'no replay figures for a guest no method replays');
  });

  await t.test('pre-copy to the target, the method left to the agent: the counter goes on there, the pattern intact', async (t) => {
    const before = consoleOf(consoles).counters.at(-1)!;
    const jobId = await startNativeMigration(a, b, GUEST, { method: pb2.Method.METHOD_UNSPECIFIED });
    const job = await waitJob(a, jobId);
    t.equal(job.method, pb2.Method.METHOD_QEMU_NATIVE, 'no method named: the agent took qemu-native, its driver\'s');
    t.equal(job.state, JobState.JOB_STATE_SUCCEEDED, `succeeded (${job.errorMessage})`);
    t.same(job.phasesPassed, [Phase.PHASE_PRE_MIGRATION, Phase.PHASE_RESERVATION, Phase.PHASE_CHECKPOINT, Phase.PHASE_STOP_AND_COPY, Phase.PHASE_COMMITMENT, Phase.PHASE_ACTIVATION, Phase.PHASE_DONE], 'the pre-copy phases, in order');
    const s = job.source!;
    t.equal(s.qemuNative?.status, 'completed', 'QEMU says completed');
    t.equal(s.sourceDigest, s.targetDigest, `the stream's hashes agree (${s.sourceDigest})`);
    t.ok(Number(s.bytes?.native?.rawBytes) > 8 * 2 ** 20, `the stream went through the agents (${Number(s.bytes?.native?.rawBytes)} bytes)`);
    t.ok((s.downtimeMs ?? 0) > 0, `downtime ${s.downtimeMs?.toFixed(1)} ms (QEMU's own: ${s.qemuNative?.qemuDowntimeMs} ms)`);
    t.same(a.driver.listGuests(), [], 'the source holds the guest no more');
    await first.stopped();
    t.same(await runtimeDirsSettle(a, 0), [], 'its QEMU there ended, and its runtime directory with it');
    const moved = qemuGuest(b, GUEST);
    consoles.push(moved.serial);
    await waitForTicks(moved.serial, (ticks) => ticks.counters.length >= 2);
    const last = checkConsole(t, consoleOf(consoles), 'across both hosts');
    t.ok(last >= before + 2, `ticks ${before} on the source, ${last} now`);
    t.equal(parseTicks(moved.serial.text()).boots.length, 0, 'the target printed no boot line');
  });

  await t.test('post-copy back: the guest runs here before its last page, and goes on', async (t) => {
    const before = consoleOf(consoles).counters.at(-1)!;
    const jobId = await startNativeMigration(b, a, GUEST, { nativePostcopy: true });
    const job = await waitJob(b, jobId);
    t.equal(job.state, JobState.JOB_STATE_SUCCEEDED, `succeeded (${job.errorMessage})`);
    t.same(job.phasesPassed, [Phase.PHASE_PRE_MIGRATION, Phase.PHASE_RESERVATION, Phase.PHASE_STOP_AND_COPY, Phase.PHASE_ACTIVATION, Phase.PHASE_PAGE_PUSH, Phase.PHASE_COMMITMENT, Phase.PHASE_DONE], 'the post-copy phases, in order');
    const s = job.source!;
    t.equal(s.qemuNative?.postcopy, true, 'QEMU switched to post-copy');
    t.equal(s.qemuNative?.status, 'completed', 'QEMU says completed');
    t.equal(s.sourceDigest, s.targetDigest, `the stream's hashes agree (${s.sourceDigest})`);
    t.ok(Number(s.bytes?.native?.rawBytes) > 8 * 2 ** 20, `the stream went through the agents (${Number(s.bytes?.native?.rawBytes)} bytes)`);
    t.ok((s.downtimeMs ?? 0) > 0, `downtime ${s.downtimeMs?.toFixed(1)} ms (QEMU's own: ${s.qemuNative?.qemuDowntimeMs} ms)`);
    t.same(b.driver.listGuests(), [], 'the source holds the guest no more');
    const back = qemuGuest(a, GUEST);
    consoles.push(back.serial);
    await waitForTicks(back.serial, (ticks) => ticks.counters.length >= 2);
    const last = checkConsole(t, consoleOf(consoles), 'across the three QEMUs');
    t.ok(last >= before + 2, `ticks ${before} before, ${last} now`);
  });

  // Last, as it leaves the guest stuck: its memory split between a dead source and the target.
  await t.test('post-copy whose source QEMU dies after the switch: the target lists the guest blocked, in QEMU\'s words', async (t) => {
    const source = qemuGuest(a, GUEST);
    const jobId = await startNativeMigration(a, b, GUEST, { nativePostcopy: true, maxBandwidthBytesPerSec: SLOW_BYTES_PER_SEC });
    const switched = await waitJob(a, jobId, (job) => job.source?.qemuNative?.status === 'postcopy-active' && Number(job.source?.bytes?.native?.rawBytes ?? 0) > 4 * 2 ** 20);
    t.ok(jobRunning(switched), `switched to post-copy, its pages still coming (${Number(switched.source?.bytes?.native?.rawBytes)} bytes so far)`);
    const arrived = await waitJob(b, jobId, (job) => job.target?.activated === true);
    t.ok(arrived.target?.activated, 'the guest runs on the target');
    source.process.signal('SIGKILL');
    const deadline = Date.now() + 60_000;
    let listed: { state?: number | null; hypervisorStatus?: string | null } | undefined;
    for (;;) {
      const { guests } = await unary(b.control, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 10_000, 'list');
      listed = guests.find((g) => g.id === GUEST);
      if (listed?.state === pb2.GuestState.GUEST_STATE_BLOCKED || Date.now() > deadline) break;
      await sleep(100);
    }
    t.equal(listed?.state, pb2.GuestState.GUEST_STATE_BLOCKED, `listed blocked, not running (${listed?.hypervisorStatus})`);
    t.match(listed?.hypervisorStatus, /migration postcopy-(paused|recover)/, 'with QEMU\'s own migration status');
    t.match(b.driver.guest(GUEST).describe().summary, /postcopy-(paused|recover)/, 'and in the summary v1 lists');
  });
  t.same(childQemuPids().length, 1, 'one QEMU is left: the guest\'s, stuck on the target');
});

t.test('no QEMU process outlives the agents that started them', { skip }, async (t) => {
  t.same(childQemuPids(), [], 'every QEMU of the test above ended with its agent');
});
