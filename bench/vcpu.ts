// `npm run bench -- vcpu`: whether the `sim` guest's vCPU and the transfer queue behind each other
// on the source. In this process, as in a source agent: a guest of each profile runs in real time
// while its live checkpoint streams as fast as it can (chunks made as the agent makes them, packed
// with lz4 and xxh64 in a compression worker, written to a socket that a child process drains), and
// the sealed units are taken as they come. Measured three ways, each vCPU mode in turn:
//   guest alone     the guest's lateness (units due against units run) and the event loop's delay;
//   transfer alone  the checkpoint's rate with the guest suspended;
//   both            the same checkpoint with the guest running: its rate, the guest's lateness,
//                   its stalls on the copy-on-write pool, the event loop's delay.
// With the vCPU inline (on the event loop), the unit's busy part holds the loop and every chunk
// waits behind it; with the vCPU on its own thread, the two only share the machine's cores.
//
// And the target's side: what receiving a unit costs its event loop (decoding the message, lz4 and
// xxh64, the unit's check) against what replaying it costs, for a log recorded here. Replay only
// runs once the checkpoint is restored and never while a delta is applied (the target's design),
// so unit receipt is all it shares its thread with; its share bounds what a replay thread could
// gain.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { PackPool } from '../shared/pack-pool.js';
import { packMessage, unpackPayload } from '../shared/protocol.js';
import { pb } from '../shared/transport/grpc.js';
import { PROFILE_NAMES, type ProfileName, SimDriver, type SimReplica, type SimSourceGuest, VCPU_MODES, type VcpuMode } from '../shared/driver/sim/index.js';
import { CHUNK_PAGES } from '../source-agent/streams/checkpoint.js';
import { fixed, MIB_BYTES, table } from './format.js';
import { median } from './stats.js';

const USAGE = `usage: npm run bench -- vcpu [options]

  --profiles a,b     workload profiles (default compile,mmuncher,web)
  --modes a,b        vCPU modes, run in turn (default ${VCPU_MODES.join(',')})
  --memory-mib N     guest memory, MiB (default 512)
  --seconds N        how long "guest alone" measures (default 3)
  --repeats N        repeats of every profile x mode (default 2)
  -h, --help         this text

Prints figures only; asserts nothing about timings.`;

interface Options {
  profiles: ProfileName[];
  modes: VcpuMode[];
  memoryBytes: number;
  seconds: number;
  repeats: number;
}

function parseOptions(argv: string[]): Options | null {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      profiles: { type: 'string', default: 'compile,mmuncher,web' },
      modes: { type: 'string', default: VCPU_MODES.join(',') },
      'memory-mib': { type: 'string', default: '512' },
      seconds: { type: 'string', default: '3' },
      repeats: { type: 'string', default: '2' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return null;
  const profiles = values.profiles.split(',') as ProfileName[];
  const modes = values.modes.split(',') as VcpuMode[];
  for (const p of profiles) if (!PROFILE_NAMES.includes(p)) throw new Error(`--profiles: '${p}' is not one of ${PROFILE_NAMES.join(', ')}`);
  for (const m of modes) if (!VCPU_MODES.includes(m)) throw new Error(`--modes: '${m}' is not one of ${VCPU_MODES.join(', ')}`);
  const memoryMiB = Number(values['memory-mib']);
  const seconds = Number(values.seconds);
  const repeats = Number(values.repeats);
  if (!(Number.isInteger(memoryMiB) && memoryMiB >= 64 && memoryMiB <= 8192 && memoryMiB % 2 === 0)) throw new Error('--memory-mib: an even number from 64 to 8192');
  if (!(seconds >= 0.5 && seconds <= 60)) throw new Error('--seconds: from 0.5 to 60');
  if (!(Number.isInteger(repeats) && repeats >= 1 && repeats <= 20)) throw new Error('--repeats: 1 to 20');
  return { profiles, modes, memoryBytes: memoryMiB * MIB_BYTES, seconds, repeats };
}

/** One measured stretch: the guest's lateness, its stalls, the event loop's delay, the checkpoint's rate. */
interface Stretch {
  /** Units due over the stretch (its wall time / unitMs) less units run, as a share of those due. */
  latePercent: number;
  stallMs: number;
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  /** Guest memory the checkpoint covered per second; NaN without a checkpoint. */
  checkpointMBps: number;
  wallMs: number;
}

/** Watches the guest's progress against its schedule and the event loop's delay over a stretch. */
function watch(guest: SimSourceGuest) {
  const unitMs = guest.config.unitMs;
  const delay = monitorEventLoopDelay({ resolution: 1 });
  const start = { ms: performance.now(), units: guest.runnerStats().unitsRun, stallMs: guest.runnerStats().stallMs };
  delay.enable();
  return (checkpointBytes: number): Stretch => {
    delay.disable();
    const wallMs = performance.now() - start.ms;
    const stats = guest.runnerStats();
    const due = wallMs / unitMs;
    const run = stats.unitsRun - start.units;
    return {
      latePercent: guest.state === 'running' ? Math.max(0, (100 * (due - run)) / due) : NaN,
      stallMs: stats.stallMs - start.stallMs,
      loopDelayP99Ms: delay.percentile(99) / 1e6,
      loopDelayMaxMs: delay.max / 1e6,
      checkpointMBps: checkpointBytes > 0 ? checkpointBytes / 1e6 / (wallMs / 1000) : NaN,
      wallMs,
    };
  };
}

/** A child process that accepts one connection and discards what it reads: the wire, without a receiver on this thread. */
async function startSink(): Promise<{ socket: Socket; stop: () => void }> {
  const child = spawn(process.execPath, ['-e', "const s=require('net').createServer(c=>c.resume()).listen(0,'127.0.0.1',()=>console.log(s.address().port))"], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [line] = (await once(child.stdout!, 'data')) as [Buffer];
  const socket = connect(Number(line.toString().trim()), '127.0.0.1');
  await once(socket, 'connect');
  return {
    socket,
    stop: () => {
      socket.destroy();
      child.kill();
    },
  };
}

/** Streams the guest's live checkpoint as the source agent does (at most 4 chunks in packing); returns the memory bytes covered. */
async function streamCheckpoint(guest: SimSourceGuest, packer: PackPool, socket: Socket): Promise<number> {
  guest.startRecording();
  // Units are taken as they are sealed, as the agent's log stream does, so the log queue never stalls the guest.
  let draining = true;
  const drain = (async () => {
    while (draining && (await guest.nextSealedUnit()) !== null);
  })();
  let covered = 0;
  const inFlight: Array<Promise<void>> = [];
  const send = async (packed: Promise<{ bytes: Buffer; release?: () => void }>) => {
    const message = await packed;
    const ok = socket.write(message.bytes);
    message.release?.();
    if (!ok) await once(socket, 'drain');
  };
  for await (const chunk of guest.liveCheckpoint({ reuseBuffer: true, chunkPages: CHUNK_PAGES })) {
    covered += chunk.memoryBytesCovered;
    inFlight.push(send(packer.pack({ kind: 'chunk', index: chunk.index, final: chunk.final, memoryBytesCovered: chunk.memoryBytesCovered }, chunk.bytes, true)));
    while (inFlight.length >= 4) await inFlight.shift();
  }
  await Promise.all(inFlight);
  draining = false;
  guest.stopRecording();
  await drain;
  return covered;
}

interface ModeFigures {
  /** How long suspend took with the guest running: a vCPU on its own thread finishes the unit in progress first. */
  suspendMs: number;
  alone: Stretch;
  transfer: Stretch;
  both: Stretch;
}

async function measure(profile: ProfileName, mode: VcpuMode, options: Options, seed: number): Promise<ModeFigures> {
  const driver = new SimDriver({ memoryBytesTotal: 2 * options.memoryBytes, guest: { pacing: 'realtime', vcpu: mode } });
  const guest = driver.createGuest({ id: `vcpu-${profile}`, profile, memoryBytes: options.memoryBytes, environmentSeed: seed, contentSeed: seed });
  const packer = new PackPool(1);
  const sink = await startSink();
  try {
    await sleep(500);
    let done = watch(guest);
    await sleep(options.seconds * 1000);
    const alone = done(0);
    const suspendStart = performance.now();
    await guest.suspend();
    const suspendMs = performance.now() - suspendStart;
    done = watch(guest);
    const transfer = done(await streamCheckpoint(guest, packer, sink.socket));
    guest.resume();
    await sleep(300);
    done = watch(guest);
    const both = done(await streamCheckpoint(guest, packer, sink.socket));
    return { suspendMs, alone, transfer, both };
  } finally {
    sink.stop();
    await packer.close();
    driver.shutdown();
  }
}

/** Units recorded for the target's part. */
const TARGET_UNITS = 200;

interface TargetFigures {
  receiveUsPerUnit: number;
  replayUsPerUnit: number;
  /** Guest seconds replayed per second of replay. */
  replayRate: number;
}

/** Records TARGET_UNITS units of `profile`, then times their receipt and their replay on a replica. */
async function measureTarget(profile: ProfileName, options: Options, seed: number): Promise<TargetFigures> {
  const source = new SimDriver({ memoryBytesTotal: options.memoryBytes, guest: { pacing: 'manual' } });
  const target = new SimDriver({ memoryBytesTotal: options.memoryBytes, guest: { pacing: 'manual' } });
  try {
    const guest = source.createGuest({ id: `vcpu-target-${profile}`, profile, memoryBytes: options.memoryBytes, environmentSeed: seed, contentSeed: seed });
    await guest.step(50); // the instruction budget adapts to this host first
    guest.startRecording();
    const replica = target.reserve(guest.describe()) as SimReplica;
    await replica.memoryReady;
    for await (const chunk of guest.liveCheckpoint()) replica.restoreChunk(chunk);
    await guest.step(TARGET_UNITS);
    await guest.suspend();
    const wire: Buffer[] = [];
    let guestNs = 0;
    for (let u = await guest.nextSealedUnit(); u !== null; u = await guest.nextSealedUnit()) {
      wire.push(Buffer.from(packMessage({ kind: 'unit', sequence: u.sequence, final: u.final, guestNs: u.guestNs, eventCount: u.eventCount }, u.bytes, true).bytes));
      guestNs += u.guestNs;
    }
    const t0 = performance.now();
    const units = wire.map((bytes) => {
      const message = pb.SourceMessage.decode(bytes);
      const raw = unpackPayload(message.unit!.payload, `unit ${message.unit!.sequence}`);
      replica.checkUnit(raw);
      return raw;
    });
    const t1 = performance.now();
    for (const unit of units) replica.applyUnit(unit);
    const t2 = performance.now();
    return { receiveUsPerUnit: ((t1 - t0) * 1000) / units.length, replayUsPerUnit: ((t2 - t1) * 1000) / units.length, replayRate: guestNs / 1e6 / (t2 - t1) };
  } finally {
    source.shutdown();
    target.shutdown();
  }
}

function targetTable(options: Options, figures: Array<{ profile: ProfileName; target: TargetFigures }>): string {
  const rows = options.profiles.map((profile) => {
    const mine = figures.filter((f) => f.profile === profile).map((f) => f.target);
    const m = (pick: (x: TargetFigures) => number) => median(mine.map(pick));
    const receive = m((x) => x.receiveUsPerUnit);
    const replay = m((x) => x.replayUsPerUnit);
    return [profile, f0(receive), f0(replay), fixed((100 * receive) / (receive + replay), 1), fixed(m((x) => x.replayRate), 2)];
  });
  return `vcpu target: ${TARGET_UNITS} units per profile, medians of ${options.repeats}\n` + table(['profile', 'receive us/unit', 'replay us/unit', 'receipt share %', 'replay rate'], rows);
}

const f1 = (x: number) => (Number.isFinite(x) ? fixed(x, 1) : '–');
const f0 = (x: number) => (Number.isFinite(x) ? fixed(x, 0) : '–');

export async function runVcpuBench(argv: string[]): Promise<number> {
  let options: Options | null;
  try {
    options = parseOptions(argv);
  } catch (error) {
    console.error(`bench vcpu: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (options === null) {
    console.log(USAGE);
    return 0;
  }
  const runs: Array<{ profile: ProfileName; mode: VcpuMode; figures: ModeFigures }> = [];
  const targets: Array<{ profile: ProfileName; target: TargetFigures }> = [];
  for (let repeat = 0; repeat < options.repeats; repeat++) {
    for (const profile of options.profiles) {
      // Alternated, so that both modes see the same spell of the machine's load.
      targets.push({ profile, target: await measureTarget(profile, options, 2000 + repeat) });
      const modes = repeat % 2 === 0 ? options.modes : [...options.modes].reverse();
      for (const mode of modes) {
        const figures = await measure(profile, mode, options, 1000 + repeat);
        runs.push({ profile, mode, figures });
        const { alone, transfer, both } = figures;
        console.error(
          `${profile} ${mode} #${repeat + 1}: alone late ${f1(alone.latePercent)}% loop p99 ${f1(alone.loopDelayP99Ms)} ms; ` +
            `transfer ${f0(transfer.checkpointMBps)} MB/s; both ${f0(both.checkpointMBps)} MB/s late ${f1(both.latePercent)}% stall ${f0(both.stallMs)} ms loop p99 ${f1(both.loopDelayP99Ms)} ms`,
        );
      }
    }
  }
  const rows: string[][] = [];
  for (const profile of options.profiles) {
    for (const mode of options.modes) {
      const mine = runs.filter((r) => r.profile === profile && r.mode === mode).map((r) => r.figures);
      const m = (pick: (x: ModeFigures) => number) => median(mine.map(pick));
      rows.push([
        profile,
        mode,
        f1(m((x) => x.alone.latePercent)),
        f1(m((x) => x.alone.loopDelayP99Ms)),
        f1(m((x) => x.suspendMs)),
        f0(m((x) => x.transfer.checkpointMBps)),
        f0(m((x) => x.both.checkpointMBps)),
        f1(m((x) => x.both.latePercent)),
        f0(m((x) => x.both.stallMs)),
        f1(m((x) => x.both.loopDelayP99Ms)),
        f1(m((x) => x.both.loopDelayMaxMs)),
      ]);
    }
  }
  console.log(
    `vcpu: ${fixed(options.memoryBytes / MIB_BYTES, 0)} MiB guests, medians of ${options.repeats}; "late": units due less units run, % of due\n` +
      table(['profile', 'vcpu', 'alone late %', 'alone loop p99 ms', 'suspend ms', 'transfer alone MB/s', 'both MB/s', 'both late %', 'both stall ms', 'both loop p99 ms', 'both loop max ms'], rows),
  );
  console.log(`\n${targetTable(options, targets)}`);
  return 0;
}
