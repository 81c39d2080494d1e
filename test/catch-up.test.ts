// The hybrid catch-up's cost model (shared/catch-up.ts): replay the backlog or send a delta.
import t from 'tap';
import { type CatchUpInputs, chooseCatchUp, DELTA_BACKLOG_UNITS_MIN, DELTA_MARGIN, DELTA_ROUNDS_MAX, deltaCostMs, replayCatchUpMs } from '../shared/catch-up.js';

const base: CatchUpInputs = {
  backlogUnits: 500, // 5 s of guest time at 10 ms units
  unitMs: 10,
  replayRate: 1.1,
  deltaPages: 25_000, // ~100 MB raw
  pageWireBytes: 2048, // lz4 halves it: ~51 MB on the wire
  restoreBytesPerSec: 0,
  throughputBytesPerSec: 100e6,
  rttMs: 0.2,
  roundsTaken: 0,
};

t.test('deltaCostMs: sending and restoring overlap, the slower sets the pace, plus a round trip', async (t) => {
  t.equal(deltaCostMs({ ...base, deltaPages: 1000, pageWireBytes: 1000, throughputBytesPerSec: 1e6, rttMs: 10 }), 1010, '1 MB at 1 MB/s + 10 ms');
  t.equal(deltaCostMs({ ...base, deltaPages: 1000, pageWireBytes: 1000, throughputBytesPerSec: 1e6, restoreBytesPerSec: 4096e3 / 2, rttMs: 0 }), 2000, 'a restore slower than the link sets the pace');
  t.equal(deltaCostMs({ ...base, throughputBytesPerSec: 0 }), Infinity, 'no throughput measured: unknown cost');
});

t.test('replayCatchUpMs: the backlog drains at r - 1, never when r <= 1', async (t) => {
  t.equal(replayCatchUpMs(1000, 2), 1000);
  t.equal(replayCatchUpMs(1000, 1.5), 2000);
  t.equal(replayCatchUpMs(1000, 1), Infinity);
  t.equal(replayCatchUpMs(1000, 0.8), Infinity);
});

t.test('chooseCatchUp: a CPU-bound guest with a large backlog takes a delta', async (t) => {
  const d = chooseCatchUp(base);
  t.equal(d.way, 'delta', d.reason);
  t.equal(d.backlogMs, 5000);
  t.ok(Math.abs(d.deltaMs - 512.2) < 0.01, `delta ${d.deltaMs} ms: 51.2 MB at 100 MB/s + RTT`);
  t.ok(d.deltaCatchUpMs < d.replayCatchUpMs, 'catching up by delta is sooner');
  t.match(d.reason, /^delta: backlog 5000 ms/);
});

t.test('chooseCatchUp: a guest that replays fast keeps replaying', async (t) => {
  // web-like: replays at ~3x; a 1 s backlog drains in 0.5 s, a 0.5 s delta would cost 1.5 s weighted.
  const d = chooseCatchUp({ ...base, backlogUnits: 100, replayRate: 3 });
  t.equal(d.way, 'replay', d.reason);
  t.equal(d.replayCatchUpMs, 500);
});

t.test('chooseCatchUp: the delta must win by the margin', async (t) => {
  // deltaMs = 100 ms exactly (no RTT): weighted = 100 * r * margin.
  const at = { ...base, deltaPages: 1000, pageWireBytes: 10_000, throughputBytesPerSec: 100e6, rttMs: 0, replayRate: 1.2 };
  const threshold = 100 * 1.2 * DELTA_MARGIN; // 150 ms of backlog
  t.equal(chooseCatchUp({ ...at, backlogUnits: threshold / 10 }).way, 'replay', 'at the threshold: replay');
  t.equal(chooseCatchUp({ ...at, backlogUnits: threshold / 10 + 1 }).way, 'delta', 'past it: delta');
});

t.test('chooseCatchUp: when replay never catches up, a delta still pays if it leaves less backlog', async (t) => {
  const slow = { ...base, replayRate: 0.95 };
  const d = chooseCatchUp(slow);
  t.equal(d.way, 'delta', 'D = 512 ms < 5 s backlog / margin');
  t.equal(d.replayCatchUpMs, Infinity);
  t.equal(d.deltaCatchUpMs, Infinity);
  // A delta as large as the backlog (every page dirty on a memory-bound guest) does not.
  t.equal(chooseCatchUp({ ...slow, deltaPages: 250_000 }).way, 'replay', 'the delta would rebuild as much backlog as it removes');
});

t.test('chooseCatchUp: guards', async (t) => {
  t.match(chooseCatchUp({ ...base, replayRate: 0 }), { way: 'replay', reason: /not measured/ });
  t.match(chooseCatchUp({ ...base, roundsTaken: DELTA_ROUNDS_MAX }), { way: 'replay', reason: /rounds taken/ });
  t.match(chooseCatchUp({ ...base, backlogUnits: DELTA_BACKLOG_UNITS_MIN - 1 }), { way: 'replay', reason: /small/ });
  t.match(chooseCatchUp({ ...base, throughputBytesPerSec: 0 }), { way: 'replay', reason: /throughput/ });
  t.equal(chooseCatchUp({ ...base, deltaPages: 0 }).way, 'delta', 'nothing dirty: a delta of just the machine state');
});

t.test('chooseCatchUp: a guest slower than its schedule (a busy host) drains faster; the rule uses max(r, g)', async (t) => {
  t.equal(replayCatchUpMs(1000, 1, 0.5), 2000, 'replaying at 1x while the guest runs at 0.5x drains at 0.5');
  const slowGuest = chooseCatchUp({ ...base, replayRate: 1.0, guestRate: 0.5 });
  t.equal(slowGuest.replayCatchUpMs, 10_000);
  t.ok(Number.isFinite(slowGuest.deltaCatchUpMs));
  // A replica that drains slower than the guest records: a delta that leaves g * D < B / margin pays.
  t.equal(chooseCatchUp({ ...base, replayRate: 0.4, guestRate: 0.9, deltaPages: 25_000 }).way, 'delta');
  t.equal(chooseCatchUp({ ...base, replayRate: 0.4, guestRate: 0.9, deltaPages: 250_000 }).way, 'replay');
});

t.test('chooseCatchUp: a log that fills the link alone takes no delta (the switchover could never go through)', async (t) => {
  const d = chooseCatchUp({ ...base, logBytesPerSec: 15e6, throughputBytesPerSec: 4e6, pageWireBytes: 100 });
  t.equal(d.way, 'replay');
  t.match(d.reason, /the log alone \(15\.0 MB\/s\) fills the link \(4\.0 MB\/s\)/);
  t.equal(chooseCatchUp({ ...base, logBytesPerSec: 1e6 }).way, 'delta', 'a log well within the link: the delta as before');
});
