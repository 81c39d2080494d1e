// `npm run bench -- sim`: how fast the built-in deterministic guest records, replays and
// checkpoints on this host, and what its log and its copy-on-write pool cost. It prints figures
// and asserts nothing about timings; the only failure is a state digest that differs between a
// guest and its replica (exit code 1).
//
// Every guest runs with `pacing: 'manual'` and is driven by `step()`, so units run back to back as
// fast as the host allows (the idle part of a unit is not slept out); wall time is measured with
// performance.now and CPU time with process.cpuUsage (measure.ts).
//
// Three parts:
// 1. replay:     per workload profile, record N units then replay them into a replica restored
//                from the checkpoint: record and replay throughput, log size (raw and lz4),
//                events, dirty pages, digests (replay.ts).
// 2. checkpoint: capture throughput of a live checkpoint of a 1 GiB guest (chunks alone, + lz4,
//                + xxh64), restore throughput (checkpoint.ts), and baselines (memcpy, xxh64) from
//                the same run (baselines.ts).
// 3. cow:        copy-on-write pool use and guest stall while a writing guest (mmuncher) is
//                checkpointed, the guest stepped between chunk pulls as if each chunk went out
//                over a link of a given speed (cow.ts).
//
// Minor page faults are counted next to the timings: on a VM host a first touch of memory can
// cost tens of microseconds, enough to dominate a figure, and the count says when it does.
//
// Units: MB = 10^6 bytes (throughputs, MB/s), MiB = 2^20 bytes (sizes), kB = 10^3 bytes.

import os from 'node:os';
import { fixed, GIB_BYTES } from '../format.js';
import { runCheckpointPart } from './checkpoint.js';
import { runCowPart } from './cow.js';
import { type SimBenchOptions, parseOptions, USAGE, UsageError } from './options.js';
import { runReplayPart } from './replay.js';

interface Host {
  node: string;
  platform: string;
  cpus: number;
  cpuModel: string;
  memoryBytes: number;
}

function describeHost(): Host {
  const cpus = os.cpus();
  return { node: process.version, platform: `${os.platform()} ${os.arch()}`, cpus: cpus.length, cpuModel: cpus[0]?.model ?? 'unknown', memoryBytes: os.totalmem() };
}

const loadText = (load: number[]): string => load.map((x) => fixed(x, 2)).join(' ');

/** Prints what runs where; returns the load average at the start. */
function printHeader(opts: SimBenchOptions, host: Host): number[] {
  console.log(
    `sim driver benchmark${opts.quick ? ' (--quick)' : ''}: Node ${host.node}, ${host.platform}, ${host.cpus} x ${host.cpuModel}, ${fixed(host.memoryBytes / GIB_BYTES, 1)} GiB RAM`,
  );
  console.log('MB = 10^6 bytes, MiB = 2^20 bytes, kB = 10^3 bytes; figures are measured, nothing is asserted about them');
  const loadStart = os.loadavg();
  console.log(`load average at start ${loadText(loadStart)} (1/5/15 min; other processes on a ${host.cpus}-CPU host skew the timings)`);
  return loadStart;
}

/** Runs the benchmark with its own arguments; resolves to the exit code (0, 1 on a digest mismatch, 2 on a bad option). */
export async function runSimBench(argv: string[]): Promise<number> {
  let opts: SimBenchOptions | 'help';
  try {
    opts = parseOptions(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`bench sim: ${error.message}\n\n${USAGE}`);
    return 2;
  }
  if (opts === 'help') {
    console.log(USAGE);
    return 0;
  }
  const started = performance.now();
  const host = describeHost();
  const loadStart = printHeader(opts, host);

  let failures = 0;
  const out: Record<string, unknown> = { bench: 'sim', quick: opts.quick, host };
  if (opts.parts.has('replay')) {
    const part = await runReplayPart(opts);
    failures += part.failures;
    out.profiles = part.figures;
  }
  if (opts.parts.has('checkpoint')) {
    const part = await runCheckpointPart(opts);
    failures += part.failures;
    out.checkpoint = part.figures;
  }
  if (opts.parts.has('cow')) {
    const part = await runCowPart(opts);
    failures += part.failures;
    out.cow = part.figures;
  }

  const totalSeconds = (performance.now() - started) / 1000;
  const loadEnd = os.loadavg();
  console.log(`\n${failures === 0 ? 'all digests match' : `${failures} DIGEST MISMATCH(ES)`}; total ${fixed(totalSeconds, 1)} s; load average at end ${loadText(loadEnd)}`);
  out.loadAverage = { start: loadStart, end: loadEnd };
  out.failures = failures;
  out.totalSeconds = totalSeconds;
  if (opts.json) console.log(JSON.stringify(out));
  return failures === 0 ? 0 : 1;
}
