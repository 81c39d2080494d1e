// Continuous protection between two real agents (Control v2): protect a running guest, see the
// standby follow it (lag from both ends), unprotect; fail over at the DR agent (refused while the
// primary streams, unless forced; the primary's copy is then stopped for good); a planned
// switchover moves the guest to the standby as a CR/TR migration.
import t, { type Test } from 'tap';
import { controlServiceV2, grpc, pb2, unary } from '../shared/transport/grpc.js';
import { type Agent, guestState, sleep, startGuest, startTestAgent } from './support/agents.js';
import { getProtection, type Protection, untilProtection, v2Client } from './support/protection.js';

const State = pb2.ProtectionState;
const Role = pb2.ProtectionRole;

const v2 = (t: Test, a: Agent): grpc.Client => v2Client(t, a.address);
const get = getProtection;
const until = untilProtection;

async function protect(t: Test, mode = pb2.ProtectionMode.PROTECTION_MODE_SYNC) {
  const primary = await startTestAgent(t);
  const dr = await startTestAgent(t);
  const [p, d] = [v2(t, primary), v2(t, dr)];
  await startGuest(primary, 'vm-p', 'web');
  const res = await unary(p, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: 'vm-p', drAddress: dr.address, mode, rpoMsMax: 500 }), 10_000, 'protect');
  t.equal(res.protection?.role, Role.PROTECTION_ROLE_PRIMARY);
  await until(p, 'vm-p', (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'protected (primary)');
  await until(d, 'vm-p', (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'protected (standby)');
  return { primary, dr, p, d };
}

t.test('protect, follow, unprotect: the standby replays without end and never runs; unprotect drops it, the guest runs on', async (t) => {
  const { primary, dr, p, d } = await protect(t);
  await sleep(1_500);
  const before = await get(p, 'vm-p');
  t.equal(before.state, State.PROTECTION_STATE_PROTECTED, 'still protected after the checkpoint, past any migration-like switchover');
  t.equal(before.mode, pb2.ProtectionMode.PROTECTION_MODE_SYNC);
  t.equal(before.logBatchMs, 20, "the log goes in batches of the default 20 ms (under a quarter of the 500 ms objective)");
  t.equal(before.replayLagMsMax, 1000, "the replay lag bound, the default 1000 ms");
  t.equal(before.peer, dr.address);
  t.ok(before.lagReceivedMs <= 500, `lag ${before.lagReceivedMs} ms within the 500 ms objective`);
  t.ok(before.logBytesPerSec > 0, `log ${Math.round(before.logBytesPerSec)} B/s`);
  const scrape = await primary.agent.metrics.registry.metrics();
  t.match(scrape, /vmmigrate_protections\{role="primary",state="(protected|degraded)"\} 1/, 'the protection counted by role and state');
  t.match(scrape, /vmmigrate_protection_lag_seconds\{guest_id="vm-p",role="primary",kind="received"\} [0-9.e-]+/, 'its lag, per guest');
  t.match(scrape, /vmmigrate_protection_outputs_held\{guest_id="vm-p"\} [0-9]+/);
  t.match(await dr.agent.metrics.registry.metrics(), /vmmigrate_protections\{role="standby",state="(protected|degraded)"\} 1/, 'the DR agent counts its standby');
  const standby = await get(d, 'vm-p');
  t.equal(standby.role, Role.PROTECTION_ROLE_STANDBY);
  t.equal(standby.jobId, before.jobId, 'one job id on both agents');
  t.equal(await guestState(primary, 'vm-p'), 'running');
  t.equal(await guestState(dr, 'vm-p'), 'absent', 'the standby is not a running guest');
  const roleOf = async (c: grpc.Client) => (await unary(c, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 10_000, 'guests')).guests.find((g) => g.id === 'vm-p');
  t.match(await roleOf(p), { role: pb2.GuestRole.GUEST_ROLE_PROTECTED, jobId: before.jobId }, 'Control v2: the guest is protected');
  t.match(await roleOf(d), { role: pb2.GuestRole.GUEST_ROLE_STANDBY, state: pb2.GuestState.GUEST_STATE_REPLICA }, 'the DR agent lists its standby');
  const ran = (await roleOf(p))?.instructionsRun ?? 0;
  t.ok(ran > 0, `ListGuests counts the instructions the guest ran (${ran})`);
  const refused = unary(p, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: 'vm-p', drAddress: dr.address }), 10_000, 'protect again');
  await t.rejects(refused, { code: 'FAILED_PRECONDITION', message: /already being protected/ });
  const ended = await unary(p, controlServiceV2.unprotect, pb2.UnprotectRequest.create({ guestId: 'vm-p' }), 10_000, 'unprotect');
  t.equal(ended.protection?.guestId, 'vm-p');
  await until(p, 'vm-p', (x) => x.state === State.PROTECTION_STATE_STOPPED, 'stopped (primary)');
  await until(d, 'vm-p', (x) => x.state === State.PROTECTION_STATE_STOPPED, 'stopped (standby)');
  t.equal(await guestState(primary, 'vm-p'), 'running', 'the guest runs on');
  t.equal(await guestState(dr, 'vm-p'), 'absent');
});

t.test('failover: refused while the primary streams; forced, the standby runs and the primary stops its copy for good', async (t) => {
  const { primary, dr, p, d } = await protect(t);
  await t.rejects(unary(d, controlServiceV2.failover, pb2.FailoverRequest.create({ guestId: 'vm-p' }), 10_000, 'failover'), { code: 'FAILED_PRECONDITION', message: /still streams to this standby/ });
  t.equal(await guestState(dr, 'vm-p'), 'absent', 'nothing changed');
  const res = await unary(d, controlServiceV2.failover, pb2.FailoverRequest.create({ guestId: 'vm-p', force: true }), 10_000, 'forced failover');
  t.equal(res.protection?.state, State.PROTECTION_STATE_FAILED_OVER);
  t.ok(res.failoverMs >= 0, `failover took ${res.failoverMs.toFixed(1)} ms, replaying ${res.unitsReplayedAtFailover} units`);
  t.equal(await guestState(dr, 'vm-p'), 'running', 'the standby runs the guest');
  const fenced = await until(p, 'vm-p', (x) => x.state === State.PROTECTION_STATE_FAILED_OVER, 'the primary hears of it');
  t.match(fenced.detail, /failed over to the standby/);
  t.equal(await guestState(primary, 'vm-p'), 'suspended', 'the old primary stopped its copy');
  await t.rejects(unary(d, controlServiceV2.failover, pb2.FailoverRequest.create({ guestId: 'vm-p', force: true }), 10_000, 'again'), { code: 'NOT_FOUND' });
});

type Outputs = InstanceType<typeof pb2.GetOutputsResponse>;
const outputs = (c: grpc.Client, guestId: string): Promise<Outputs> => unary(c, controlServiceV2.getOutputs, pb2.GetOutputsRequest.create({ guestId, afterSequence: -1, max: 65_536 }), 10_000, 'outputs');

t.test('sync mode: every output the primary released is reproduced by the standby after a failover, in order, with equal payload', async (t) => {
  const { primary, dr, p, d } = await protect(t);
  await sleep(1_500);
  const during = await get(p, 'vm-p');
  t.ok(during.outputsReleased > 0, `${during.outputsReleased} outputs released while protected (${during.outputsHeld} held)`);
  await unary(d, controlServiceV2.failover, pb2.FailoverRequest.create({ guestId: 'vm-p', force: true }), 10_000, 'failover');
  await until(p, 'vm-p', (x) => x.state === State.PROTECTION_STATE_FAILED_OVER, 'the primary hears of it');
  const released = (await outputs(v2(t, primary), 'vm-p')).packets;
  const there = (await outputs(d, 'vm-p')).packets;
  t.ok(there.length > 0, `the standby reproduced ${there.length} outputs`);
  const firstUnit = Math.min(...there.map((o) => Number(o.unit)));
  const protectedOnes = released.filter((o) => Number(o.unit) >= firstUnit);
  t.ok(protectedOnes.length > 0, `${protectedOnes.length} outputs released by the primary from unit ${firstUnit} on`);
  const bySequence = new Map(there.map((o) => [Number(o.sequence), o]));
  const missing = protectedOnes.filter((o) => bySequence.get(Number(o.sequence))?.payload !== o.payload);
  t.same(missing.map((o) => Number(o.sequence)), [], 'none missing, none different');
  const order = there.map((o) => Number(o.sequence));
  t.same(order, [...order].sort((a, b) => a - b), 'in order');
  void dr;
});

t.test('a planned switchover moves the guest to its standby as a CR/TR migration', async (t) => {
  const { primary, dr, p, d } = await protect(t);
  await unary(p, controlServiceV2.switchover, pb2.SwitchoverRequest.create({ guestId: 'vm-p' }), 10_000, 'switchover');
  const done = await until(p, 'vm-p', (x) => x.state === State.PROTECTION_STATE_STOPPED, 'switched over');
  t.match(done.detail, /switched over/);
  t.equal(await guestState(dr, 'vm-p'), 'running');
  t.equal(await guestState(primary, 'vm-p'), 'absent');
  const there = await get(d, 'vm-p');
  t.equal(there.state, State.PROTECTION_STATE_STOPPED);
  t.match(there.detail, /switched over: the guest runs here/);
});

t.test('a standby lost at the DR agent is made again by a new checkpoint; the guest runs on', async (t) => {
  const { primary, p, d } = await protect(t);
  // The DR agent drops its standby (as an operator there would, or as a restart loses it).
  await unary(d, controlServiceV2.unprotect, pb2.UnprotectRequest.create({ guestId: 'vm-p' }), 10_000, 'drop the standby');
  const again = await until(p, 'vm-p', (x) => x.state === State.PROTECTION_STATE_PROTECTED && x.resyncs === 1, 'protected again, one resync');
  t.equal(again.resyncs, 1);
  t.equal(await guestState(primary, 'vm-p'), 'running', 'the guest ran on');
  await until(d, 'vm-p', (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'a new standby');
  await unary(p, controlServiceV2.unprotect, pb2.UnprotectRequest.create({ guestId: 'vm-p' }), 10_000, 'unprotect');
  await until(p, 'vm-p', (x) => x.state === State.PROTECTION_STATE_STOPPED, 'ended for good');
  await sleep(1_500);
  t.equal((await get(p, 'vm-p')).state, State.PROTECTION_STATE_STOPPED, 'not made again after an unprotect');
});

t.test('Protect refuses bad requests with the field named', async (t) => {
  const primary = await startTestAgent(t);
  const p = v2(t, primary);
  await startGuest(primary, 'vm-q', 'idle');
  await t.rejects(unary(p, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: 'vm-q' }), 10_000, 'no address'), { code: 'INVALID_ARGUMENT', message: /dr_address is required/ });
  await t.rejects(unary(p, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: 'vm-q', drAddress: primary.address }), 10_000, 'self'), { code: 'INVALID_ARGUMENT', message: /is this agent itself/ });
  await t.rejects(unary(p, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: 'vm-q', drAddress: '127.0.0.1:1', rpoMsMax: 5 }), 10_000, 'rpo'), { code: 'INVALID_ARGUMENT', message: /recovery point objective 5 ms/ });
  const batch = pb2.ProtectRequest.create({ guestId: 'vm-q', drAddress: '127.0.0.1:1', rpoMsMax: 500, logBatchMs: 300 });
  const replayLag = pb2.ProtectRequest.create({ guestId: 'vm-q', drAddress: '127.0.0.1:1', replayLagMsMax: 50 });
  await t.rejects(unary(p, controlServiceV2.protect, replayLag, 10_000, 'replay lag'), { code: 'INVALID_ARGUMENT', message: /replay lag bound 50 ms: expected 0 \(the default, 1000\) or 100 to 3600000/ });
  await t.rejects(unary(p, controlServiceV2.protect, batch, 10_000, 'batch'), { code: 'INVALID_ARGUMENT', message: /a log batch of 300 ms: expected 0 \(the default, 20\) or 1 to 250/ });
  await t.rejects(get(p, 'vm-q'), { code: 'NOT_FOUND', message: /no protection of guest 'vm-q'/ });
  await t.rejects(unary(p, controlServiceV2.unprotect, pb2.UnprotectRequest.create({ guestId: 'vm-q' }), 10_000, 'unprotect'), { code: 'NOT_FOUND' });
});
