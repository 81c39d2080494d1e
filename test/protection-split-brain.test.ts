// Split brain with an etcd arbiter (Debian's etcd-server; skipped visibly without it): two agent
// processes, a protected guest, and every link of the primary cut in user space (link emulators
// between the primary and its standby, and between each agent and etcd). Through each episode a
// sampler asks both agents for the guest's state every 20 ms: never may both say running.
// - Both partitioned: the primary cut off from its standby and from etcd fences itself (its lease
//   can no longer be known alive) and stops its copy before the standby goes live on its own; once
//   its links come back the old primary stays stopped.
// - Primary returning after failover: the primary's process frozen (SIGSTOP) past its lease while
//   the standby goes live; continued (SIGCONT), the old primary finds its term gone, stops its
//   copy and never runs it again.
// - Both partitioned, the standby's link first and for longer than the primary's log buffer holds
//   (the protection gives its stream up and makes its standby again): the same expectations.
// - The standby cut off from etcd only: nothing changes, it never goes live.
import t, { type Test } from 'tap';
import { sleep } from './support/agents.js';
import { skipUnlessDebianPackage } from './support/debian.js';
import { ETCD_EXECUTABLE, ETCD_PACKAGE, startEtcdFor } from './support/etcd.js';
import { getProtection, untilProtection } from './support/protection.js';
import { describeLost, describeSamples, firstSample, lostOutputs, type PairOptions, type ProtectedPair, protectedPair, type ReleasedOutput, releasedOutputs, type Sample, StateSampler } from './support/split-brain.js';
import { pb2 } from '../shared/transport/grpc.js';

const State = pb2.ProtectionState;
/** etcd grants whole seconds; the primary fences itself a quarter of it before its lease could expire. */
const LEASE_TTL_MS = 2_000;
/** Bound on each wait for a fence or a failover: several leases, on a loaded machine. */
const EPISODE_MS = 20_000;
const skip = skipUnlessDebianPackage(ETCD_PACKAGE, ETCD_EXECUTABLE);


/** The shortest log buffer an agent takes: 16 units, 160 ms of the guest's log. */
const SHORT_LOG_BUFFER = 'host:\n  logBufferUnits: 16\n';

/** Starts etcd, the pair and the sampler (stopped when `t` ends); a second of protection first. */
async function episode(t: Test, guestId: string, options: PairOptions = {}): Promise<{ pair: ProtectedPair; sampler: StateSampler }> {
  const etcd = await startEtcdFor(t);
  const pair = await protectedPair(t, etcd, LEASE_TTL_MS, guestId, options);
  const sampler = new StateSampler(pair);
  sampler.start();
  t.teardown(() => sampler.stop());
  await sleep(1_000);
  return { pair, sampler };
}

/** No sample has both agents saying running. */
function neverTwoRunning(t: Test, samples: Sample[], what: string): void {
  const both = samples.filter((s) => s.primary === 'running' && s.dr === 'running');
  t.same(both, [], `never two running copies ${what} (${both.length} samples with two; ${describeSamples(samples)})`);
}

/** From sample `from` on, the old primary's guest never runs, and the new primary's always does. */
function settled(t: Test, samples: Sample[], from: number, liveAt: number): void {
  t.same(samples.slice(from).filter((s) => s.primary === 'running'), [], `from sample ${from} on, the old primary's guest never runs again`);
  t.same(samples.slice(liveAt).filter((s) => s.dr !== 'running' && s.dr !== 'no answer'), [], `from sample ${liveAt} on, the new primary runs on`);
}

/** Every output the old primary released is reproduced. */
function noOutputLost(t: Test, before: Map<number, ReleasedOutput>, after: Map<number, ReleasedOutput>): void {
  const { lost, compared } = lostOutputs(before, after);
  t.ok(compared > 0, `${compared} of the ${before.size} outputs the old primary released compared with the ${after.size} the new one keeps`);
  t.same(lost.map(([sequence]) => sequence), [], `every output the old primary released is reproduced, with an equal payload (${describeLost(lost)})`);
}

t.test('etcd: the primary cut off from its standby and from etcd stops its copy before the standby goes live on its own, and stays stopped when its links come back', { skip }, async (t) => {
  const { pair, sampler } = await episode(t, 'vm-b');
  const { primary, dr, guestId } = pair;
  const cutAt = sampler.samples.length;
  primary.etcdLink.cut({ block: true });
  pair.standbyLink.cut({ block: true });
  const fenced = await untilProtection(primary.client, guestId, (x) => x.state === State.PROTECTION_STATE_FAILED_OVER, 'the primary fenced', EPISODE_MS);
  t.match(fenced.detail, /fenced by the arbiter \(lease-unknown\)/, 'the primary fenced itself: its lease could no longer be known alive');
  const live = await untilProtection(dr.client, guestId, (x) => x.state === State.PROTECTION_STATE_FAILED_OVER, 'the standby live', EPISODE_MS);
  t.match(live.detail, /runs here/, 'the standby went live on its own');
  // Read at once: the new primary's ring still keeps every output since the standby's checkpoint.
  const [before, after] = [await releasedOutputs(primary.client, guestId), await releasedOutputs(dr.client, guestId)];
  await sleep(1_000);
  const restoredAt = sampler.samples.length;
  primary.etcdLink.restore();
  pair.standbyLink.restore();
  await sleep(3_000);
  const samples = await sampler.stop();
  neverTwoRunning(t, samples, 'through the whole episode');
  t.ok(samples.slice(0, cutAt).some((s) => s.primary === 'running' && s.dr === 'replica'), 'before the cut: the guest runs on the primary, a replica on the standby');
  const stoppedAt = firstSample(samples, (s) => s.primary === 'suspended', cutAt);
  const liveAt = firstSample(samples, (s) => s.dr === 'running', cutAt);
  t.ok(stoppedAt >= 0 && stoppedAt < liveAt, `the old primary's guest seen suspended (sample ${stoppedAt}) before the standby's seen running (sample ${liveAt})`);
  settled(t, samples, stoppedAt, liveAt);
  t.ok(restoredAt > stoppedAt && samples.length > restoredAt, `samples ${restoredAt} to ${samples.length - 1} came after the links were restored`);
  t.equal((await getProtection(primary.client, guestId)).state, State.PROTECTION_STATE_FAILED_OVER, "links restored, the old primary's protection stays failed over");
  noOutputLost(t, before, after);
});

t.test('etcd: a primary frozen past its lease while its standby goes live finds, continued, that its term is gone; its guest never runs again', { skip }, async (t) => {
  const { pair, sampler } = await episode(t, 'vm-c');
  const { primary, dr, guestId } = pair;
  const frozenAt = sampler.samples.length;
  primary.process.child.kill('SIGSTOP');
  await untilProtection(dr.client, guestId, (x) => x.state === State.PROTECTION_STATE_FAILED_OVER, 'the standby live', EPISODE_MS);
  const after = await releasedOutputs(dr.client, guestId);
  await sleep(1_000);
  const continuedAt = sampler.samples.length;
  primary.process.child.kill('SIGCONT');
  const old = await untilProtection(primary.client, guestId, (x) => x.state === State.PROTECTION_STATE_FAILED_OVER || x.state === State.PROTECTION_STATE_STOPPED, 'the old primary fenced', EPISODE_MS);
  // Either way: its own term's deadline, or the standby's FAILED_OVER on the stream it resumed.
  t.match(old.detail, /fenced by the arbiter|was failed over to its standby/, `the old primary learned that it was fenced: ${old.detail}`);
  const before = await releasedOutputs(primary.client, guestId);
  await sleep(3_000);
  const samples = await sampler.stop();
  // The sample in flight at SIGSTOP may have been answered before it; every later one until SIGCONT was not.
  neverTwoRunning(t, samples.slice(0, continuedAt), 'until the primary is continued');
  t.same(samples.slice(frozenAt + 1, continuedAt).filter((s) => s.primary !== 'no answer'), [], 'while frozen, the primary answered nothing');
  const liveAt = firstSample(samples, (s) => s.dr === 'running', frozenAt);
  t.ok(liveAt > frozenAt && liveAt < continuedAt, `the standby seen running (sample ${liveAt}) while the primary was frozen (samples ${frozenAt} to ${continuedAt})`);
  neverTwoRunning(t, samples.slice(continuedAt), 'once the primary is continued');
  const stoppedAt = firstSample(samples, (s) => s.primary === 'suspended', continuedAt);
  t.ok(stoppedAt >= continuedAt, `continued, the old primary says its guest is suspended (sample ${stoppedAt})`);
  settled(t, samples, stoppedAt, liveAt);
  noOutputLost(t, before, after);
});

t.test("etcd: the standby's link down past the primary's log buffer, then etcd's: the primary, making its standby again, stops its copy before the standby goes live", { skip }, async (t) => {
  const { pair, sampler } = await episode(t, 'vm-e', { primaryConfig: SHORT_LOG_BUFFER });
  const { primary, dr, guestId } = pair;
  const cutAt = sampler.samples.length;
  pair.standbyLink.cut({ block: true });
  await untilProtection(primary.client, guestId, (x) => x.resyncs > 0 || /standby was lost/.test(x.detail), 'the stream given up', EPISODE_MS);
  primary.etcdLink.cut({ block: true });
  const live = await untilProtection(dr.client, guestId, (x) => x.state === State.PROTECTION_STATE_FAILED_OVER, 'the standby live', EPISODE_MS);
  t.match(live.detail, /runs here/, 'the standby went live on its own');
  await sleep(2_000);
  const samples = await sampler.stop();
  const old = await getProtection(primary.client, guestId);
  neverTwoRunning(t, samples, 'through the whole episode');
  const stoppedAt = firstSample(samples, (s) => s.primary === 'suspended', cutAt);
  const liveAt = firstSample(samples, (s) => s.dr === 'running', cutAt);
  t.ok(stoppedAt >= 0 && stoppedAt < liveAt, `the old primary's guest seen suspended (sample ${stoppedAt}) before the standby's seen running (sample ${liveAt})`);
  t.equal(State[old.state], State[State.PROTECTION_STATE_FAILED_OVER], `the old primary's protection failed over (${old.detail})`);
});

t.test('etcd: the standby cut off from etcd while its primary is fine: nothing changes, it never goes live', { skip }, async (t) => {
  const { pair, sampler } = await episode(t, 'vm-d');
  const { primary, dr, guestId } = pair;
  const released = Number((await getProtection(primary.client, guestId)).outputsReleased);
  const cutAt = sampler.samples.length;
  dr.etcdLink.cut({ block: true });
  await sleep(3 * LEASE_TTL_MS);
  dr.etcdLink.restore();
  await sleep(LEASE_TTL_MS);
  const samples = (await sampler.stop()).slice(cutAt);
  t.same(samples.filter((s) => s.primary !== 'running' && s.primary !== 'no answer'), [], `the primary's guest runs throughout (${describeSamples(samples)})`);
  t.same(samples.filter((s) => s.dr !== 'replica' && s.dr !== 'no answer'), [], 'the standby stays a replica throughout');
  const [p, d] = [await getProtection(primary.client, guestId), await getProtection(dr.client, guestId)];
  // Protected, or degraded by a lag on a loaded machine: either way still a primary and its standby.
  const streaming = [State.PROTECTION_STATE_PROTECTED, State.PROTECTION_STATE_DEGRADED];
  t.ok(streaming.includes(p.state), `the primary still protects the guest (${State[p.state]} ${p.detail})`);
  t.ok(streaming.includes(d.state), `the standby is still a standby (${State[d.state]} ${d.detail})`);
  t.ok(Number(p.outputsReleased) > released, `outputs keep being released (${released}, then ${p.outputsReleased})`);
});
