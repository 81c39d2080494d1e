// The real guest of `npm run bench -- qemu`: two agent processes of the qemu driver (TCG) on
// loopback, the test guest's image booted on one of them, and one qemu-native migration at a
// time from wherever the guest runs to the other agent, with what its console shows after the
// move: whether its counter went on (no second boot, the counter up from where it was, none
// skipped or repeated) and its memory pattern held.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type AgentProcess, startAgentProcess, stopAgentProcess } from '../cli/agent-process.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';
import { type GuestImage, parseTicks } from '../test/support/initramfs.js';
import { figuresOf } from './run.js';

type Control = ReturnType<typeof makeClient<typeof controlServiceV2>>;
type Job = InstanceType<typeof pb2.Job>;

export const REAL_GUEST_ID = 'bench-vm';
/** Bounds: a boot under TCG on a loaded host, a migration, the ticks after it (one each 0.5 s and a check of the pattern). */
const BOOT_TIMEOUT_MS = 180_000;
const JOB_TIMEOUT_MS = 180_000;
const TICKS_TIMEOUT_MS = 30_000;
/** Ticks the guest must print on its new host before its move counts as continued. */
const TICKS_AFTER = 2;

export interface RealMove {
  method: 'qemu-native' | 'qemu-native --postcopy';
  status: string;
  error: string;
  downtimeMs: number;
  disruptionMs: number;
  totalTimeMs: number;
  transferredBytes: number;
  /** QEMU's pre-copy passes. */
  rounds: number;
  /** QEMU's own downtime (the guest's stop here to the end of its stream) and total time. */
  qemuDowntimeMs: number;
  qemuTotalTimeMs: number;
  /** The counter went on from where it was, with no second boot, and the pattern held. */
  continued: boolean;
  /** What the console showed, in a sentence. */
  console: string;
}

interface Host {
  agent: AgentProcess;
  control: Control;
}

/** Two qemu agents with the guest booted on the first; stop() ends them (and every QEMU). */
export class RealGuestPair {
  private here = 0;

  private constructor(private readonly hosts: [Host, Host]) {}

  static async start(image: GuestImage, dir: string, memoryBytes: number): Promise<RealGuestPair> {
    const config = join(dir, 'agent.yaml');
    writeFileSync(config, `driver: qemu\nqemu:\n  kernel: ${image.kernel}\n  initrd: ${image.initrd}\n  append: "${image.append}"\n  accel: tcg\nlog:\n  level: error\n`);
    const args = ['--config', config, '--insecure-plaintext', '--on-stop-with-guests', 'drop'];
    const agents = await Promise.all([startAgentProcess('source', args), startAgentProcess('target', args)]);
    const hosts = agents.map((agent) => ({ agent, control: makeClient(controlServiceV2, 'Control', agent.address, grpc.credentials.createInsecure()) })) as [Host, Host];
    const pair = new RealGuestPair(hosts);
    try {
      await unary(hosts[0].control, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: REAL_GUEST_ID, memoryBytes }), 30_000, 'starting the real guest');
      await pair.waitTicks(hosts[0], (ticks) => ticks.counters.length >= 2, BOOT_TIMEOUT_MS);
    } catch (error) {
      await pair.stop();
      throw error;
    }
    return pair;
  }

  /** Moves the guest to the other agent; its figures, and whether it went on there. */
  async move(postcopy: boolean, downtimeLimitMs: number): Promise<RealMove> {
    const from = this.hosts[this.here]!;
    const to = this.hosts[1 - this.here]!;
    const before = parseTicks(await this.console(from));
    const last = before.counters.at(-1) ?? 0;
    const request = pb2.StartMigrationRequest.create({ guestId: REAL_GUEST_ID, targetAddress: to.agent.address, method: pb2.Method.METHOD_QEMU_NATIVE, nativePostcopy: postcopy, downtimeLimitMs, maxDurationMs: 120_000 });
    const { jobId } = await unary(from.control, controlServiceV2.startMigration, request, 10_000, 'starting the migration');
    const job = await this.waitJob(from.control, jobId);
    const f = figuresOf(job);
    const move: RealMove = {
      method: postcopy ? 'qemu-native --postcopy' : 'qemu-native',
      status: f.status,
      error: job.errorMessage ?? '',
      downtimeMs: f.downtimeMs,
      disruptionMs: f.disruptionMs,
      totalTimeMs: f.totalTimeMs,
      transferredBytes: f.transferredBytes,
      rounds: job.source?.qemuNative?.rounds ?? 0,
      qemuDowntimeMs: job.source?.qemuNative?.qemuDowntimeMs ?? NaN,
      qemuTotalTimeMs: job.source?.qemuNative?.qemuTotalTimeMs ?? NaN,
      continued: false,
      console: '',
    };
    if (f.status !== 'completed') {
      move.console = `not moved (${f.status})`;
      return move;
    }
    this.here = 1 - this.here;
    const after = await this.waitTicks(to, (ticks) => ticks.counters.length >= TICKS_AFTER || ticks.boots.length > 0, TICKS_TIMEOUT_MS).catch(() => parseTicks(''));
    const first = after.counters[0] ?? 0;
    const consecutive = after.counters.every((n, i) => n === first + i);
    move.continued = after.boots.length === 0 && after.counters.length >= TICKS_AFTER && first > last && first <= last + 20 && consecutive && after.bad === 0 && before.bad === 0;
    move.console = `ticks up to ${last} before, ${after.counters.join(', ') || 'none'} after; ${after.boots.length} boot line(s) after, ${after.bad} bad pattern check(s)`;
    return move;
  }

  async stop(): Promise<void> {
    for (const h of this.hosts) h.control.close();
    await Promise.all(this.hosts.map((h) => stopAgentProcess(h.agent)));
  }

  private async console(host: Host): Promise<string> {
    const res = await unary(host.control, controlServiceV2.getConsole, pb2.GetConsoleRequest.create({ guestId: REAL_GUEST_ID, maxBytes: 65_536 }), 10_000, 'reading the console');
    return res.text;
  }

  private async waitTicks(host: Host, accept: (ticks: ReturnType<typeof parseTicks>) => boolean, timeoutMs: number): Promise<ReturnType<typeof parseTicks>> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const ticks = parseTicks(await this.console(host));
      if (accept(ticks)) return ticks;
      if (performance.now() > deadline) throw new Error(`the real guest's console did not show what was awaited within ${timeoutMs} ms`);
      await sleep(100);
    }
  }

  private async waitJob(control: Control, jobId: string): Promise<Job> {
    const deadline = performance.now() + JOB_TIMEOUT_MS;
    for (;;) {
      const job = await unary(control, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'sampling the job');
      if (job.state !== pb2.JobState.JOB_STATE_RUNNING && job.state !== pb2.JobState.JOB_STATE_CANCELLING) return job;
      if (performance.now() > deadline) throw new Error(`job ${jobId} did not end within ${JOB_TIMEOUT_MS} ms`);
      await sleep(50);
    }
  }
}
