// A protection's standby made again without a full checkpoint (target-agent/base-image.ts):
// - a link loss longer than the guest's log buffer: the guest runs on at full speed, the stream is
//   given up instead of stalling it, and once the link is back the protection resyncs over the
//   standby the DR agent kept, sending only the pages that differ;
// - a fail back: after a failover the old primary keeps its copy stopped for good; protecting the
//   guest back there sends only the pages that differ from that copy, and a planned switchover
//   moves the guest home (its commit compares the state digests of both ends);
// - a DR agent restarted (killed -9): its standby died with it (the sim driver's replicas live in
//   the agent), so the protection resyncs by a full checkpoint once it is back; the guest runs on.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { startAgentProcess, stopAgentProcess } from '../cli/agent-process.js';
import { controlServiceV2, pb2, unary } from '../shared/transport/grpc.js';
import { LinkEmulator } from '../shared/transport/link.js';
import { guestState, sleep, startGuest, startTestAgent } from './support/agents.js';
import { getProtection, untilProtection, v2Client } from './support/protection.js';

const State = pb2.ProtectionState;
const SYNC = pb2.ProtectionMode.PROTECTION_MODE_SYNC;

/** An agent configuration whose guests keep a log buffer of `units` units (0.1 s per 10 units). */
function logBufferConfig(t: Test, units: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmmigrate-resync-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'agent.yaml');
  writeFileSync(file, `host:\n  logBufferUnits: ${units}\n`);
  return file;
}

t.test('a link loss past the log buffer: the guest runs on, and the protection resyncs over its standby by the pages that differ', async (t) => {
  const config = logBufferConfig(t, 50);
  const primary = await startTestAgent(t, ['--config', config]);
  const dr = await startTestAgent(t, ['--config', config]);
  const link = new LinkEmulator({ listen: '127.0.0.1:0', target: dr.address, profile: 'loopback' as never });
  const linkAddress = await link.start();
  t.teardown(() => link.close());
  const [p, d] = [v2Client(t, primary.address), v2Client(t, dr.address)];
  await startGuest(primary, 'vm-r', 'db');
  await unary(p, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: 'vm-r', drAddress: linkAddress, mode: SYNC }), 10_000, 'protect');
  const first = await untilProtection(p, 'vm-r', (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'protected');
  t.equal(first.baseKind, '', 'the first standby is made by a full checkpoint');
  const fullBytes = Number(first.checkpointBytes);
  t.ok(fullBytes > 0, `full checkpoint: ${fullBytes} raw bytes`);
  await sleep(500);

  link.cut({ block: true });
  // 50 units of log are half a second of this guest: the outage outlasts them.
  const lost = await untilProtection(p, 'vm-r', (x) => x.state === State.PROTECTION_STATE_DEGRADED && /log buffer/.test(x.detail), 'the stream given up past the log buffer');
  t.match(lost.detail, /making it again/);
  t.equal(await guestState(primary, 'vm-r'), 'running', 'the guest ran on throughout');
  const standby = await getProtection(d, 'vm-r');
  t.not(standby.state, State.PROTECTION_STATE_STOPPED, 'the DR agent keeps its standby meanwhile');
  await sleep(1_000);
  link.restore();

  const again = await untilProtection(p, 'vm-r', (x) => x.state === State.PROTECTION_STATE_PROTECTED && x.resyncs >= 1, 'protected again', 30_000);
  t.equal(again.baseKind, 'standby', 'the resync went over the standby the DR agent kept');
  const saved = Number(again.checkpointBytesSaved);
  t.ok(saved > 0, `${saved} raw bytes saved against a full checkpoint`);
  t.ok(Number(again.checkpointBytes) < fullBytes, `resync: ${again.checkpointBytes} raw bytes against ${fullBytes} for the full checkpoint`);
  await untilProtection(d, 'vm-r', (x) => x.state === State.PROTECTION_STATE_PROTECTED && x.jobId === again.jobId, 'the new standby');
  const scrape = await primary.agent.metrics.registry.metrics();
  t.match(scrape, /vmmigrate_protection_resyncs\{guest_id="vm-r"\} [1-9]/, 'the resyncs, per guest');
  t.match(scrape, /vmmigrate_protection_checkpoint_bytes_saved\{guest_id="vm-r"\} [1-9][0-9]*/, 'and what the last one saved');

  // The standby made this way is the guest: a planned switchover's commit compares the digests.
  await unary(p, controlServiceV2.switchover, pb2.SwitchoverRequest.create({ guestId: 'vm-r' }), 10_000, 'switchover');
  const done = await untilProtection(p, 'vm-r', (x) => x.state === State.PROTECTION_STATE_STOPPED, 'switched over', 30_000);
  t.match(done.detail, /switched over/);
  t.equal(await guestState(dr, 'vm-r'), 'running', 'the guest runs at the DR site');
  t.equal(await guestState(primary, 'vm-r'), 'absent');
});

t.test('fail back: protecting the guest back to its old primary sends only the pages that differ from its stopped copy', async (t) => {
  const a = await startTestAgent(t);
  const b = await startTestAgent(t);
  const [pa, pb] = [v2Client(t, a.address), v2Client(t, b.address)];
  await startGuest(a, 'vm-f', 'web');
  await unary(pa, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: 'vm-f', drAddress: b.address, mode: SYNC }), 10_000, 'protect a -> b');
  await untilProtection(pb, 'vm-f', (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'standby at b');
  const full = Number((await getProtection(pa, 'vm-f')).checkpointBytes);
  await unary(pb, controlServiceV2.failover, pb2.FailoverRequest.create({ guestId: 'vm-f', force: true }), 10_000, 'failover to b');
  await untilProtection(pa, 'vm-f', (x) => x.state === State.PROTECTION_STATE_FAILED_OVER, 'a hears of it');
  t.equal(await guestState(a, 'vm-f'), 'suspended', 'a keeps its copy, stopped');
  await sleep(500);

  await unary(pb, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: 'vm-f', drAddress: a.address, mode: SYNC }), 10_000, 'protect b -> a');
  const back = await untilProtection(pb, 'vm-f', (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'b protected to a', 30_000);
  t.equal(back.baseKind, 'stopped', "the checkpoint went over a's stopped copy");
  t.ok(Number(back.checkpointBytesSaved) > 0, `${back.checkpointBytesSaved} raw bytes saved`);
  t.ok(Number(back.checkpointBytes) < full, `fail back: ${back.checkpointBytes} raw bytes against ${full} for the full checkpoint`);

  await unary(pb, controlServiceV2.switchover, pb2.SwitchoverRequest.create({ guestId: 'vm-f' }), 10_000, 'switchover home');
  await untilProtection(pb, 'vm-f', (x) => x.state === State.PROTECTION_STATE_STOPPED, 'switched over', 30_000);
  t.equal(await guestState(a, 'vm-f'), 'running', 'the guest runs at home again');
  t.equal(await guestState(b, 'vm-f'), 'absent');
});

t.test('a DR agent killed and restarted: the protection resyncs by a full checkpoint, the guest runs on throughout', async (t) => {
  const primary = await startTestAgent(t);
  const p = v2Client(t, primary.address);
  let dr = await startAgentProcess('target', ['--log-level', 'error']);
  t.teardown(() => stopAgentProcess(dr, 2_000));
  const address = dr.address;
  await startGuest(primary, 'vm-d', 'web');
  await unary(p, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: 'vm-d', drAddress: address, mode: SYNC }), 10_000, 'protect');
  await untilProtection(p, 'vm-d', (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'protected');
  dr.child.kill('SIGKILL');
  await new Promise((resolve) => dr.child.once('exit', resolve));
  await sleep(1_000);
  t.equal(await guestState(primary, 'vm-d'), 'running', 'the guest runs on while the DR agent is down');
  dr = await startAgentProcess('target', ['--log-level', 'error', '--listen', address]);
  const again = await untilProtection(p, 'vm-d', (x) => x.state === State.PROTECTION_STATE_PROTECTED && x.resyncs >= 1, 'protected again', 30_000);
  t.equal(again.baseKind, '', 'nothing survived at the DR agent: a full checkpoint');
  const d = v2Client(t, address);
  const standby = await untilProtection(d, 'vm-d', (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'the restarted DR agent keeps the new standby');
  t.equal(standby.jobId, again.jobId);
  t.equal(await guestState(primary, 'vm-d'), 'running');
});

t.test('sync with link loss policy release: outputs go at once while the standby is unreachable; within the log buffer the stream resumes', async (t) => {
  const primary = await startTestAgent(t);
  const dr = await startTestAgent(t);
  const link = new LinkEmulator({ listen: '127.0.0.1:0', target: dr.address, profile: 'loopback' as never });
  const linkAddress = await link.start();
  t.teardown(() => link.close());
  const p = v2Client(t, primary.address);
  await startGuest(primary, 'vm-l', 'web');
  const linkLoss = pb2.LinkLossPolicy.LINK_LOSS_POLICY_RELEASE;
  await unary(p, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: 'vm-l', drAddress: linkAddress, mode: SYNC, linkLoss }), 10_000, 'protect');
  await untilProtection(p, 'vm-l', (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'protected');
  link.cut({ block: true });
  await sleep(1_500);
  const during = await getProtection(p, 'vm-l');
  await sleep(500);
  const later = await getProtection(p, 'vm-l');
  t.equal(Number(later.outputsHeld), 0, 'nothing held while the standby is unreachable');
  t.ok(Number(later.outputsReleased) > Number(during.outputsReleased), `outputs released meanwhile (${during.outputsReleased} then ${later.outputsReleased})`);
  link.restore();
  const back = await untilProtection(p, 'vm-l', (x) => x.state === State.PROTECTION_STATE_PROTECTED && x.resumes >= 1, 'the stream resumed', 30_000);
  t.equal(back.resyncs, 0, 'within the log buffer: no resync');
  t.equal(back.jobId, during.jobId, 'the same protection job');
  t.equal(await guestState(primary, 'vm-l'), 'running');
});
