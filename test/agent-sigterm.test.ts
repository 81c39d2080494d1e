// SIGTERM to an agent daemon in the middle of a migration (what `systemctl stop` does): the
// agent aborts the migration safely and exits 0. The guest is then in exactly one place: on the
// source, running; the target holds nothing.
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { controlService, grpc, makeClient, pb, unary } from '../shared/transport/grpc.js';
import { sleep } from './support/agents.js';

const MAIN = { source: fileURLToPath(new URL('../source-agent/main.js', import.meta.url)), target: fileURLToPath(new URL('../target-agent/main.js', import.meta.url)) };
const MiB = 2 ** 20;

interface Daemon {
  child: ChildProcess;
  address: string;
  ctl: grpc.Client;
  /** Every log line so far, parsed. */
  lines: Array<Record<string, unknown>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** An agent process on 127.0.0.1:0, its JSON log lines collected; killed when `t` ends if still there. */
async function daemon(t: Test, role: 'source' | 'target', extra = ['--on-stop-with-guests', 'drop']): Promise<Daemon> {
  const child = spawn(process.execPath, ['--enable-source-maps', MAIN[role], '--listen', '127.0.0.1:0', '--insecure-plaintext', '--memory-mib', '2048', '--log-level', 'info', ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  const lines: Array<Record<string, unknown>> = [];
  createInterface({ input: child.stderr! }).on('line', (line) => {
    try {
      lines.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // Not a log line.
    }
  });
  let address = '';
  for await (const line of createInterface({ input: child.stdout! })) {
    try {
      address = (JSON.parse(line) as { listening?: string }).listening ?? '';
    } catch {
      continue;
    }
    if (address) break;
  }
  if (!address) throw new Error(`${role} agent exited before listening`);
  const ctl = makeClient(controlService, 'Control', address, grpc.credentials.createInsecure());
  t.teardown(() => ctl.close());
  return { child, address, ctl, lines, exited };
}

/** Starts a 256 MiB guest and a migration slowed to 20 MB/s, and waits until it is in `phase`. */
async function migrationIn(source: Daemon, target: Daemon, id: string, phases: string[]): Promise<string> {
  await unary(source.ctl, controlService.startGuest, pb.StartGuestRequest.create({ id, profile: 'web', memoryBytes: 256 * MiB }), 60_000, 'start guest');
  const { jobId } = await unary(
    source.ctl,
    controlService.startMigration,
    pb.StartMigrationRequest.create({ guestId: id, targetAddress: target.address, maxBandwidthBytesPerSec: 20_000_000, nonConvergencePolicy: 'force', maxDurationMs: 120_000 }),
    10_000,
    'start migration',
  );
  for (const end = Date.now() + 30_000; Date.now() < end; await sleep(50)) {
    const job = await unary(source.ctl, controlService.getJob, pb.GetJobRequest.create({ jobId }), 10_000, 'get job');
    if (phases.includes(job.stats?.phase ?? '')) return jobId;
  }
  throw new Error(`the migration did not reach ${phases.join(' or ')} within 30 s`);
}

const guestsOf = async (d: Daemon) =>
  (await unary(d.ctl, controlService.listGuests, pb.ListGuestsRequest.create(), 10_000, 'list')).guests.map((g) => `${g.description?.id}:${g.state}`);

t.test('SIGTERM to the target mid-checkpoint: the target exits 0, the guest runs on the source only', async (t) => {
  const source = await daemon(t, 'source');
  const target = await daemon(t, 'target');
  const jobId = await migrationIn(source, target, 'vm-t', ['checkpoint']);
  target.child.kill('SIGTERM');
  const exit = await target.exited;
  t.same(exit, { code: 0, signal: null }, 'the target agent exited 0');
  t.ok(target.lines.some((l) => l.msg === 'incoming migration ended before commit: replica discarded' && l.jobId === jobId), 'the target discarded its replica, and logged it with the job id');
  let job = await unary(source.ctl, controlService.getJob, pb.GetJobRequest.create({ jobId }), 10_000, 'get job');
  for (const end = Date.now() + 30_000; !['failed', 'cancelled'].includes(job.stats?.status ?? '') && Date.now() < end; await sleep(50)) {
    job = await unary(source.ctl, controlService.getJob, pb.GetJobRequest.create({ jobId }), 10_000, 'get job');
  }
  t.equal(job.stats?.status, 'failed', `the job failed: ${job.stats?.error}`);
  t.same(await guestsOf(source), ['vm-t:running'], 'the guest runs on the source');
  source.child.kill('SIGTERM');
  t.same(await source.exited, { code: 0, signal: null });
});

t.test('SIGTERM to the source mid-migration: the job is cancelled, the target holds nothing, the source exits 0', async (t) => {
  const source = await daemon(t, 'source');
  const target = await daemon(t, 'target');
  const jobId = await migrationIn(source, target, 'vm-s', ['checkpoint', 'log-transfer']);
  source.child.kill('SIGTERM');
  t.same(await source.exited, { code: 0, signal: null }, 'the source agent exited 0');
  const cancelled = source.lines.find((l) => l.jobId === jobId && l.msg === 'migration cancelled: guest runs on the source');
  t.ok(cancelled, 'the source logged that the migration was cancelled and the guest runs on the source');
  t.ok(source.lines.some((l) => l.msg === 'agent shutting down' && l.reason === 'SIGTERM'), 'the shutdown was the SIGTERM');
  // The target discards its replica as the stream ends; give it the moment that takes.
  for (const end = Date.now() + 10_000; (await guestsOf(target)).length > 0 && Date.now() < end; ) await sleep(50);
  t.same(await guestsOf(target), [], 'no guest on the target');
  const capacity = await unary(target.ctl, controlService.getCapacity, pb.GetCapacityRequest.create(), 10_000, 'capacity');
  t.equal(capacity.memoryBytesReserved, 0, 'and nothing reserved there');
  target.child.kill('SIGTERM');
  t.same(await target.exited, { code: 0, signal: null });
});

t.test('SIGTERM with a guest living in the agent (onStopWithGuests: refuse, the default): refused and logged; the agent stops once the guest is gone', async (t) => {
  const source = await daemon(t, 'source', []);
  await unary(source.ctl, controlService.startGuest, pb.StartGuestRequest.create({ id: 'vm-keep', profile: 'idle', memoryBytes: 64 * MiB }), 60_000, 'start guest');
  source.child.kill('SIGTERM');
  for (const end = Date.now() + 10_000; !source.lines.some((l) => String(l.msg).startsWith('refusing to stop')) && Date.now() < end; ) await sleep(20);
  const refusal = source.lines.find((l) => String(l.msg).startsWith('refusing to stop'));
  t.ok(refusal, 'a clear log line says why it does not stop');
  t.same(refusal?.guests, ['vm-keep'], 'naming the guests');
  t.equal(refusal?.level, 50, 'at error level');
  await sleep(300);
  t.same(await guestsOf(source), ['vm-keep:running'], 'the agent still serves, the guest still runs');
  await unary(source.ctl, controlService.stopGuest, pb.StopGuestRequest.create({ id: 'vm-keep' }), 10_000, 'stop guest');
  t.same(await source.exited, { code: 0, signal: null }, 'the pending stop is carried out once no guest is left');
  t.ok(source.lines.some((l) => l.msg === 'no guest left: carrying out the pending stop'));
});
