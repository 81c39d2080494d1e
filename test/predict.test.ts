// Prediction before start (source-agent/estimate/): the working-set fit, each method's model, and
// the recommendation, as pure functions of measured inputs; QEMU's pre-copy for a qemu guest.
import t from 'tap';
import { DELTA_ROUNDS_MAX } from '../shared/catch-up.js';
import { cowStallSeconds, postcopyFaults } from '../source-agent/estimate/methods.js';
import { derive, MACHINE_STATE_BYTES, type MethodPrediction, PAGE_BATCH_BYTES_PER_PAGE, type PredictionInputs } from '../source-agent/estimate/model.js';
import { predictMigration, recommend } from '../source-agent/estimate/predict.js';
import { fitWorkingSet } from '../source-agent/estimate/working-set.js';
import { QEMU_DEVICE_STATE_BYTES, QEMU_PAGE_HEADER_BYTES } from '../source-agent/estimate/qemu-native.js';

const MIB = 2 ** 20;
const PAGES_512_MIB = (512 * MIB) / 4096;

/** A web-like guest on a LAN: moderate dirtying over a working set, some log. */
const web: PredictionInputs = {
  memoryBytes: 512 * MIB,
  nonZeroFraction: 0.6,
  pageWireRatio: 0.5,
  compressBytesPerSec: 0,
  restoreBytesPerSec: 0,
  dirtyWindows: [
    { windowMs: 500, pages: 1900 },
    { windowMs: 1000, pages: 3600 },
    { windowMs: 2000, pages: 6500 },
  ],
  busyFraction: 0.35,
  logBytesPerSec: 1.5e6,
  unitMs: 10,
  linkBytesPerSec: 125e6,
  rttMs: 0.5,
  maxBandwidthBytesPerSec: 0,
  downtimeLimitMs: 300,
  cowPoolBytes: 64 * MIB,
  available: ['crtr', 'precopy', 'postcopy'],
  hybridCatchUp: true,
};

const byMethod = (methods: MethodPrediction[], name: string) => methods.find((m) => m.method === name)!;

t.test('fitWorkingSet recovers the rate and working set of the model it assumes', async (t) => {
  const r = 4000;
  const s = 20_000;
  const w = (sec: number) => s * (1 - Math.exp((-r * sec) / s));
  const fit = fitWorkingSet([0.25, 0.5, 1, 2].map((sec) => ({ windowMs: sec * 1000, pages: w(sec) })), PAGES_512_MIB);
  t.ok(Math.abs(fit.pagesPerSec - r) / r < 1e-6, `rate ${fit.pagesPerSec}`);
  t.ok(Math.abs(fit.workingSetPages - s) / s < 1e-6, `working set ${fit.workingSetPages}`);
  t.ok(Math.abs(fit.dirtied(10_000) - w(10)) < 1, 'extrapolates along the model');
});

t.test('fitWorkingSet: straight lines, flat windows, nothing dirty', async (t) => {
  const linear = fitWorkingSet([{ windowMs: 500, pages: 1000 }, { windowMs: 2000, pages: 4000 }], PAGES_512_MIB);
  t.equal(linear.workingSetPages, PAGES_512_MIB, 'no sign of a limit: the whole memory');
  t.ok(linear.dirtied(100_000) <= PAGES_512_MIB, 'never more than the guest has');
  const flat = fitWorkingSet([{ windowMs: 500, pages: 300 }, { windowMs: 2000, pages: 300 }], PAGES_512_MIB);
  t.equal(flat.workingSetPages, 300, 'a working set covered within the first window');
  t.ok(Math.abs(flat.dirtied(500) - 297) < 1, '99% of it after the first window');
  const none = fitWorkingSet([{ windowMs: 500, pages: 0 }, { windowMs: 2000, pages: 0 }], PAGES_512_MIB);
  t.equal(none.dirtied(60_000), 0);
  t.equal(fitWorkingSet([], PAGES_512_MIB).dirtied(1000), 0, 'no windows: nothing known to be dirtied');
});

t.test('CR/TR, exactly: checkpoint, a delta of nothing, then one unit of downtime', async (t) => {
  const inputs: PredictionInputs = { ...web, nonZeroFraction: 0.5, dirtyWindows: [{ windowMs: 1000, pages: 0 }], busyFraction: 0.5, logBytesPerSec: 1e5, linkBytesPerSec: 1e8, rttMs: 1 };
  const p = byMethod(predictMigration(inputs).methods, 'crtr');
  // 65536 pages × 2048 B over 1e8 - 1e5 B/s, plus a round trip.
  const checkpointMs = ((65536 * 2048) / (1e8 - 1e5)) * 1000 + 1;
  // The backlog (Tc) is worth a delta of no pages (1 ms: one round trip), after which it is small.
  t.equal(p.rounds, 1, p.reason);
  // One unit left: max(1000 B / 1e8 B/s, 10 ms / 2) + 2 round trips.
  t.equal(p.downtimeMs, 7);
  t.ok(Math.abs(p.totalTimeMs - (2 + checkpointMs + 1 + 7)) < 1e-6, `total ${p.totalTimeMs}`);
  t.ok(p.converges);
  t.equal(p.disruptionMs, 7, 'no dirtying: no copy-on-write stall');
  const logBytes = (1e5 * (checkpointMs + 1)) / 1000 + 1000;
  t.ok(Math.abs(p.bytes - (65536 * 2048 + logBytes)) < 1e-3, `bytes ${p.bytes}`);
});

t.test('CR/TR: an idle guest converges with a downtime near one unit', async (t) => {
  const idle: PredictionInputs = { ...web, busyFraction: 0.02, logBytesPerSec: 30_000, dirtyWindows: [{ windowMs: 500, pages: 20 }, { windowMs: 2000, pages: 60 }] };
  const prediction = predictMigration(idle);
  const p = byMethod(prediction.methods, 'crtr');
  t.ok(p.converges, p.reason);
  t.ok(p.downtimeMs < 5, `downtime ${p.downtimeMs} ms: a unit replays in 0.2 ms, plus 2 RTT`);
  t.equal(prediction.derived.replayRate, 50);
  t.ok(prediction.recommended !== null);
});

t.test('CR/TR: a web guest converges; its checkpoint is the non-zero pages after lz4', async (t) => {
  const p = byMethod(predictMigration(web).methods, 'crtr');
  t.ok(p.converges, p.reason);
  t.ok(p.downtimeMs < 10, `downtime ${p.downtimeMs}`);
  t.ok(p.bytes > 0.6 * 512 * MIB * 0.5, 'at least the checkpoint');
  t.match(p.reason, /checkpoint of 153\.6 MiB/);
});

t.test('CR/TR: a CPU-bound guest that replays no faster than it runs does not converge', async (t) => {
  const cpuBound: PredictionInputs = { ...web, busyFraction: 1, linkBytesPerSec: 12.5e6, rttMs: 40, dirtyWindows: [{ windowMs: 500, pages: 30_000 }, { windowMs: 2000, pages: 120_000 }] };
  const p = byMethod(predictMigration(cpuBound).methods, 'crtr');
  t.notOk(p.converges);
  t.ok(p.downtimeMs > 300, p.reason);
  t.match(p.reason, /never drains/);
});

t.test('CR/TR: hybrid delta rounds shrink the backlog of a slow replayer', async (t) => {
  // Replay at 1.1x; a small working set makes a delta far cheaper than replaying the backlog.
  const slow: PredictionInputs = { ...web, busyFraction: 1 / 1.1, linkBytesPerSec: 12.5e6, rttMs: 40, dirtyWindows: [{ windowMs: 500, pages: 500 }, { windowMs: 2000, pages: 800 }] };
  const p = byMethod(predictMigration(slow).methods, 'crtr');
  t.ok(p.rounds >= 1 && p.rounds <= DELTA_ROUNDS_MAX, `${p.rounds} delta rounds: ${p.reason}`);
  t.ok(p.converges, p.reason);
  const pure = byMethod(predictMigration({ ...slow, dirtyWindows: [{ windowMs: 500, pages: 70_000 }, { windowMs: 2000, pages: 130_000 }] }).methods, 'crtr');
  t.equal(pure.rounds, 0, 'every page dirty: a delta is as large as the checkpoint, so replay only');
  const logOnly = predictMigration(slow).methods.find((x) => x.method === 'crtr' && x.logOnlyCatchUp)!;
  t.equal(logOnly.rounds, 0, 'the log-only catch-up is predicted beside the hybrid one');
  t.ok(logOnly.totalTimeMs > p.totalTimeMs, 'replaying the whole backlog at 1.1x takes longer');
  t.same(
    predictMigration({ ...slow, hybridCatchUp: false }).methods.map((x) => `${x.method}${x.logOnlyCatchUp ? '-log' : ''}`),
    ['crtr-log', 'precopy', 'postcopy'],
    'agents without deltas: only the log-only CR/TR',
  );
});

t.test('CR/TR: a log larger than the link never drains', async (t) => {
  const p = byMethod(predictMigration({ ...web, logBytesPerSec: 20e6, linkBytesPerSec: 12.5e6 }).methods, 'crtr');
  t.notOk(p.converges);
  t.equal(p.downtimeMs, Infinity);
  t.match(p.reason, /log alone/);
});

t.test('copy-on-write stall: only past the pool', async (t) => {
  const d = derive({ ...web, dirtyWindows: [{ windowMs: 1000, pages: 60_000 }] });
  t.equal(cowStallSeconds({ ...web, cowPoolBytes: 0 }, d, 4), 0, 'an unbounded pool never stalls');
  t.equal(cowStallSeconds({ ...web, cowPoolBytes: 4096 * PAGES_512_MIB }, d, 4), 0, 'a pool as large as memory never fills');
  const stall = cowStallSeconds({ ...web, cowPoolBytes: 64 * MIB }, d, 4);
  t.ok(stall > 0 && stall < 4, `stall ${stall} s of a 4 s checkpoint`);
});

t.test('pre-copy, exactly: a guest that dirties nothing takes one round', async (t) => {
  const quiet: PredictionInputs = { ...web, dirtyWindows: [{ windowMs: 1000, pages: 0 }], rttMs: 1, linkBytesPerSec: 1e8 };
  const p = byMethod(predictMigration(quiet).methods, 'precopy');
  const nonZero = Math.round(PAGES_512_MIB * 0.6);
  const roundMs = ((nonZero * 2048 + PAGES_512_MIB * PAGE_BATCH_BYTES_PER_PAGE) / 1e8) * 1000;
  t.equal(p.rounds, 1);
  t.ok(Math.abs(p.downtimeMs - ((MACHINE_STATE_BYTES / 1e8) * 1000 + 2)) < 1e-9, `downtime ${p.downtimeMs}`);
  t.ok(Math.abs(p.totalTimeMs - (2 + roundMs + p.downtimeMs)) < 1e-6, `total ${p.totalTimeMs}`);
  t.match(p.reason, /0 dirty pages, fewer than 50/);
});

t.test('pre-copy: a guest that dirties faster than the link stops at 3x memory, over the limit', async (t) => {
  const muncher: PredictionInputs = { ...web, nonZeroFraction: 1, pageWireRatio: 1, busyFraction: 0.95, linkBytesPerSec: 12.5e6, rttMs: 40, dirtyWindows: [{ windowMs: 500, pages: 30_000 }, { windowMs: 2000, pages: 120_000 }] };
  const p = byMethod(predictMigration(muncher).methods, 'precopy');
  t.notOk(p.converges, p.reason);
  t.match(p.reason, /3x guest memory|rounds, the maximum/);
  t.ok(p.bytes >= 3 * 512 * MIB, 'at least 3x memory on the wire');
  t.ok(p.downtimeMs > 1000, `the last dirty set takes long: ${p.downtimeMs} ms`);
});

t.test('pre-copy: a web guest converges in a few rounds with a short downtime', async (t) => {
  const p = byMethod(predictMigration(web).methods, 'precopy');
  t.ok(p.converges, p.reason);
  t.ok(p.rounds > 1 && p.rounds <= 30, `${p.rounds} rounds`);
  t.equal(p.disruptionMs, p.downtimeMs, 'pre-copy disrupts only by its downtime');
});

t.test('post-copy: one round trip of downtime, faults on the pages touched before they are pushed', async (t) => {
  const p = byMethod(predictMigration({ ...web, rttMs: 40, linkBytesPerSec: 12.5e6 }).methods, 'postcopy');
  t.ok(Math.abs(p.downtimeMs - (40 + (MACHINE_STATE_BYTES / 12.5e6) * 1000)) < 1e-9, `downtime ${p.downtimeMs}`);
  t.ok(p.converges);
  t.ok(p.disruptionMs > p.downtimeMs + 40, `faults cost round trips: ${p.reason}`);
  // A straight-line working set (r pages/s over the whole memory) faults on about r T / 2 pages.
  const d = derive({ ...web, dirtyWindows: [{ windowMs: 500, pages: 500 }, { windowMs: 1000, pages: 1000 }] });
  const faults = postcopyFaults(d, 10);
  t.ok(Math.abs(faults - (d.workingSet.pagesPerSec * 10) / 2) / faults < 0.05, `${faults} faults`);
  t.equal(postcopyFaults(d, 0), 0);
});

t.test('recommend: least disruption among converging, available methods', async (t) => {
  const m = (method: MethodPrediction['method'], disruptionMs: number, extra: Partial<MethodPrediction> = {}): MethodPrediction => ({
    method,
    logOnlyCatchUp: false,
    available: true,
    converges: true,
    downtimeMs: disruptionMs,
    totalTimeMs: 1000,
    bytes: 1,
    disruptionMs,
    rounds: 0,
    reason: '',
    ...extra,
  });
  t.equal(recommend([m('crtr', 10), m('precopy', 20), m('postcopy', 30)]).recommended, 'crtr');
  t.equal(recommend([m('crtr', 10), m('precopy', 5), m('postcopy', 30)]).recommended, 'precopy');
  t.equal(recommend([m('crtr', 10, { available: false }), m('precopy', 20), m('postcopy', 30)]).recommended, 'precopy', 'an unavailable method is never chosen');
  t.equal(recommend([m('crtr', 10, { converges: false }), m('precopy', 20), m('postcopy', 30)]).recommended, 'precopy', 'nor one that does not converge');
  t.equal(recommend([m('crtr', 10), m('precopy', 20), m('postcopy', 6)]).recommended, 'crtr', 'post-copy must halve the disruption');
  const pc = recommend([m('crtr', 10), m('precopy', 20), m('postcopy', 4)]);
  t.equal(pc.recommended, 'postcopy', pc.reason);
  t.equal(recommend([m('crtr', 10, { totalTimeMs: 900 }), m('precopy', 10)]).recommended, 'crtr', 'a tie goes to the shorter total time');
  const none = recommend([m('crtr', 500, { converges: false }), m('precopy', 400, { converges: false })]);
  t.equal(none.recommended, 'precopy');
  t.match(none.reason, /no method converges/);
  t.equal(recommend([m('crtr', 1, { available: false })]).recommended, null);
  t.equal(recommend([m('crtr', 10), m('crtr', 5, { logOnlyCatchUp: true }), m('precopy', 20)]).recommended, 'crtr', 'the log-only CR/TR is for comparison');
  t.equal(recommend([m('crtr', 10, { logOnlyCatchUp: true }), m('precopy', 20)]).recommended, 'crtr', 'unless it is the only CR/TR the agents can do');
});

t.test('predictMigration: a guest only post-copy can move within the limit', async (t) => {
  const muncher: PredictionInputs = { ...web, nonZeroFraction: 1, pageWireRatio: 1, busyFraction: 1, linkBytesPerSec: 12.5e6, rttMs: 40, dirtyWindows: [{ windowMs: 500, pages: 30_000 }, { windowMs: 2000, pages: 120_000 }] };
  const p = predictMigration(muncher);
  t.notOk(byMethod(p.methods, 'crtr').converges);
  t.notOk(byMethod(p.methods, 'precopy').converges);
  t.equal(p.recommended, 'postcopy', p.reason);
  t.match(p.reason, /only post-copy converges/);
  t.same(
    p.methods.map((x) => x.method),
    ['crtr', 'crtr', 'precopy', 'postcopy'],
    'CR/TR hybrid, then log-only',
  );
});

t.test('predictMigration: the bandwidth cap limits the link', async (t) => {
  const capped = predictMigration({ ...web, maxBandwidthBytesPerSec: 10e6 });
  t.equal(capped.derived.linkBytesPerSec, 10e6);
  t.equal(predictMigration({ ...web, linkBytesPerSec: 0 }).derived.linkBytesPerSec, Infinity, 'nothing known: not limiting');
  t.ok(byMethod(capped.methods, 'crtr').totalTimeMs > byMethod(predictMigration(web).methods, 'crtr').totalTimeMs);
});

t.test('CR/TR: a replay barely faster than the guest drains past the maximum duration: forced then', async (t) => {
  // Replay at 1.01x drains the ~1.3 s backlog in about 128 s.
  const nearlyBound: PredictionInputs = { ...web, busyFraction: 0.99, hybridCatchUp: false, dirtyWindows: [{ windowMs: 500, pages: 30_000 }, { windowMs: 2000, pages: 120_000 }] };
  const within = byMethod(predictMigration(nearlyBound).methods, 'crtr');
  t.match(within.reason, /drains the .* backlog in/, 'within the default maximum (600 s): it drains');
  const plain = { ...nearlyBound, finalApproach: false };
  const p = byMethod(predictMigration({ ...plain, maxDurationMs: 60_000 }).methods, 'crtr');
  t.match(p.reason, /past the maximum duration/);
  t.ok(p.totalTimeMs <= 60_000 + p.downtimeMs + 1_000, `total ${p.totalTimeMs} ms: within the maximum duration`);
  t.ok(p.downtimeMs > within.downtimeMs, 'the forced stop replays what is left');
  const shorter = byMethod(predictMigration({ ...plain, maxDurationMs: 10_000 }).methods, 'crtr');
  t.ok(shorter.downtimeMs > p.downtimeMs, 'a shorter maximum leaves more to replay at the forced stop');
  // With the final approach (the default), what is left drains with the guest slowed: the
  // switchover comes with one unit left, and the work the guest gave up counts in its disruption.
  const approached = byMethod(predictMigration({ ...nearlyBound, maxDurationMs: 10_000 }).methods, 'crtr');
  t.match(approached.reason, /the final approach slows the guest to [0-9.]+ for/);
  t.equal(approached.downtimeMs, within.downtimeMs, 'one unit left, as when it drains');
  t.ok(approached.disruptionMs - approached.downtimeMs > shorter.disruptionMs - shorter.downtimeMs, 'the approach moves the backlog from the downtime into the throttled work');
  // At 1.01x the heaviest throttle gives up about the downtime it saves: (1 - f) / (r - f) = 0.99 of it.
  t.ok(approached.disruptionMs <= shorter.disruptionMs * 1.02, `disruption ${approached.disruptionMs} ms against ${shorter.disruptionMs} ms: about the same`);
});

t.test("qemu-native: QEMU's own pre-copy passes, predicted for a qemu guest only", async (t) => {
  // A 128 MiB qemu guest: its pages not sampled (all counted whole), its dirty rate QEMU's own (one window).
  const qemu: PredictionInputs = { ...web, memoryBytes: 128 * MIB, nonZeroFraction: 1, pageWireRatio: 1, dirtyWindows: [{ windowMs: 1000, pages: 256 }], available: ['qemu-native'], methods: ['qemu-native'], hybridCatchUp: false, cowPoolBytes: 0 };
  const p = predictMigration(qemu);
  t.same(p.methods.map((m) => m.method), ['qemu-native'], 'the methods the guest\'s driver can carry out, and no other');
  const m = p.methods[0]!;
  const header = QEMU_PAGE_HEADER_BYTES;
  t.ok(m.available && m.converges, `converges: ${m.reason}`);
  t.equal(m.rounds, 1, 'one pass over every page; what it dirtied meanwhile fits the limit, and goes at the switchover');
  t.match(m.reason, /the last 1\.1 MiB and the device state go in/, 'the 256 pages dirtied in the pass\'s second or so, whole with their headers');
  t.ok(m.bytes >= 32768 * (4096 + header) + QEMU_DEVICE_STATE_BYTES, 'every page at least once, whole, with its header, and the device state');
  t.ok(m.downtimeMs <= qemu.downtimeLimitMs && m.downtimeMs >= 2 * qemu.rttMs, `downtime ${m.downtimeMs.toFixed(1)} ms within the limit`);
  t.equal(m.disruptionMs, m.downtimeMs);
  t.equal(p.recommended, 'qemu-native');
  t.match(p.reason, /QEMU native converges/);

  // A guest that dirties its memory faster than the link drains it: QEMU's passes stop shrinking.
  const busy = predictMigration({ ...qemu, dirtyWindows: [{ windowMs: 1000, pages: 32768 }], linkBytesPerSec: 50e6 });
  const b = busy.methods[0]!;
  t.notOk(b.converges, `does not converge: ${b.reason}`);
  t.match(b.reason, /stopped shrinking/);
  t.ok(Number.isFinite(b.downtimeMs), 'forced, its downtime is what was left then');
  t.match(busy.reason, /no method converges/);

  t.same(predictMigration(web).methods.map((m) => m.method), ['crtr', 'crtr', 'precopy', 'postcopy'], 'a sim guest: its driver\'s methods, as before');
});
