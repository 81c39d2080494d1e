// Agents of the `qemu` driver for the migration tests: each in this process on 127.0.0.1:0 with
// its Control v2 client, booting the test guest's image under TCG (every QEMU ended when the test
// ends), and the calls those tests make: start a migration, wait for its end, read a guest's
// serial console across the hosts it ran on.

import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Test } from 'tap';
import type { QemuDriver } from '../../shared/driver/qemu/driver.js';
import type { QemuGuest } from '../../shared/driver/qemu/guest.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../../shared/transport/grpc.js';
import { type Agent, sleep, startTestAgent } from './agents.js';
import type { GuestImage } from './initramfs.js';
import { tempDirFor } from './qemu.js';

export type Job = InstanceType<typeof pb2.Job>;
type StartRequest = Partial<InstanceType<typeof pb2.StartMigrationRequest>>;

export interface QemuAgent extends Agent {
  control: ReturnType<typeof makeClient<typeof controlServiceV2>>;
  driver: QemuDriver;
  /** Where its QEMUs' runtime directories are (qemu.stateDir): one per QEMU alive. */
  stateDir: string;
}

/** What a qemu agent's configuration may change: the QEMU binary (a wrapper, to make QEMU fail). */
export interface QemuAgentOptions {
  binary?: string;
}

/** A qemu agent booting `image` under TCG; stopped (its QEMUs ended) when `t` ends. */
export async function startQemuAgent(t: Test, image: GuestImage, options: QemuAgentOptions = {}): Promise<QemuAgent> {
  const dir = tempDirFor(t);
  const config = join(dir, 'agent.yaml');
  const stateDir = join(dir, 'run');
  const binary = options.binary === undefined ? '' : `  binary: ${options.binary}\n`;
  writeFileSync(config, `driver: qemu\nqemu:\n${binary}  kernel: ${image.kernel}\n  initrd: ${image.initrd}\n  append: "${image.append}"\n  accel: tcg\n  stateDir: ${stateDir}\n`);
  const agent = await startTestAgent(t, ['--config', config]);
  const control = makeClient(controlServiceV2, 'Control', agent.address, grpc.credentials.createInsecure());
  t.teardown(() => control.close());
  return { ...agent, control, driver: agent.agent.driver as QemuDriver, stateDir };
}

/** The runtime directories of the agent's QEMUs, once as many as `count` are left (bounded wait: a QEMU ends shortly after its guest). */
export async function runtimeDirsSettle(agent: QemuAgent, count: number, timeoutMs = 30_000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const dirs = readdirSync(agent.stateDir);
    if (dirs.length <= count || Date.now() > deadline) return dirs;
    await sleep(50);
  }
}

/** Starts a qemu-native migration of `guestId` from `source` to `target`; returns its job id. */
export async function startNativeMigration(source: QemuAgent, target: QemuAgent, guestId: string, extra: StartRequest = {}): Promise<string> {
  const request = pb2.StartMigrationRequest.create({ guestId, targetAddress: target.address, method: pb2.Method.METHOD_QEMU_NATIVE, maxDurationMs: 120_000, ...extra });
  const { jobId } = await unary(source.control, controlServiceV2.startMigration, request, 10_000, 'start migration');
  return jobId;
}

export function getJob(agent: QemuAgent, jobId: string): Promise<Job> {
  return unary(agent.control, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'get job');
}

export function jobRunning(job: Job): boolean {
  return job.state === pb2.JobState.JOB_STATE_RUNNING || job.state === pb2.JobState.JOB_STATE_CANCELLING;
}

/** Polls the job until `accept` holds or it ended (default: until it ended), at most `timeoutMs`. */
export async function waitJob(agent: QemuAgent, jobId: string, accept: (job: Job) => boolean = () => false, timeoutMs = 180_000): Promise<Job> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const job = await getJob(agent, jobId);
    if (accept(job) || !jobRunning(job)) return job;
    if (Date.now() > deadline) throw new Error(`job ${jobId} did not get there within ${timeoutMs} ms (state ${job.state}, phase ${job.phase})`);
    await sleep(50);
  }
}

/** The guest `id` the agent hosts now. */
export function qemuGuest(agent: QemuAgent, id: string): QemuGuest {
  return agent.driver.guest(id);
}

/** Memory the agent's host holds for guests and reservations. */
export async function reservedBytes(agent: QemuAgent): Promise<number> {
  const capacity = await unary(agent.control, controlServiceV2.getCapacity, pb2.GetCapacityRequest.create(), 10_000, 'capacity');
  return Number(capacity.memoryBytesReserved);
}
