// Protection with an arbiter (shared/arbiter/): the primary holds its guest's term while it
// protects it; the DR agent goes live only by compare-and-swap on the epoch. In process with the
// memory arbiter (always): a primary partitioned from its standby but not from the arbiter keeps
// running and the standby does not go live; an operator's failover is refused while the
// primary's lease lives, and forced, it fences the primary before the standby runs. With a private
// etcd (Debian's etcd-server; skipped visibly without it): the primary's agent killed (-9), the
// standby goes live on its own once the lease is gone, with every released output reproduced.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { type AgentProcess, startAgentProcess, stopAgentProcess } from '../cli/agent-process.js';
import { controlServiceV2, pb2, unary } from '../shared/transport/grpc.js';
import { LinkEmulator } from '../shared/transport/link.js';
import { guestState, sleep, startGuest, startTestAgent } from './support/agents.js';
import { skipUnlessDebianPackage } from './support/debian.js';
import { ETCD_EXECUTABLE, ETCD_PACKAGE, startEtcdFor } from './support/etcd.js';
import { getProtection, untilProtection, v2Client } from './support/protection.js';

const State = pb2.ProtectionState;

function configFile(t: Test, arbiter: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmmigrate-arbiter-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'agent.yaml');
  writeFileSync(file, `arbiter:\n${Object.entries(arbiter).map(([k, v]) => `  ${k}: ${JSON.stringify(v)}`).join('\n')}\n`);
  return file;
}

const v2 = v2Client;
const stateOf = getProtection;
const until = untilProtection;

/**
 * Two in-process agents sharing the process's memory arbiter, the primary reaching the DR agent
 * through a link emulator. Leases of 3 s: both agents share one event loop here, and a busy
 * machine can delay a renewal past a 1 s lease's margin (the primary then fences itself, rightly).
 */
async function memoryPair(t: Test) {
  const config = configFile(t, { kind: 'memory', leaseTtlMs: 3000, keyPrefix: `/vmmigrate-test-${process.pid}-${Math.floor(Math.random() * 1e9)}` });
  const primary = await startTestAgent(t, ['--config', config]);
  const dr = await startTestAgent(t, ['--config', config]);
  const link = new LinkEmulator({ listen: '127.0.0.1:0', target: dr.address, profile: 'loopback' as never });
  const linkAddress = await link.start();
  t.teardown(() => link.close());
  const [p, d] = [v2(t, primary.address), v2(t, dr.address)];
  await startGuest(primary, 'vm-a', 'web');
  await unary(p, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: 'vm-a', drAddress: linkAddress, mode: pb2.ProtectionMode.PROTECTION_MODE_SYNC }), 10_000, 'protect');
  await until(d, 'vm-a', (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'standby protected');
  return { primary, dr, p, d, link };
}

t.test('memory arbiter: partitioned from its standby but not from the arbiter, the primary runs on and the standby stays a standby', async (t) => {
  const { primary, dr, d, link } = await memoryPair(t);
  link.cut({ block: true });
  await sleep(3_000);
  t.equal(await guestState(primary, 'vm-a'), 'running', 'the primary keeps its lease, and its guest runs');
  t.equal(await guestState(dr, 'vm-a'), 'absent', 'no failover: the primary holds the lease');
  const standby = await stateOf(d, 'vm-a');
  t.not(standby.state, State.PROTECTION_STATE_FAILED_OVER);
  await t.rejects(unary(d, controlServiceV2.failover, pb2.FailoverRequest.create({ guestId: 'vm-a' }), 10_000, 'failover'), { code: 'FAILED_PRECONDITION', reason: 'ARBITER_PRIMARY_HELD' }, 'an operator is refused too: the arbiter says the primary lives');
  link.restore();
});

t.test('memory arbiter: a forced failover fences the primary before the standby runs', async (t) => {
  const { primary, dr, p, d } = await memoryPair(t);
  const res = await unary(d, controlServiceV2.failover, pb2.FailoverRequest.create({ guestId: 'vm-a', force: true }), 20_000, 'forced failover');
  t.equal(res.protection?.state, State.PROTECTION_STATE_FAILED_OVER);
  t.equal(await guestState(dr, 'vm-a'), 'running');
  const fenced = await until(p, 'vm-a', (x) => x.state === State.PROTECTION_STATE_FAILED_OVER, 'the primary fenced');
  t.match(fenced.detail, /failed over|fenced/);
  t.equal(await guestState(primary, 'vm-a'), 'suspended', 'the old primary stopped its copy');
});

async function etcdPair(t: Test, endpoint: string): Promise<{ primary: AgentProcess; dr: AgentProcess }> {
  const config = configFile(t, { kind: 'etcd', endpoints: [endpoint], leaseTtlMs: 1000 });
  const procs: AgentProcess[] = [];
  t.teardown(async () => {
    for (const proc of procs) await stopAgentProcess(proc, 2_000);
  });
  procs.push(await startAgentProcess('source', ['--log-level', 'error', '--insecure-plaintext', '--config', config]));
  procs.push(await startAgentProcess('target', ['--log-level', 'error', '--insecure-plaintext', '--config', config]));
  return { primary: procs[0], dr: procs[1] };
}

t.test('etcd: the primary agent killed, its standby goes live on its own; no released output is lost', { skip: skipUnlessDebianPackage(ETCD_PACKAGE, ETCD_EXECUTABLE) }, async (t) => {
  const etcd = await startEtcdFor(t);
  const { primary, dr } = await etcdPair(t, etcd.endpoint);
  const [p, d] = [v2(t, primary.address), v2(t, dr.address)];
  await unary(p, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'vm-e', profile: 'web', memoryBytes: 64 * 2 ** 20 }), 30_000, 'start guest');
  await unary(p, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: 'vm-e', drAddress: dr.address, mode: pb2.ProtectionMode.PROTECTION_MODE_SYNC }), 10_000, 'protect');
  await until(p, 'vm-e', (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'protected');
  const seen = new Map<number, string>();
  let after = -1;
  for (const end = Date.now() + 1_000; Date.now() < end; await sleep(20)) {
    const out = await unary(p, controlServiceV2.getOutputs, pb2.GetOutputsRequest.create({ guestId: 'vm-e', afterSequence: after, max: 65_536 }), 5_000, 'outputs');
    for (const o of out.packets) seen.set(Number(o.sequence), o.payload ?? '');
    if (out.packets.length > 0) after = Number(out.packets.at(-1)!.sequence);
  }
  const killedAt = Date.now();
  primary.child.kill('SIGKILL');
  await until(d, 'vm-e', (x) => x.state === State.PROTECTION_STATE_FAILED_OVER, 'automatic failover', 30_000);
  const rtoMs = Date.now() - killedAt;
  t.pass(`the standby went live ${rtoMs} ms after the kill (lease TTL 1 s as granted by this etcd)`);
  const there = await unary(d, controlServiceV2.getOutputs, pb2.GetOutputsRequest.create({ guestId: 'vm-e', afterSequence: -1, max: 65_536 }), 5_000, 'outputs there');
  const reproduced = new Map(there.packets.map((o) => [Number(o.sequence), o.payload]));
  const first = Math.min(...there.packets.map((o) => Number(o.sequence)));
  const lost = [...seen].filter(([sequence, payload]) => sequence >= first && reproduced.get(sequence) !== payload);
  t.ok(seen.size > 0, `${seen.size} outputs seen released`);
  t.same(lost, [], 'every released output is reproduced');
});

