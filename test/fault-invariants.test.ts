// The fault matrix's pure parts (bench/faults/): case ids and the choices a seed makes, the matrix
// and the CI sample it covers, and the invariants judged on observations made up here.

import t from 'tap';
import { caseChoices, caseId, ciSample, FAULT_KINDS, FAULT_METHODS, type FaultCase, fullMatrix, METHOD_PHASES, parseCaseId } from '../bench/faults/cases.js';
import { evaluate, GAP_NO_RECONNECTION, GAP_POSTCOPY_SOURCE_DIED } from '../bench/faults/invariants.js';
import type { CaseObservation, GuestView, HostView, SourceJobView } from '../bench/faults/observation.js';
import { formatTable } from '../bench/faults/report.js';

const MiB = 2 ** 20;

t.test('a case id names the case, and parses back; a bad one is refused naming what is wrong', async (t) => {
  const c: FaultCase = { fault: 'kill9-target', method: 'postcopy', phase: 'page-push', seed: 4_000_000_000 };
  t.equal(caseId(c), 'kill9-target/postcopy/page-push/4000000000');
  t.same(parseCaseId(caseId(c)), c);
  t.throws(() => parseCaseId('kill9-target/crtr/page-push/1'), /phase 'page-push' is not one of crtr's/);
  t.throws(() => parseCaseId('reboot/crtr/checkpoint/1'), /fault 'reboot'/);
  t.throws(() => parseCaseId('cut/crtr/checkpoint/-1'), /seed '-1'/);
  t.throws(() => parseCaseId('cut/crtr/checkpoint'), /four parts/);
});

t.test("a seed makes the same choices every time, within each choice's range", async (t) => {
  const c: FaultCase = { fault: 'stall', method: 'crtr', phase: 'checkpoint', seed: 12345 };
  t.same(caseChoices(c), caseChoices({ ...c }), 'the same choices again');
  t.notSame(caseChoices(c), caseChoices({ ...c, seed: 12346 }), 'another seed, other choices');
  for (let seed = 0; seed < 200; seed++) {
    const x = caseChoices({ ...c, phase: 'commitment', seed });
    if (x.delayMs > 15 || x.stallMs < 250 || x.stallMs > 3000 || x.outageMs > 2000 || x.corruptMask < 1 || x.corruptMask > 255 || x.corruptOffset >= 200) {
      t.fail(`seed ${seed}: a choice out of range: ${JSON.stringify(x)}`);
    }
  }
});

t.test('the full matrix has every fault x method x phase; the CI sample every fault x method and every phase', async (t) => {
  const phases = FAULT_METHODS.reduce((n, m) => n + METHOD_PHASES[m].length, 0);
  const matrix = fullMatrix(7, 2);
  t.equal(matrix.length, 2 * FAULT_KINDS.length * phases);
  t.equal(new Set(matrix.map(caseId)).size, matrix.length, 'no two cases alike');
  t.same(fullMatrix(7, 2), matrix, 'a base seed names the matrix');
  t.equal(fullMatrix(7, 1, { faults: ['cut'], methods: ['postcopy'], phases: ['page-push'] }).length, 1);
  for (const seed of [1, 2, 3]) {
    const sample = ciSample(seed);
    t.equal(sample.length, FAULT_KINDS.length * FAULT_METHODS.length);
    t.equal(new Set(sample.map((c) => `${c.fault}/${c.method}`)).size, sample.length, `base seed ${seed}: every fault x method once`);
    for (const m of FAULT_METHODS) {
      t.same(new Set(sample.filter((c) => c.method === m).map((c) => c.phase)), new Set(METHOD_PHASES[m]), `base seed ${seed}: every phase of ${m}`);
    }
  }
});

function host(guests: GuestView[], reservedBytes = guests.reduce((s, g) => s + g.memoryBytes, 0)): HostView {
  return { guests, reservedBytes, heldBytes: guests.filter((g) => g.state === 'running' || g.state === 'suspended').reduce((s, g) => s + g.memoryBytes, 0) };
}
const vm = (state: string): GuestView => ({ id: 'vm', state, memoryBytes: 64 * MiB });
const job = (state: string, extra: Partial<SourceJobView> = {}): SourceJobView => ({ state, phase: 'done', errorMessage: '', errorReason: '', inDoubtSeen: false, outcomeQueries: 0, ended: ['succeeded', 'failed', 'cancelled'].includes(state), ...extra });

function observation(fields: Partial<CaseObservation>): CaseObservation {
  const c: FaultCase = { fault: 'kill9-target', method: 'crtr', phase: 'commitment', seed: 1 };
  return {
    case: c,
    choices: caseChoices(c),
    injection: { landedPhase: 'commitment', atMs: 900, detail: '', fired: true },
    sourceJob: job('succeeded'),
    targetJob: null,
    restarted: { source: false, target: false },
    targetReachable: true,
    hosts: { source: host([]), target: host([vm('running')]) },
    settled: true,
    durationMs: 3000,
    harnessError: null,
    ...fields,
  };
}

t.test('invariants: where the guest runs against how the job ended', async (t) => {
  t.same(evaluate(observation({})), { outcome: 'completed', violations: [], explained: [], knownGap: null });
  const failed = evaluate(observation({ sourceJob: job('failed'), hosts: { source: host([vm('running')]), target: host([]) } }));
  t.equal(failed.outcome, 'failed-on-source');
  t.same(failed.violations, []);
  const both = evaluate(observation({ hosts: { source: host([vm('running')]), target: host([vm('running')]) } }));
  t.match(both.violations, [/2 running copies/, /runs on the source, but the job completed/]);
  const wrongSide = evaluate(observation({ sourceJob: job('failed'), hosts: { source: host([vm('suspended')]), target: host([vm('running')]) } }));
  t.match(wrongSide.violations, [/runs on the target, but the job failed/, /no running copy on the source/]);
  const lost = evaluate(observation({ hosts: { source: host([]), target: host([]) } }));
  t.match(lost.violations, [/no running copy on the target.*did not die/]);
  const resolved = evaluate(observation({ sourceJob: job('succeeded', { inDoubtSeen: true, outcomeQueries: 3 }) }));
  t.equal(resolved.outcome, 'in-doubt-resolved');
});

t.test('invariants: a dead host, a job in doubt, a reservation left, a SIGTERM that did not exit 0', async (t) => {
  const died = evaluate(observation({ restarted: { source: false, target: true }, hosts: { source: host([]), target: host([]) } }));
  t.same([died.outcome, died.violations], ['host-died', []], 'the target held the only copy and died');
  const sourceGone = observation({ sourceJob: null, restarted: { source: true, target: false }, hosts: { source: host([]), target: host([]) } });
  t.same(evaluate(sourceGone).outcome, 'host-died', 'the source died before the target committed');
  const committed = evaluate({ ...sourceGone, targetJob: { state: 'succeeded', committed: true, activated: true, missingPages: 0, errorMessage: '' } });
  t.match(committed.violations, [/no running copy on the target, where the source agent was stopped, and the target committed/]);
  const doubt = observation({ sourceJob: job('in-doubt', { outcomeQueries: 9 }), hosts: { source: host([vm('suspended')]), target: host([]) } });
  t.match(evaluate(doubt).violations, [/still in doubt after the bound although the target answers \(9 outcome queries\)/]);
  t.same(evaluate({ ...doubt, targetReachable: false }), { outcome: 'unresolved', violations: [], explained: [], knownGap: null }, 'in doubt with the target unreachable');
  const hung = evaluate(observation({ settled: false, sourceJob: job('running', { phase: 'checkpoint' }), hosts: { source: host([vm('running')]), target: host([vm('restoring')]) } }));
  t.match(hung.violations, [/did not end within the bound: running in checkpoint/], 'a job that did not end: its reservation is its own');
  const leftover = evaluate(observation({ settled: false, hosts: { source: host([], 64 * MiB), target: host([vm('running')]) } }));
  t.match(leftover.violations, [/reservation is left on the source: 67108864 bytes reserved, its guests hold 0/]);
  const replica = evaluate(observation({ settled: false, sourceJob: job('failed'), hosts: { source: host([vm('running')]), target: host([vm('replica')]) } }));
  t.match(replica.violations, [/reservation is left on the target.*vm replica/]);
  const sigterm = observation({ case: { fault: 'sigterm-target', method: 'crtr', phase: 'checkpoint', seed: 1 }, sourceJob: job('failed'), hosts: { source: host([vm('running')]), target: host([]) } });
  sigterm.injection = { landedPhase: 'checkpoint', atMs: 500, detail: '', fired: true, exit: { code: 1, signal: null } };
  t.match(evaluate(sigterm).violations, [/target agent exited with code 1/]);
  sigterm.injection.exit = null;
  t.match(evaluate(sigterm).violations, [/did not exit after SIGTERM within the grace/]);
});

t.test('known gaps are named and counted: a cut that fails the migration; a post-copy guest split between the hosts is a violation', async (t) => {
  const cut = evaluate(observation({ case: { fault: 'cut', method: 'crtr', phase: 'checkpoint', seed: 1 }, sourceJob: job('failed'), hosts: { source: host([vm('running')]), target: host([]) } }));
  t.same(cut, { outcome: 'failed-on-source', violations: [], explained: [], knownGap: GAP_NO_RECONNECTION });
  const split = evaluate(
    observation({
      case: { fault: 'cut', method: 'postcopy', phase: 'page-push', seed: 1 },
      sourceJob: job('failed', { errorMessage: 'post-copy interrupted (...): the guest runs on the target and lacks 812 pages; the source keeps its suspended copy' }),
      hosts: { source: host([vm('suspended')]), target: host([vm('running')]) },
    }),
  );
  t.equal(split.knownGap, null);
  t.match(split.violations, [/runs on the target, but the job failed/, /no running copy on the source/, /post-copy interrupted after the switch: the guest runs on the target lacking 812 pages/]);
  t.same(split.explained, []);
  const postcopy: FaultCase = { fault: 'kill9-source', method: 'postcopy', phase: 'page-push', seed: 1 };
  const interrupted = { state: 'failed', committed: false, activated: true, missingPages: 6400, errorMessage: 'post-copy interrupted with 6400 pages missing' };
  const died = evaluate(observation({ case: postcopy, sourceJob: null, targetJob: interrupted, restarted: { source: true, target: false } }));
  t.same(died, { outcome: 'completed', violations: [], explained: [], knownGap: GAP_POSTCOPY_SOURCE_DIED }, 'the source died after the switch: its pages with it');
  const dropped = evaluate(observation({ case: { ...postcopy, fault: 'cut' }, sourceJob: job('succeeded', { inDoubtSeen: true, outcomeQueries: 5 }), targetJob: interrupted }));
  t.equal(dropped.knownGap, null, 'the source dropped the only copy of the pages: no known gap');
  t.match(dropped.violations, [/lacking 6400 pages, and the source no longer holds them \(its job succeeded, no copy left there\): they are lost/]);
  const table = formatTable([{ observation: observation({}), verdict: evaluate(observation({})), logsKeptIn: null }]);
  t.match(table, /\| kill9-target \| commitment \| crtr +\| +1 \| +1 \| +1 \| +0 \|/, 'a row: one case, landed, completed');
});
