// The migration protocol under simulated faults (test/support/protocol-sim/): the source's
// lifecycle and the target's MigrationService in this process, on one ManualClock, over a network
// that resets connections, loses, delays, reorders and stalls messages, and crashes the target
// agent (its journal kept or not), every choice drawn from a seed. Hundreds of seeds against the
// invariants (invariants.ts), a seed replayed exactly, and directed runs of the paths the
// invariants hinge on. A failing seed prints the command that replays it with its trace.
//
// PROTOCOL_SIM_SEEDS (default 600) and PROTOCOL_SIM_START (default 1; `random` for a fresh range,
// printed) choose the seeds; `npm run bench -- protocol-sim` runs thousands.
import t, { type Test } from 'tap';
import { Random } from '../shared/random.js';
import type { Fault } from './support/protocol-sim/faults.js';
import { knownIssueOf } from './support/protocol-sim/known-issues.js';
import { runSeed, type SeedResult } from './support/protocol-sim/run.js';
import type { SimMethod } from './support/protocol-sim/scenario.js';
import { count, describeTally, describeViolation, emptyTally, replayCommand } from './support/protocol-sim/summary.js';

const SEEDS = Number(process.env.PROTOCOL_SIM_SEEDS ?? 600);
const START = process.env.PROTOCOL_SIM_START === 'random' ? Random.seedFromOs() : Number(process.env.PROTOCOL_SIM_START ?? 1);

/** Fails on a violation, or marks it todo when a known issue (known-issues.ts) explains it. */
function judge(t: Test, r: SeedResult, method?: SimMethod): void {
  if (r.violations.length === 0) return;
  const known = knownIssueOf(r);
  if (known !== undefined) t.fail(`seed ${r.seed}: ${r.violations.join('; ')}`, { todo: `known issue ${known.id} (known-issues.ts)` });
  else t.fail(describeViolation(r, method));
}

t.test(`seeds ${START} to ${START + SEEDS - 1}: no fault at any phase breaks an invariant`, async (t) => {
  t.comment(`replay a seed: ${replayCommand(START)}`);
  const tally = emptyTally();
  for (let seed = START; seed < START + SEEDS; seed++) {
    const r = await runSeed(seed);
    count(tally, r);
    judge(t, r);
  }
  for (const line of describeTally(tally)) t.comment(line);
  // Not vacuous: most runs complete, and some of every kind of ending happened.
  t.ok((tally.outcomes.completed ?? 0) > SEEDS / 3, 'most runs complete');
  t.ok((tally.outcomes.failed ?? 0) > 0 && (tally.outcomes.cancelled ?? 0) > 0, 'some fail, some are cancelled');
  t.ok(tally.wentInDoubt > 0, 'some lose the commit answer and ask the target');
});

t.test('a seed replays exactly: the same trace, the same end', async (t) => {
  for (const seed of [START, START + 17, START + 101]) {
    const first = await runSeed(seed);
    const again = await runSeed(seed, { keepTrace: true });
    t.equal(again.traceDigest, first.traceDigest, `seed ${seed}: same trace (${first.events} events)`);
    t.same([again.outcome, again.errorReason, again.simMs], [first.outcome, first.errorReason, first.simMs], `seed ${seed}: same end`);
    t.ok(again.trace !== null && again.trace.length >= again.events, 'the kept trace has every line');
  }
});

/** A directed run: the seed's link and guest, no loss, these faults only. */
function directed(method: SimMethod, faults: Fault[], journalKept = true, seed = 7): Promise<SeedResult> {
  return runSeed(seed, { method, override: { faults, journalKept, lossPerMessage: 0 } });
}

const commitResultLost: Fault = { trigger: { on: 'message', what: 'commitResult', direction: 'toSource', occurrence: 1 }, action: { kind: 'reset' } };
const crashOn = (what: string, direction: 'toTarget' | 'toSource'): Fault => ({ trigger: { on: 'message', what, direction, occurrence: 1 }, action: { kind: 'crash', when: 'before', downMs: 3_000 } });

t.test('directed: the plain path, and the commit whose answer is lost', async (t) => {
  for (const method of ['crtr', 'precopy'] as const) {
    const plain = await directed(method, []);
    t.same([plain.outcome, plain.targetRuns, plain.outcomeQueries, plain.violations], ['completed', true, 0, []], `${method}: completed without faults`);
    const lost = await directed(method, [commitResultLost]);
    t.same([lost.outcome, lost.targetRuns, lost.violations], ['completed', true, []], `${method}: the answer lost, the target says COMMITTED: completed`);
    t.ok(lost.outcomeQueries >= 1, 'the source asked');
  }
});

t.test('directed: a commit held past its deadline is fenced by the outcome query, then refused', async (t) => {
  const held: Fault = { trigger: { on: 'message', what: 'commit', direction: 'toTarget', occurrence: 1 }, action: { kind: 'hold', ms: 6_000 } };
  const r = await directed('crtr', [held]);
  t.same([r.outcome, r.errorReason, r.targetRuns, r.violations], ['failed', 'SWITCHOVER_DEADLINE_EXCEEDED', false, []], 'in doubt, NOT_COMMITTED: the guest resumed on the source');
  t.ok(r.outcomeQueries >= 1);
});

t.test('directed: the target crashes around the commit; with its journal the answer is certain', async (t) => {
  const before = await directed('crtr', [crashOn('commit', 'toTarget')]);
  t.same([before.outcome, before.targetRuns, before.violations], ['failed', false, []], 'crashed on receiving it: NOT_COMMITTED after the restart, the guest resumed on the source');
  const after = await directed('crtr', [crashOn('activated', 'toSource')]);
  t.same([after.outcome, after.targetRuns, after.violations], ['completed', true, []], 'crashed once the guest was activated: it runs on the target host, the job completed');
});

t.test('directed: a target that kept no journal and restarted cannot tell (in doubt, for an operator)', async (t) => {
  const r = await directed('crtr', [crashOn('commit', 'toTarget')], false);
  t.same([r.outcome, r.targetRuns, r.violations], ['in-doubt-unknown', false, []], 'UNKNOWN: the guest stays suspended on the source');
});

t.test('directed: a commit the target cannot record is refused, and the guest resumes on the source', async (t) => {
  const full: Fault = { trigger: { on: 'message', what: 'commit', direction: 'toTarget', occurrence: 1 }, action: { kind: 'journal' } };
  const r = await directed('crtr', [full]);
  t.same([r.outcome, r.errorReason, r.targetRuns, r.violations], ['failed', 'TARGET_REFUSED_COMMIT', false, []]);
});

t.test('directed: a reservation whose answer is lost is not left behind', async (t) => {
  const lost: Fault = { trigger: { on: 'message', what: 'reserve', direction: 'toSource', occurrence: 1 }, action: { kind: 'blackhole' } };
  const r = await directed('crtr', [lost]);
  t.same([r.outcome, r.errorReason, r.violations], ['failed', 'PEER_UNAVAILABLE', []], 'the source gives up at its deadline; the target releases the reservation at its own');
});

t.test('directed: the target dies between recording its commit and activating the guest', async (t) => {
  const crash: Fault = { trigger: { on: 'message', what: 'commitResult', direction: 'toSource', occurrence: 1 }, action: { kind: 'crash', when: 'before', downMs: 1_000 } };
  const r = await directed('crtr', [crash]);
  judge(t, r);
  // The restarted target answers COMMITTED from its journal, and that the guest is no longer there:
  // the source keeps its suspended copy, the last one, in doubt for an operator.
  t.equal(r.outcome, 'in-doubt-guest-lost', 'the last copy is kept for an operator');
});
