// `npm run bench -- arbiter`: the failover arbiter (shared/arbiter/) against a private etcd on
// loopback (test/support/etcd.ts; Debian's etcd-server). Prints:
// - latencies: a plain etcd read (the baseline, same run), a claim, a go-live (read, lease grant,
//   compare-and-swap) and a release;
// - fencing, per lease TTL, over seeded trials: the primary's agent is cut off from etcd (its link
//   emulator resets and blocks) at a random point of its renewal cycle while a standby waits for
//   vacancy; from the cut to the primary's fence callback, from that callback to the standby's
//   go-live (the safety gap, which the timing argument says is at least the fence margin), and
//   from the cut to the go-live (the failover time, detection included);
// - a lease revoked behind the primary: from the revoke to its fence callback.
// Ends with one line: `arbiter: golive-p50 ... gap-min ... failover-max ...`.

import { parseArgs } from 'node:util';
import { EtcdArbiter } from '../shared/arbiter/etcd.js';
import { EtcdKv } from '../shared/arbiter/etcd-kv.js';
import type { Arbiter, PrimaryTerm } from '../shared/arbiter/types.js';
import { Random } from '../shared/random.js';
import { LinkEmulator } from '../shared/transport/link.js';
import { findExecutable } from '../test/support/debian.js';
import { ETCD_EXECUTABLE, ETCD_PACKAGE, type EtcdServer, startEtcd } from '../test/support/etcd.js';
import { sig, table } from './format.js';
import { fmtSummary, summarize } from './stats.js';

const USAGE = `usage: npm run bench -- arbiter [options]

  --ttl-ms LIST     lease TTLs of the fencing trials, ms, whole seconds (default 1000,2000)
  --trials N        fencing trials per TTL (default 10)
  --calls N         claims, go-lives and reads timed (default 200)
  --seed S          the trials' cut points (default: a random seed, printed)
  -h, --help        this text

Needs Debian's ${ETCD_PACKAGE} (the ${ETCD_EXECUTABLE} executable). Exits 1 without it, 2 on a bad option.`;

const KEY_PREFIX = '/bench';
const CALL_OPTIONS = { dialTimeoutMs: 2000, callTimeoutMs: 1000, keyPrefix: KEY_PREFIX };
/** Bound on one trial's events (a guard against a hang). */
const TRIAL_BOUND_MS = 30_000;

interface Options {
  ttlsMs: number[];
  trials: number;
  calls: number;
  seed: number;
}

function parse(argv: string[]): Options | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: { 'ttl-ms': { type: 'string' }, trials: { type: 'string' }, calls: { type: 'string' }, seed: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) return 'help';
  const integer = (text: string, what: string, min: number, max: number) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${what} ${text}: expected an integer from ${min} to ${max}`);
    return n;
  };
  const ttlsMs = (values['ttl-ms'] ?? '1000,2000').split(',').map((v) => integer(v, 'ttl-ms', 1000, 60_000));
  for (const ttl of ttlsMs) if (ttl % 1000 !== 0) throw new Error(`--ttl-ms ${ttl}: etcd leases last whole seconds`);
  return {
    ttlsMs,
    trials: integer(values.trials ?? '10', 'trials', 1, 1000),
    calls: integer(values.calls ?? '200', 'calls', 1, 100_000),
    seed: values.seed !== undefined ? integer(values.seed, 'seed', 0, 2 ** 32 - 1) : Random.seedFromOs(),
  };
}

function percentile(xs: number[], p: number): number {
  const v = [...xs].sort((a, b) => a - b);
  return v.length === 0 ? NaN : v[Math.min(v.length - 1, Math.ceil((p / 100) * v.length) - 1)];
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const start = performance.now();
  const value = await fn();
  return [value, performance.now() - start];
}

function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: nothing within ${TRIAL_BOUND_MS} ms`)), TRIAL_BOUND_MS)));
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
}

/** Read, claim, go-live and release latencies, against the same etcd, in one run. */
async function measureCalls(etcd: EtcdServer, calls: number): Promise<Record<string, number[]>> {
  const kv = new EtcdKv({ endpoints: [etcd.endpoint], ...CALL_OPTIONS });
  const a = new EtcdArbiter({ holderId: 'calls-a', leaseTtlMs: 2000, endpoints: [etcd.endpoint], ...CALL_OPTIONS });
  const b = new EtcdArbiter({ holderId: 'calls-b', leaseTtlMs: 2000, endpoints: [etcd.endpoint], ...CALL_OPTIONS });
  const samples: Record<string, number[]> = { 'etcd read (baseline)': [], claim: [], 'go-live': [], release: [] };
  try {
    await kv.range(`${KEY_PREFIX}/warm-up/`);
    for (let i = 0; i < calls; i++) {
      samples['etcd read (baseline)'].push((await timed(() => kv.range(`${KEY_PREFIX}/guests/none/`)))[1]);
      const [term, claimMs] = await timed(() => a.claim(`calls-${i}`));
      samples.claim.push(claimMs);
      samples.release.push((await timed(() => term.release()))[1]);
      const [live, goLiveMs] = await timed(() => b.goLive(`calls-${i}`, 1));
      samples['go-live'].push(goLiveMs);
      await live.retire();
    }
  } finally {
    await Promise.all([a.close(), b.close(), kv.close()]);
  }
  return samples;
}

interface Trial {
  cutToFenceMs: number;
  fenceToLiveMs: number;
  cutToLiveMs: number;
  reason: string;
}

/** One cut-off primary: a through a link that is cut, b straight to etcd, waiting. */
async function cutTrial(etcd: EtcdServer, ttlMs: number, index: number, offsetMs: number): Promise<Trial> {
  const link = new LinkEmulator({ listen: '127.0.0.1:0', target: etcd.endpoint.replace('http://', ''), profile: 'loopback' });
  const address = await link.start();
  const a = new EtcdArbiter({ holderId: `cut-a-${ttlMs}-${index}`, leaseTtlMs: ttlMs, endpoints: [`http://${address}`], ...CALL_OPTIONS });
  const b = new EtcdArbiter({ holderId: `cut-b-${ttlMs}-${index}`, leaseTtlMs: ttlMs, endpoints: [etcd.endpoint], ...CALL_OPTIONS });
  const guestId = `cut-${ttlMs}-${index}`;
  try {
    const term = await a.claim(guestId);
    let fencedAtMs = NaN;
    term.onFenced(() => (fencedAtMs = performance.now()));
    const vacancy = b.waitForVacancy(guestId);
    // A random point of the renewal cycle (renewals every TTL / 4), some cycles after the claim.
    await new Promise((resolve) => setTimeout(resolve, ttlMs + offsetMs));
    const cutAtMs = performance.now();
    link.cut({ block: true });
    const event = await within(term.fenced, 'fence');
    const view = await within(vacancy, 'vacancy');
    const live = await b.goLive(guestId, view.record!.epoch);
    const liveAtMs = performance.now();
    await live.retire();
    return { cutToFenceMs: fencedAtMs - cutAtMs, fenceToLiveMs: liveAtMs - fencedAtMs, cutToLiveMs: liveAtMs - cutAtMs, reason: event.reason };
  } finally {
    link.restore();
    await Promise.all([a.close(), b.close()]);
    await link.close();
  }
}

/** One lease revoked behind its holder: from the revoke to the holder's fence callback. */
async function revokeTrial(kv: EtcdKv, a: Arbiter, index: number): Promise<[number, string]> {
  const guestId = `revoke-${index}`;
  const term: PrimaryTerm = await a.claim(guestId);
  let fencedAtMs = NaN;
  term.onFenced(() => (fencedAtMs = performance.now()));
  const { entries } = await kv.range(`${KEY_PREFIX}/guests/${guestId}/`);
  const leaseId = entries.find((e) => e.key.endsWith('/primary'))!.leaseId;
  const revokedAtMs = performance.now();
  await kv.leaseRevoke(leaseId);
  const event = await within(term.fenced, 'fence');
  return [fencedAtMs - revokedAtMs, event.reason];
}

function printCalls(samples: Record<string, number[]>): void {
  const rows = Object.entries(samples).map(([name, xs]) => [name, String(xs.length), sig(percentile(xs, 50)), sig(percentile(xs, 99)), sig(Math.max(...xs))]);
  console.log(table(['call', 'n', 'p50 ms', 'p99 ms', 'max ms'], rows));
}

export async function runArbiterBench(argv: string[]): Promise<number> {
  let options: Options | 'help';
  try {
    options = parse(argv);
  } catch (error) {
    console.error(`bench arbiter: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (options === 'help') {
    console.log(USAGE);
    return 0;
  }
  if (findExecutable(ETCD_EXECUTABLE) === null) {
    console.error(`bench arbiter: needs Debian package ${ETCD_PACKAGE} (no ${ETCD_EXECUTABLE} executable on PATH): apt-get install ${ETCD_PACKAGE}`);
    return 1;
  }
  const etcd = await startEtcd();
  const keepOpen = setInterval(() => undefined, 1000);
  try {
    return await runAgainst(etcd, options);
  } finally {
    clearInterval(keepOpen);
    await etcd.stop();
  }
}

async function runAgainst(etcd: EtcdServer, options: Options): Promise<number> {
  console.log(`etcd ${etcd.endpoint} (one member, heartbeat 10 ms, election timeout 100 ms); seed ${options.seed}`);
  const samples = await measureCalls(etcd, options.calls);
  printCalls(samples);
  const golive = samples['go-live'];
  console.log(`go-live / etcd read: ${(percentile(golive, 50) / percentile(samples['etcd read (baseline)'], 50)).toFixed(2)}× at p50\n`);

  const random = new Random(options.seed);
  const rows: string[][] = [];
  let gapMinMs = Infinity;
  let failoverMaxMs = 0;
  for (const ttlMs of options.ttlsMs) {
    const trials: Trial[] = [];
    for (let i = 0; i < options.trials; i++) trials.push(await cutTrial(etcd, ttlMs, i, random.nextInt(ttlMs / 4)));
    const reasons = [...new Set(trials.map((x) => x.reason))].join(',');
    const s = (f: (x: Trial) => number) => fmtSummary(summarize(trials.map(f)));
    rows.push([String(ttlMs), String(ttlMs / 4), String(trials.length), s((x) => x.cutToFenceMs), s((x) => x.fenceToLiveMs), s((x) => x.cutToLiveMs), reasons]);
    gapMinMs = Math.min(gapMinMs, ...trials.map((x) => x.fenceToLiveMs));
    failoverMaxMs = Math.max(failoverMaxMs, ...trials.map((x) => x.cutToLiveMs));
  }
  console.log('primary cut off from etcd (median (min–max) ms over the trials):');
  console.log(table(['TTL ms', 'margin ms', 'trials', 'cut → fenced', 'fenced → standby live', 'cut → standby live', 'reason'], rows));

  const kv = new EtcdKv({ endpoints: [etcd.endpoint], ...CALL_OPTIONS });
  const holder = new EtcdArbiter({ holderId: 'revoke-a', leaseTtlMs: 2000, endpoints: [etcd.endpoint], ...CALL_OPTIONS });
  const revokes: number[] = [];
  const reasons = new Set<string>();
  try {
    for (let i = 0; i < options.trials; i++) {
      const [ms, reason] = await revokeTrial(kv, holder, i);
      revokes.push(ms);
      reasons.add(reason);
    }
  } finally {
    await Promise.all([holder.close(), kv.close()]);
  }
  console.log(`\nlease revoked behind the primary → fenced: ${fmtSummary(summarize(revokes), 1)} ms over ${revokes.length} (${[...reasons].join(',')})`);
  console.log(
    `arbiter: golive-p50 ${sig(percentile(golive, 50))} ms golive-p99 ${sig(percentile(golive, 99))} ms revoke-to-fence-p50 ${sig(percentile(revokes, 50))} ms gap-min ${sig(gapMinMs)} ms failover-max ${sig(failoverMaxMs)} ms over ${options.trials * options.ttlsMs.length} cuts`,
  );
  return 0;
}
