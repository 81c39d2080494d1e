// The output rule under a crash: a primary agent protecting a guest in sync mode is killed (-9) at
// seeded moments; its DR agent fails the guest over (the primary is gone: no force needed once its
// stream broke). Every output a client saw released by the primary, polled until the kill, is
// reproduced by the guest on the DR agent, with equal payload.
import { Random } from '../shared/random.js';
import t, { type Test } from 'tap';
import { type AgentProcess, startAgentProcess, stopAgentProcess } from '../cli/agent-process.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';

const KILLS = Number(process.env.PROTECTION_KILLS ?? 20);
const SEED = Number(process.env.PROTECTION_SEED ?? 20261130);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
type Packet = { sequence?: number | null; unit?: number | null; payload?: string | null };

/** An agent process and its Control v2 client, both stopped when `t` ends. */
async function agent(t: Test, role: 'source' | 'target'): Promise<{ proc: AgentProcess; ctl: grpc.Client }> {
  const proc = await startAgentProcess(role, ['--log-level', 'error']);
  const ctl = makeClient(controlServiceV2, 'Control', proc.address, grpc.credentials.createInsecure());
  t.teardown(async () => {
    ctl.close();
    await stopAgentProcess(proc, 2_000);
  });
  return { proc, ctl };
}

t.test(`sync protection: ${KILLS} kills of the primary at seeded moments lose no released output`, async (t) => {
  const rng = new Random(SEED);
  const next = () => rng.nextFloat();
  let checked = 0;
  // One DR agent takes every guest; each kill has a primary of its own.
  const { proc: drProc, ctl: d } = await agent(t, 'target');
  const drAddress = drProc.address;
  for (let k = 0; k < KILLS; k++) {
    const killAfterMs = 100 + Math.floor(next() * 1_400);
    await t.test(`kill ${k + 1}: ${killAfterMs} ms into the protection (seed ${SEED})`, async (t) => {
      const { proc: primary, ctl: p } = await agent(t, 'source');
      const guestId = `vm-c${k + 1}`;
      await unary(p, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: guestId, profile: 'web', memoryBytes: 64 * 2 ** 20 }), 30_000, 'start guest');
      await unary(p, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: guestId, drAddress, mode: pb2.ProtectionMode.PROTECTION_MODE_SYNC }), 10_000, 'protect');
      for (;;) {
        const state = (await unary(p, controlServiceV2.getProtection, pb2.GetProtectionRequest.create({ guestId: guestId }), 5_000, 'get')).state;
        if (state === pb2.ProtectionState.PROTECTION_STATE_PROTECTED) break;
        await sleep(20);
      }
      // What clients saw: the primary's released outputs, polled until the kill.
      const seen = new Map<number, Packet>();
      let after = -1;
      const deadline = Date.now() + killAfterMs;
      while (Date.now() < deadline) {
        const res = await unary(p, controlServiceV2.getOutputs, pb2.GetOutputsRequest.create({ guestId: guestId, afterSequence: after, max: 65_536 }), 5_000, 'outputs');
        for (const o of res.packets) seen.set(Number(o.sequence), o);
        if (res.packets.length > 0) after = Number(res.packets.at(-1)!.sequence);
        await sleep(10);
      }
      primary.child.kill('SIGKILL');
      await new Promise((resolve) => primary.child.once('exit', resolve));
      // The DR agent hears the stream break, then fails over without force.
      let failover: InstanceType<typeof pb2.FailoverResponse> | null = null;
      for (let i = 0; i < 100 && failover === null; i++) {
        failover = await unary(d, controlServiceV2.failover, pb2.FailoverRequest.create({ guestId: guestId }), 10_000, 'failover').catch(() => null);
        if (failover === null) await sleep(50);
      }
      t.ok(failover !== null, 'failed over without force once the primary was gone');
      const there = await unary(d, controlServiceV2.getOutputs, pb2.GetOutputsRequest.create({ guestId: guestId, afterSequence: -1, max: 65_536 }), 5_000, 'outputs there');
      const reproduced = new Map(there.packets.map((o) => [Number(o.sequence), o.payload]));
      const firstUnit = Math.min(...there.packets.map((o) => Number(o.unit)));
      const protectedSeen = [...seen.values()].filter((o) => Number(o.unit) >= firstUnit);
      const lost = protectedSeen.filter((o) => reproduced.get(Number(o.sequence)) !== o.payload).map((o) => Number(o.sequence));
      t.same(lost, [], `${protectedSeen.length} outputs seen released while protected, all reproduced (${there.packets.length} there)`);
      checked += protectedSeen.length;
      // The next kill's guests should not compete with this one.
      await unary(d, controlServiceV2.stopGuest, pb2.StopGuestRequest.create({ id: guestId }), 10_000, 'stop the failed-over guest');
    });
  }
  t.ok(checked > 0, `${checked} released outputs checked over ${KILLS} kills`);
});
