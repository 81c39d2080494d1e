// `node dist/bench/qemu-rr.js [options]`: record/replay migration of the real test guest
// (test/support/initramfs.ts: Debian's kernel and a busybox initramfs, 128 MiB, one vCPU, TCG)
// between two QEMUs on this machine (shared/driver/qemu/rr/), once per checkpoint kind:
// - init: the checkpoint is the snapshot saved when recording started (icount 0): the target
//   replays the guest's whole life, boot included, before it can follow;
// - savevm: the checkpoint is a snapshot saved on the recorder when the migration starts (the
//   guest pauses for it): the target replays from there.
// Each run boots the guest recording, starts the migration once it printed --start-ticks ticks,
// follows for at least --follow-min-ms and until the target is within --lag-ms of the source (or
// --follow-max-ms), switches over, and waits for --live-ticks ticks from the live guest. Prints
// per run: checkpoint bytes, log bytes and rate, replay speed against recording, the target's
// lag, the downtime (source stopped -> live QEMU running, and its parts) and the total time;
// then whether the guest continued (one boot, counter consecutive, pattern intact). Its last
// line: `qemu-rr: <k> migrations of a real guest, <c> continued`.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type CheckpointChoice, type IcountSample, median, msAtIcount, RR_DEFAULTS, type RrMigrationReport, type RrQemu, runRrMigration } from '../shared/driver/qemu/rr/index.js';
import { buildGuestImage, parseTicks } from '../test/support/initramfs.js';
import { afterTicks, type Continuity, continuityOf, rrMachineOf, skipUnlessRrPackages } from '../test/support/qemu-rr.js';
import { MB_BYTES, sig } from './format.js';

const USAGE = `usage: node dist/bench/qemu-rr.js [options]

  --checkpoint LIST   init, savevm or both (default init,savevm)
  --start-ticks N     the migration starts once the guest printed N ticks (default 2)
  --follow-min-ms N   the target follows at least this long (default 5000)
  --follow-max-ms N   and at most this long, whatever its lag (default 120000)
  --lag-ms N          switch over once the target is this close behind (default 1000)
  --live-ticks N      ticks awaited from the live guest (default 4)
  --shift S           icount shift: auto, or a fixed N (2^N ns per instruction) (default auto)
  -h, --help          this text

Needs Debian's qemu-system-x86, linux-image-amd64, busybox-static and qemu-utils. Exits 1
without them or when a guest did not continue, 2 on a bad option.`;

interface Options {
  checkpoints: CheckpointChoice[];
  startTicks: number;
  followMsMin: number;
  followMsMax: number;
  lagMsMax: number;
  liveTicks: number;
  shift: 'auto' | number;
}

function parse(argv: string[]): Options | 'help' {
  const { values } = parseArgs({ args: argv, strict: true, options: { checkpoint: { type: 'string' }, 'start-ticks': { type: 'string' }, 'follow-min-ms': { type: 'string' }, 'follow-max-ms': { type: 'string' }, 'lag-ms': { type: 'string' }, 'live-ticks': { type: 'string' }, shift: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) return 'help';
  const integer = (text: string | undefined, fallback: number, what: string, min: number, max: number) => {
    const n = text === undefined ? fallback : Number(text);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${what} ${text}: expected an integer from ${min} to ${max}`);
    return n;
  };
  const checkpoints = (values.checkpoint ?? 'init,savevm').split(',');
  for (const c of checkpoints) if (c !== 'init' && c !== 'savevm') throw new Error(`--checkpoint ${c}: expected init or savevm`);
  return {
    checkpoints: checkpoints as CheckpointChoice[],
    startTicks: integer(values['start-ticks'], 2, 'start-ticks', 1, 1000),
    followMsMin: integer(values['follow-min-ms'], 5000, 'follow-min-ms', 0, 3_600_000),
    followMsMax: integer(values['follow-max-ms'], 120_000, 'follow-max-ms', 1000, 3_600_000),
    lagMsMax: integer(values['lag-ms'], 1000, 'lag-ms', 1, 600_000),
    liveTicks: integer(values['live-ticks'], 4, 'live-ticks', 1, 100),
    shift: values.shift === undefined || values.shift === 'auto' ? 'auto' : integer(values.shift, 0, 'shift', 0, 10),
  };
}

const sec = (ms: number) => `${sig(ms / 1000)} s`;
const mb = (bytes: number) => `${sig(bytes / MB_BYTES)} MB`;
const minstr = (n: number) => `${sig(n / 1e6)} M instructions`;

/** The figures of one run, one per line. */
function describe(r: RrMigrationReport, c: Continuity): string[] {
  const s = r.source;
  const t = r.target;
  const lagsMs = r.lags.map((l) => l.ms);
  const lagsIcount = r.lags.map((l) => l.icount);
  const last = r.lags.at(-1);
  const speed = (x: { ratio: number; instructions: number; replayMs: number }) => (x.instructions === 0 ? 'n/a' : `${sig(x.ratio)}x (${minstr(x.instructions)} in ${sec(x.replayMs)})`);
  const d = r.downtimeParts;
  return [
    `  migration started       ${sec(r.startMs)} after the recorder started`,
    `  checkpoint              ${mb(s.checkpoint.bytes)} qcow2 ('${s.checkpoint.tag}' at icount ${s.checkpoint.icount}), source paused ${sig(s.checkpoint.pauseMs)} ms, sent in ${sig(s.checkpoint.sentMs)} ms`,
    `  log                     ${mb(s.logBytes)} in all, ${mb(s.logBytesSent)} sent in ${s.slicesSent} slices (${s.slicesDropped} before the checkpoint not sent); ${mb(s.wireBytes)} on the stream`,
    `  log rate                ${mb(r.logBytesAtStart)} before the migration started (${sec(r.startMs)}: the boot, mostly); ${sig(r.followLogBytesPerSec / 1000)} kB/s while it ran; ${sig(r.logBytesPerGuestSec / 1000)} kB per guest second over the whole log (${sec((t.liveSnapshot?.vmClockNs ?? 0) / 1e6)} of guest time)`,
    `  replay speed            backlog ${speed(r.speed.backlog)}; following ${speed(r.speed.following)}  (recording time / replay time)`,
    `  lag                     median ${sec(median(lagsMs))} / ${minstr(median(lagsIcount))} over ${t.steps.length} replay steps; once caught up ${r.lagsCaughtUp.length === 0 ? 'never' : `median ${sec(median(r.lagsCaughtUp.map((l) => l.ms)))}`}; at the switchover ${last === undefined ? 'n/a' : `${sec(last.ms)} / ${minstr(last.icount)}`}; converged: ${r.converged}`,
    `  slice read after record median ${sec(median(s.diskLag.map((x) => x.ms)))}, max ${sec(Math.max(0, ...s.diskLag.map((x) => x.ms)))} (the recorder's stdio buffer and the ${RR_DEFAULTS.pollMs} ms poll)`,
    `  downtime                ${sec(r.downtimeMs)}: last slice +${sig(d.lastSlice)} ms, replayed +${sig(d.replayed)}, savevm +${sig(d.savevm)} (${mb(t.liveSnapshot?.vmStateBytes ?? 0)} vm state), replayer ended +${sig(d.replayerEnded)}, live QEMU running +${sig(d.live)}`,
    `  total                   ${sec(r.totalMs)} (migration start -> guest live); stopped at icount ${r.stopIcount}, live from ${t.finalIcount}`,
    `  guest                   ${c.continued ? 'continued' : 'DID NOT CONTINUE'}: source last tick ${c.sourceLast}, replayed to tick ${c.replayLast}, live ticks ${c.liveFirst}..${c.liveLast}, boots on the source ${c.sourceBoots.length}, on the target ${c.targetBoots.length}, pattern ${c.bad === 0 ? 'intact' : `BAD ${c.bad}`}`,
  ];
}

/** Times (ms after the live QEMU ran) at which the live guest printed its ticks, until `count` more than it had. */
function liveTickTimes(live: RrQemu, liveMs: number, count: number): Promise<number[]> {
  const times: number[] = [];
  let seen = parseTicks(live.process.serial.text()).counters.length;
  const target = seen + count;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the live guest printed no ${count} ticks within 120 s: ${live.process.serial.text().slice(-300)}`)), 120_000);
    const check = () => {
      const now = parseTicks(live.process.serial.text()).counters.length;
      for (; seen < now; seen++) times.push(performance.now() - liveMs);
      if (seen < target) return;
      clearTimeout(timer);
      stop();
      resolve(times);
    };
    const stop = live.process.serial.onData(check);
    check();
  });
}

/**
 * The replayer's own real-time clock (QEMU_CLOCK_VIRTUAL_RT) advances only while it runs; the
 * recorder's ran all along. The difference when the replayer saved the state: the recorded
 * span from the checkpoint to the switchover, less the time the replayer spent running.
 */
function clockBehindMs(report: RrMigrationReport, samples: readonly IcountSample[]): number {
  const from = msAtIcount(samples, report.source.checkpoint.icount) ?? 0;
  const to = msAtIcount(samples, report.target.finalIcount) ?? from;
  const running = report.target.steps.reduce((sum, step) => sum + step.endMs - step.startMs, 0);
  return to - from - running;
}

async function runOne(options: Options, checkpoint: CheckpointChoice, dir: string, image: ReturnType<typeof buildGuestImage>): Promise<boolean> {
  const migration = await runRrMigration({ machine: { ...rrMachineOf(image), icountShift: options.shift }, dir: join(dir, checkpoint), checkpoint, startWhen: afterTicks(options.startTicks), startTimeoutMs: 300_000, followMsMin: options.followMsMin, followMsMax: options.followMsMax, lagMsMax: options.lagMsMax });
  try {
    const live = migration.target.live!;
    const times = await liveTickTimes(live, migration.report.target.switchover.liveMs, options.liveTicks);
    const c = continuityOf(migration.source.qemu.process.serial.text(), migration.target.replayConsole, live.process.serial.text());
    console.log(`qemu-rr: checkpoint ${checkpoint}`);
    for (const line of describe(migration.report, c)) console.log(line);
    console.log(`  live ticks              at ${times.map((ms) => `+${sig(ms / 1000)}`).join(', ')} s after the live QEMU ran; the replayer's clock was ${sec(clockBehindMs(migration.report, migration.source.samples))} behind the recorded one`);
    return c.continued;
  } finally {
    await migration.close();
  }
}

export async function runQemuRrBench(argv: string[]): Promise<number> {
  let options: Options | 'help';
  try {
    options = parse(argv);
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (options === 'help') {
    console.log(USAGE);
    return 0;
  }
  const skip = skipUnlessRrPackages();
  if (skip !== false) {
    console.error(`qemu-rr: cannot run: ${skip}`);
    return 1;
  }
  const dir = mkdtempSync(join(tmpdir(), 'vmm-qemu-rr-bench-'));
  let continued = 0;
  try {
    const image = buildGuestImage(dir);
    console.log(`qemu-rr: the test guest (128 MiB, 1 vCPU, TCG) migrated by record/replay; start after ${options.startTicks} ticks, follow ${options.followMsMin}..${options.followMsMax} ms, switch within ${options.lagMsMax} ms of lag; icount shift ${options.shift}`);
    for (const checkpoint of options.checkpoints) if (await runOne(options, checkpoint, dir, image)) continued++;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(`qemu-rr: ${options.checkpoints.length} migrations of a real guest, ${continued} continued`);
  return continued === options.checkpoints.length ? 0 : 1;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) process.exitCode = await runQemuRrBench(process.argv.slice(2));
