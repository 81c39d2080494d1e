// `npm run bench -- dr`: continuous protection, per profile and link. A primary agent runs a guest
// unprotected for a fixed time (the same run's baseline), then protects it (sync mode) to a DR
// agent through the link emulator for that time again; then the primary agent is killed (-9) at a
// seeded moment and the guest failed over at the DR agent.
//
// The baseline is the same guest before its protection, not a twin running beside it: on a
// two-core machine a twin's vCPU, the guest's and the standby's replay made three CPU-bound
// threads on two cores, and the standby, on a host of its own in a real deployment, fell behind
// for want of a core (its replay lag then slows the guest, by design).
//
// Per cell: the log's bandwidth; the guest's performance (its work per second, in units run less
// the share of them its throttle took, protected / unprotected) and the instructions it ran per
// second, protected / unprotected (a unit's budget follows the host's speed: a guest given less of
// a core keeps its schedule of units with less work done);
// the standby's lag (received, replayed) p50/p99 sampled every 50 ms; the output delay
// (production to release) p50/p99; the RTO (kill to the standby running: detection included, here
// the DR agent seeing the stream break and the failover call, with no arbiter); the outputs a
// client saw released and the standby did not reproduce (must be 0).
//
// Its last line: `dr: perf <min ratio> lag-p99 <ms> output-delay-p99 <ms> rto-max <ms> lost-outputs <n> over <k> crashes`.

import { Random } from '../shared/random.js';
import { parseArgs } from 'node:util';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';
import type { LinkProfileName } from '../shared/transport/link.js';
import { PROFILE_NAMES } from '../shared/driver/sim/profiles.js';
import { RunProcesses, TASKSET } from './run-processes.js';
import type { RunSpec } from './run-record.js';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { findExecutable } from '../test/support/debian.js';
import { ETCD_EXECUTABLE, ETCD_PACKAGE, type EtcdServer, startEtcd } from '../test/support/etcd.js';

interface Cell {
  profile: string;
  link: LinkProfileName;
  logMBps: number;
  perf: number;
  /** Instructions run per second, protected / unprotected. */
  instructionsRatio: number;
  lagP50: number;
  lagP99: number;
  replayLagP99: number;
  delayP50: number;
  delayP99: number;
  rtoMs: number;
  seen: number;
  lost: number;
  /** Set when the primary stopped its copy before the kill (fenced: its lease not renewed in time on a loaded host). */
  fencedEarly: string;
  /** From Protect until the standby had caught up (the checkpoint restored, the log behind it received and replayed). */
  syncMs: number;
}

const ENDED = new Set<number>([pb2.ProtectionState.PROTECTION_STATE_FAILED_OVER, pb2.ProtectionState.PROTECTION_STATE_STOPPED]);
/** The standby's replay lag under which it has caught up with the backlog the checkpoint left. */
const STEADY_REPLAY_LAG_MS = 250;
/** How long the first checkpoint may take before the cell is given up. */
const PROTECT_WAIT_MS = 120_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const percentile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

interface Work {
  /**
   * The units it ran, less the share a throttle took from them (a protection slows its guest past
   * its objective or its replay lag bound; a slowed unit still counts as run, with less work done).
   */
  units: number;
  /** The instructions its units ran: what a slower share of a core takes away even when the units keep their schedule. */
  instructions: number;
  atMs: number;
}

/** The work the guest did so far. */
async function work(ctl: grpc.Client, id: string): Promise<Work> {
  const res = await unary(ctl, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 10_000, 'guests');
  const g = res.guests.find((x) => x.id === id);
  if (g === undefined) return { units: 0, instructions: 0, atMs: performance.now() };
  return { units: Number(g.unitsRun) - (g.throttledMs ?? 0) / Math.max(1, g.unitMs ?? 0), instructions: g.instructionsRun ?? 0, atMs: performance.now() };
}

/** The work per ms between two readings. */
const rates = (a: Work, b: Work) => {
  const ms = Math.max(1, b.atMs - a.atMs);
  return { units: (b.units - a.units) / ms, instructions: (b.instructions - a.instructions) / ms };
};

/**
 * The guest's work per ms over `ms` from now, asked two questions every 50 ms meanwhile as the
 * protected window asks its agent (GetProtection and GetOutputs): the agent answers them on the
 * guest's core in both windows.
 */
async function workPerMs(ctl: grpc.Client, id: string, ms: number): Promise<{ units: number; instructions: number }> {
  const a = await work(ctl, id);
  for (const end = performance.now() + ms; performance.now() < end; ) {
    await unary(ctl, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 5_000, 'guests');
    await unary(ctl, controlServiceV2.getOutputs, pb2.GetOutputsRequest.create({ guestId: id, afterSequence: -1, max: 1 }), 5_000, 'outputs');
    await sleep(50);
  }
  return rates(a, await work(ctl, id));
}

async function runCell(profile: string, link: LinkProfileName, seconds: number, memoryMib: number, next: () => number, config: string | null, pin: boolean): Promise<Cell> {
  const run = new RunProcesses();
  try {
    const extra = config === null ? [] : ['--insecure-plaintext', '--config', config];
    const { target, targetAddress, control: p } = await run.start({ link, linkMode: 'child' } as RunSpec, extra);
    if (pin) {
      // Two hosts: the primary on core 0; the DR agent and the link (the network) on core 1.
      run.pin('source', '0');
      run.pin('target', '1');
      run.pin('link', '1');
      run.pin('harness', '1');
    }
    const d = makeClient(controlServiceV2, 'Control', target.address, grpc.credentials.createInsecure());
    // Ids of their own per cell: the arbiter keeps a guest's records (its last primary) across cells.
    const guest = `p-${profile}-${link}`;
    await unary(p, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: guest, profile, memoryBytes: memoryMib * 2 ** 20 }), 60_000, 'start guest');
    await sleep(1_000); // its vCPU thread started and its speed measured
    const unprotected = await workPerMs(p, guest, seconds * 1000);
    await unary(p, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId: guest, drAddress: targetAddress, mode: pb2.ProtectionMode.PROTECTION_MODE_SYNC }), 10_000, 'protect');
    // Measured in the steady state: once the checkpoint is restored, the log that queued behind it
    // has reached the standby (the lag within the objective: PROTECTED), the standby has replayed
    // it (its replay lag under STEADY_REPLAY_LAG_MS), and the guest, slowed meanwhile if the
    // replay lag passed its bound, has its full speed back (a step every monitor tick).
    const protectAt = Date.now();
    for (const deadline = Date.now() + PROTECT_WAIT_MS; ; ) {
      const pr = await unary(p, controlServiceV2.getProtection, pb2.GetProtectionRequest.create({ guestId: guest }), 5_000, 'get');
      if (pr.state === pb2.ProtectionState.PROTECTION_STATE_PROTECTED && pr.lagReplayedMs <= STEADY_REPLAY_LAG_MS && pr.throttle >= 1) break;
      if (ENDED.has(pr.state) || Date.now() > deadline) throw new Error(`${profile}/${link}: the protection never became protected (${pr.detail || 'still syncing'})`);
      await sleep(50);
    }
    const syncMs = Date.now() - protectAt;
    const before = await work(p, guest);
    const lag: number[] = [];
    const replayLag: number[] = [];
    const log: number[] = [];
    const seen = new Map<number, string>();
    let after = -1;
    const killAtMs = Date.now() + seconds * 1000 * (0.8 + 0.2 * next());
    let delays = { p50: 0, p99: 0 };
    let fencedEarly = '';
    while (Date.now() < killAtMs) {
      const pr = await unary(p, controlServiceV2.getProtection, pb2.GetProtectionRequest.create({ guestId: guest }), 5_000, 'get');
      if (ENDED.has(pr.state)) {
        fencedEarly = pr.detail;
        break;
      }
      lag.push(pr.lagReceivedMs);
      replayLag.push(pr.lagReplayedMs);
      log.push(pr.logBytesPerSec);
      const out = await unary(p, controlServiceV2.getOutputs, pb2.GetOutputsRequest.create({ guestId: guest, afterSequence: after, max: 65_536 }), 5_000, 'outputs');
      for (const o of out.packets) seen.set(Number(o.sequence), o.payload ?? '');
      if (out.packets.length > 0) after = Number(out.packets.at(-1)!.sequence);
      delays = { p50: out.delayP50Ms, p99: out.delayP99Ms };
      await sleep(50);
    }
    const protectedRates = rates(before, await work(p, guest));
    const perf = protectedRates.units / unprotected.units;
    const instructionsRatio = protectedRates.instructions / Math.max(1e-9, unprotected.instructions);
    const killedAt = performance.now();
    if (fencedEarly === '') run.kill('source');
    let rtoMs = Number.NaN;
    for (let i = 0; i < 1_000 && Number.isNaN(rtoMs); i++) {
      // With an arbiter the standby goes live on its own; without one, an operator's failover (asked at once).
      const ok =
        config !== null
          ? (await unary(d, controlServiceV2.getProtection, pb2.GetProtectionRequest.create({ guestId: guest }), 5_000, 'get')).state === pb2.ProtectionState.PROTECTION_STATE_FAILED_OVER
          : await unary(d, controlServiceV2.failover, pb2.FailoverRequest.create({ guestId: guest }), 10_000, 'failover').then(
              () => true,
              () => false,
            );
      if (ok) rtoMs = fencedEarly === '' ? performance.now() - killedAt : Number.NaN;
      if (ok && fencedEarly !== '') break;
      else await sleep(10);
    }
    const there = await unary(d, controlServiceV2.getOutputs, pb2.GetOutputsRequest.create({ guestId: guest, afterSequence: -1, max: 65_536 }), 5_000, 'outputs there');
    const reproduced = new Map(there.packets.map((o) => [Number(o.sequence), o.payload]));
    const firstUnit = Math.min(...there.packets.map((o) => Number(o.unit)));
    const minSequence = Math.min(...there.packets.map((o) => Number(o.sequence)));
    // Outputs released before the standby's first unit were released before the protection began.
    const checked = [...seen].filter(([sequence]) => sequence >= minSequence || there.packets.length === 0);
    const lost = checked.filter(([sequence, payload]) => reproduced.get(sequence) !== payload).length;
    void firstUnit;
    d.close();
    return { profile, link, logMBps: percentile(log, 0.5) / 1e6, perf, instructionsRatio, lagP50: percentile(lag, 0.5), lagP99: percentile(lag, 0.99), replayLagP99: percentile(replayLag, 0.99), delayP50: delays.p50, delayP99: delays.p99, rtoMs, seen: checked.length, lost, fencedEarly, syncMs };
  } finally {
    await run.stop();
  }
}

export async function runDrBench(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      profiles: { type: 'string', default: 'web,db,compile,mmuncher' },
      links: { type: 'string', default: 'lan,wan' },
      seconds: { type: 'string', default: '10' },
      'memory-mib': { type: 'string', default: '256' },
      seed: { type: 'string', default: '20261130' },
      arbiter: { type: 'string', default: 'etcd' },
      'no-pin': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log('usage: npm run bench -- dr [--profiles web,db,compile,mmuncher] [--links lan,wan] [--seconds 10] [--memory-mib 256] [--seed N] [--arbiter etcd|none] [--no-pin]');
    return 0;
  }
  const profiles = values.profiles!.split(',').filter((p) => p !== '');
  for (const p of profiles) if (!PROFILE_NAMES.includes(p as never)) throw new Error(`unknown profile '${p}'`);
  const links = values.links!.split(',') as LinkProfileName[];
  const rng = new Random(Number(values.seed));
  const next = () => rng.nextFloat();
  const cells: Cell[] = [];
  const failed: string[] = [];
  // Automatic failover needs the arbiter: a private etcd on loopback (Debian's etcd-server), 1 s leases.
  let etcd: EtcdServer | null = null;
  let config: string | null = null;
  let dir: string | null = null;
  if (values.arbiter === 'etcd' && findExecutable(ETCD_EXECUTABLE) !== null) {
    etcd = await startEtcd();
    dir = mkdtempSync(join(tmpdir(), 'vmmigrate-dr-'));
    config = join(dir, 'agent.yaml');
    writeFileSync(config, `arbiter:\n  kind: etcd\n  endpoints: ["${etcd.endpoint}"]\n  leaseTtlMs: 1000\n`);
  } else if (values.arbiter === 'etcd') {
    console.log(`dr: no etcd here (Debian's ${ETCD_PACKAGE}): failover is manual, asked at once after the kill`);
  }
  // Two hosts on two cores (at least two, and taskset): the standby's replay then takes no core from
  // the guest it protects, as on a DR host of its own. --no-pin lets them share both.
  const pin = !values['no-pin'] && availableParallelism() >= 2 && existsSync(TASKSET);
  const failover = config === null ? 'manual failover (asked at once)' : 'automatic failover (etcd arbiter, 1 s lease)';
  console.log(`dr: ${profiles.length} profiles x ${links.length} links, ${values.seconds} s protected each (sync), ${values['memory-mib']} MiB guests, ${failover}, ${pin ? 'primary on core 0, DR agent and link on core 1' : 'agents sharing every core'}, seed ${values.seed}`);
  console.log('| profile | link | sync s | log MB/s | perf | instructions | lag p50 / p99 ms | replay lag p99 ms | output delay p50 / p99 ms | RTO ms | outputs seen | lost |');
  console.log('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const link of links) {
    for (const profile of profiles) {
      let c: Cell;
      try {
        c = await runCell(profile, link, Number(values.seconds), Number(values['memory-mib']), next, config, pin);
      } catch (error) {
        // One cell that could not be measured (a primary that fenced itself while syncing on a
        // loaded host) is reported, and the others still run.
        const why = error instanceof Error ? error.message : String(error);
        failed.push(`${profile}/${link}: ${why}`);
        console.log(`| ${profile} | ${link} | not measured: ${why} |`);
        continue;
      }
      cells.push(c);
      const rto = Number.isFinite(c.rtoMs) ? c.rtoMs.toFixed(0) : '-';
      console.log(`| ${c.profile} | ${c.link} | ${(c.syncMs / 1000).toFixed(1)} | ${c.logMBps.toFixed(2)} | ${c.perf.toFixed(3)} | ${c.instructionsRatio.toFixed(3)} | ${c.lagP50.toFixed(0)} / ${c.lagP99.toFixed(0)} | ${c.replayLagP99.toFixed(0)} | ${c.delayP50.toFixed(1)} / ${c.delayP99.toFixed(1)} | ${rto} | ${c.seen} | ${c.lost} |`);
    }
  }
  for (const c of cells.filter((x) => x.fencedEarly !== '')) console.log(`${c.profile}/${c.link}: not killed: the primary stopped its copy first (${c.fencedEarly}); the standby went live on its own, its outputs checked all the same`);
  for (const f of failed) console.log(`not measured: ${f}`);
  const min = Math.min(...cells.map((c) => c.perf));
  const killed = cells.filter((c) => c.fencedEarly === '');
  const max = (f: (c: Cell) => number, of = cells) => Math.max(...of.map(f));
  const lost = cells.reduce((n, c) => n + c.lost, 0);
  await etcd?.stop();
  if (dir !== null) rmSync(dir, { recursive: true, force: true });
  console.log(`dr: perf ${min.toFixed(3)} lag-p99 ${max((c) => c.lagP99).toFixed(0)} output-delay-p99 ${max((c) => c.delayP99).toFixed(1)} rto-max ${max((c) => c.rtoMs, killed).toFixed(0)} lost-outputs ${lost} over ${killed.length} crashes`);
  return lost === 0 && failed.length === 0 ? 0 : 1;
}
