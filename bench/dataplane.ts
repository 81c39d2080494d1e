// `npm run bench -- dataplane`: how fast the agents stream a checkpoint, against raw TCP between
// two processes on this machine, measured in the same run. Also part of the harness's report.
//
// Per repeat:
// - raw TCP: a child process writes N bytes (N = the guest's memory size) over a loopback socket
//   to another child process that reads them (bench/raw-tcp.ts); measured before and after the
//   agent runs, the better of the two kept (other work on the machine only ever slows it);
// - raw HTTP/2: the same over node:http2 with the agents' flow-control windows and malloc
//   settings (bench/raw-http2.ts), to tell what HTTP/2 in Node costs from what gRPC and the agents
//   add; also best of before and after;
// - the agents: fresh source and target processes connected directly on loopback (no link
//   emulator), an idle 1 GiB guest migrated by CR/TR with lz4 and with disable_compression. An idle
//   guest has almost no log, so the figure is the checkpoint phase's: from the 'checkpoint' phase
//   event to 'log-transfer', which the source enters only once the target has restored the whole
//   image (WatchJob phase events, on the harness's clock);
// - lz4 and memcpy on one core, in this process while no agent runs (bench/raw-cpu.ts): lz4
//   encodeBlock over the checkpoint chunks of a booted `web` guest, and Buffer.copy of 64 MiB
//   buffers; also best of before and after.
//
// The last line printed compares the agents' guest-memory rate (lz4 on, median over repeats) with
// the least of the three baselines (medians over repeats):
//   dataplane: memory <X> MB/s = <R> x min(raw TCP <A>, lz4 <B>, memcpy <C>)
//
// Figures (MB = 10^6 bytes):
// - wire rate = checkpointWireBytes / checkpoint phase: bytes on the agents' TCP connection per
//   second, comparable with raw TCP's (the agent/raw TCP ratio printed is this one);
// - memory rate = checkpointMemoryBytesCovered / checkpoint phase: guest memory moved per second,
//   which zero-page elision and lz4 raise above the wire rate;
// - also transferredBytes / totalTimeMs (the whole migration, setup and commit included);
// - the cost of the checkpoint phase on each agent: CPU time and minor page faults of the process
//   from /proc between the two phase events. Where other work shares the machine, CPU per GiB
//   varies far less than the rates do, and says which side does the work.
//
// To look inside the agents of every run: BENCH_AGENT_NODE_ARGS adds Node.js flags
// ("--cpu-prof --cpu-prof-dir=/tmp/prof/{role}"), BENCH_AGENT_ARGS agent flags ("--log-level
// debug" logs where each side's checkpoint time went: 'checkpoint streamed' on the source,
// 'checkpoint restore timing' on the target; "--chunk-window 64"); see bench/run.ts.
//
// With --link-check, the same uncompressed migration also goes through the link emulator with the
// `lan` profile (1 Gbit/s), once with the emulator in the harness's process and once in a child
// process: whether the in-process emulator is what limits the harness's lan runs.

import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { agentGlibcTunables } from '../cli/agent-process.js';
import { GIB_BYTES, MB_BYTES, MIB_BYTES } from './format.js';
import { type CpuRateResult, measureLz4, measureMemcpy, webCheckpointChunks } from './raw-cpu.js';
import { measureRawHttp2 } from './raw-http2.js';
import { measureRawTcp, type RawTcpResult } from './raw-tcp.js';
import type { LinkMode, ProcessCost, RunRecord } from './run-record.js';
import { runOne, seedOf } from './run.js';
import { median } from './stats.js';

export interface AgentDataplaneFigures {
  compression: boolean;
  link: string;
  linkMode: LinkMode | 'none';
  status: string;
  error: string;
  digestsMatch: boolean;
  checkpointPhaseMs: number;
  /** The Reserve call, in which the target makes the replica's memory ready (NaN: not reported, older agents). */
  reservationMs: number;
  checkpointWireBytes: number;
  checkpointMemoryBytesCovered: number;
  transferredBytes: number;
  totalTimeMs: number;
  wireBytesPerSec: number;
  memoryBytesPerSec: number;
  transferredBytesPerSec: number;
  /** wireBytesPerSec / raw TCP's bytes per second. */
  wireOverRawTcp: number;
  memoryOverRawTcp: number;
  /** CPU time and minor page faults of each agent during the checkpoint phase (null: not measured). */
  cost: { source: ProcessCost; target: ProcessCost } | null;
}

export interface DataplaneRepeat {
  repeat: number;
  rawTcp: RawTcpResult;
  rawTcpRuns: RawTcpResult[];
  /** node:http2 between two processes as the agents set it up (windows, malloc), best of two; absent in older results. */
  rawHttp2?: RawTcpResult;
  rawHttp2Runs?: RawTcpResult[];
  agents: AgentDataplaneFigures[];
  /** lz4 block compression of a web guest's checkpoint chunks on one core, best of two; absent in older results. */
  lz4?: CpuRateResult;
  /** Buffer.copy of large buffers on one core, best of two; absent in older results. */
  memcpy?: CpuRateResult;
}

export interface DataplaneResult {
  memoryBytes: number;
  profile: string;
  repeats: DataplaneRepeat[];
  wallMs: number;
  /** 1, 5 and 15 minute load averages when the benchmark started and ended, and the machine's core count. */
  load: { start: number[]; end: number[]; cores: number };
  /** GLIBC_TUNABLES of the agents and of the HTTP/2 baseline ('' for glibc's defaults). */
  glibcTunables?: string;
}

export interface DataplaneOptions {
  memoryMiB: number;
  repeats: number;
  linkCheck: boolean;
  warmupMs: number;
  /** Called after each step (raw TCP or agent run) with a label, for a progress bar. */
  onStep?: (label: string) => void;
}

/** Steps runDataplane takes (for a progress bar's total). */
export function dataplaneSteps(o: Pick<DataplaneOptions, 'repeats' | 'linkCheck'>): number {
  return o.repeats * (8 + (o.linkCheck ? 2 : 0));
}

function figures(r: RunRecord, raw: RawTcpResult): AgentDataplaneFigures {
  // The job at the end as Control v2 showed it (bench/run.ts): the checkpoint stream's bytes on the
  // wire, and the guest memory it covered (checkpointPercent of memoryBytes).
  const s = (r.stats.source ?? {}) as { checkpointPercent?: number; memoryBytes?: number; reservationMs?: number; bytes?: { checkpoint?: { wireBytes?: number } } };
  const phaseMs = r.checkpointPhaseMs ?? NaN;
  const wire = Number(s.bytes?.checkpoint?.wireBytes ?? NaN);
  const covered = Math.round(((s.checkpointPercent ?? NaN) * Number(s.memoryBytes ?? NaN)) / 100);
  const wireRate = wire / (phaseMs / 1000);
  const memoryRate = covered / (phaseMs / 1000);
  return {
    compression: !r.disableCompression,
    link: r.link,
    linkMode: r.link === 'direct' ? 'none' : r.linkMode,
    status: r.status,
    error: r.error,
    digestsMatch: r.digestsMatch,
    checkpointPhaseMs: phaseMs,
    reservationMs: Number(s.reservationMs ?? NaN),
    checkpointWireBytes: wire,
    checkpointMemoryBytesCovered: covered,
    transferredBytes: r.transferredBytes,
    totalTimeMs: r.totalTimeMs,
    wireBytesPerSec: wireRate,
    memoryBytesPerSec: memoryRate,
    transferredBytesPerSec: r.transferredBytes / (r.totalTimeMs / 1000),
    wireOverRawTcp: wireRate / raw.bytesPerSec,
    memoryOverRawTcp: memoryRate / raw.bytesPerSec,
    cost: r.checkpointCost,
  };
}

export async function runDataplane(o: DataplaneOptions): Promise<DataplaneResult> {
  const start = performance.now();
  const loadAtStart = loadavg();
  const memoryBytes = o.memoryMiB * MIB_BYTES;
  const repeats: DataplaneRepeat[] = [];
  const step = (label: string) => o.onStep?.(label);
  const lz4Sample = await webCheckpointChunks();
  const cpuBaselines = () => ({ lz4: measureLz4(lz4Sample), memcpy: measureMemcpy() });
  for (let repeat = 0; repeat < o.repeats; repeat++) {
    const base = {
      kind: 'dataplane' as const,
      profile: 'idle',
      method: 'crtr' as const,
      memoryBytes,
      repeat,
      seed: seedOf(`dataplane:${o.memoryMiB}:${repeat}`),
      downtimeLimitMs: 300,
      policy: 'force' as const,
      maxDurationMs: 300_000,
      warmupMs: o.warmupMs,
      sampleMs: 100,
      linkMode: 'in-process' as LinkMode,
    };
    const cpuBefore = cpuBaselines();
    step('dataplane: lz4 and memcpy');
    const rawBefore = await measureRawTcp(memoryBytes);
    step('dataplane: raw TCP');
    const http2Before = await measureRawHttp2(memoryBytes);
    step('dataplane: raw HTTP/2');
    const runs: RunRecord[] = [];
    runs.push(await runOne({ ...base, link: 'direct', disableCompression: false }));
    step('dataplane: agents, lz4');
    runs.push(await runOne({ ...base, link: 'direct', disableCompression: true }));
    step('dataplane: agents, raw payloads');
    if (o.linkCheck) {
      runs.push(await runOne({ ...base, link: 'lan', disableCompression: true, linkMode: 'in-process' }));
      step('dataplane: lan link in-process');
      runs.push(await runOne({ ...base, link: 'lan', disableCompression: true, linkMode: 'child' }));
      step('dataplane: lan link in a child');
    }
    const http2After = await measureRawHttp2(memoryBytes);
    step('dataplane: raw HTTP/2');
    const rawAfter = await measureRawTcp(memoryBytes);
    step('dataplane: raw TCP');
    const cpuAfter = cpuBaselines();
    step('dataplane: lz4 and memcpy');
    const lz4 = best(cpuBefore.lz4, cpuAfter.lz4);
    const memcpy = best(cpuBefore.memcpy, cpuAfter.memcpy);
    const rawTcp = rawBefore.bytesPerSec >= rawAfter.bytesPerSec ? rawBefore : rawAfter;
    const rawHttp2 = http2Before.bytesPerSec >= http2After.bytesPerSec ? http2Before : http2After;
    repeats.push({ repeat, rawTcp, rawTcpRuns: [rawBefore, rawAfter], rawHttp2, rawHttp2Runs: [http2Before, http2After], agents: runs.map((r) => figures(r, rawTcp)), lz4, memcpy });
  }
  return {
    memoryBytes,
    profile: 'idle',
    repeats,
    wallMs: performance.now() - start,
    load: { start: loadAtStart, end: loadavg(), cores: cpus().length },
    glibcTunables: agentGlibcTunables(),
  };
}

/** The faster of two measurements (other work on the machine only ever slows one down). */
function best<T extends { bytesPerSec: number }>(a: T, b: T): T {
  return a.bytesPerSec >= b.bytesPerSec ? a : b;
}

const mbps = (bytesPerSec: number) => (bytesPerSec / MB_BYTES).toFixed(0);

/**
 * The benchmark's summary line: the agents' guest-memory rate with lz4 (direct, median over
 * repeats) over the least of raw TCP, lz4 on one core and memcpy (each the median over repeats).
 */
export function dataplaneLine(d: DataplaneResult): string {
  const memory = median(d.repeats.flatMap((r) => r.agents.filter((a) => a.status === 'completed' && a.link === 'direct' && a.compression).map((a) => a.memoryBytesPerSec)));
  const rawTcp = median(d.repeats.map((r) => r.rawTcp.bytesPerSec));
  const lz4 = median(d.repeats.flatMap((r) => (r.lz4 === undefined ? [] : [r.lz4.bytesPerSec])));
  const memcpy = median(d.repeats.flatMap((r) => (r.memcpy === undefined ? [] : [r.memcpy.bytesPerSec])));
  const ratio = memory / Math.min(rawTcp, lz4, memcpy);
  return `dataplane: memory ${mbps(memory)} MB/s = ${ratio.toFixed(2)} x min(raw TCP ${mbps(rawTcp)}, lz4 ${mbps(lz4)}, memcpy ${mbps(memcpy)})`;
}

/** Markdown section of the report. */
export function dataplaneMarkdown(d: DataplaneResult): string {
  const lines: string[] = [];
  lines.push(`Idle ${d.memoryBytes / MIB_BYTES} MiB guest, CR/TR, fresh agent processes; raw TCP moves ${d.memoryBytes / MIB_BYTES} MiB between two child processes on loopback in the same run (best of a measurement before and after the agent runs). MB = 10^6 bytes.`);
  if (d.load) {
    const avg = (xs: number[]) => xs.map((x) => x.toFixed(2)).join(' ');
    lines.push(`Load average (1, 5, 15 min) on ${d.load.cores} cores: ${avg(d.load.start)} at the start, ${avg(d.load.end)} at the end.`);
  }
  if (d.glibcTunables !== undefined) lines.push(`Agents and the HTTP/2 baseline ran with GLIBC_TUNABLES=${d.glibcTunables === '' ? "'' (glibc's defaults)" : d.glibcTunables}.`);
  lines.push('');
  lines.push('| repeat | path | lz4 | reservation | checkpoint phase | wire bytes | wire MB/s | memory MB/s | transferred/total MB/s | raw TCP MB/s | agent/raw TCP (wire) | agent/raw TCP (memory) | digests |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const rep of d.repeats) {
    for (const a of rep.agents) {
      const path = a.link === 'direct' ? 'agents direct' : `via ${a.link} link (${a.linkMode})`;
      if (a.status !== 'completed') {
        lines.push(`| ${rep.repeat + 1} | ${path} | ${a.compression ? 'on' : 'off'} | | ${a.status}: ${a.error} | | | | | ${mbps(rep.rawTcp.bytesPerSec)} | | | |`);
        continue;
      }
      lines.push(
        `| ${rep.repeat + 1} | ${path} | ${a.compression ? 'on' : 'off'} | ${Number.isFinite(a.reservationMs) ? `${a.reservationMs.toFixed(0)} ms` : '–'} | ${(a.checkpointPhaseMs / 1000).toFixed(2)} s | ${(a.checkpointWireBytes / MIB_BYTES).toFixed(0)} MiB | ${mbps(a.wireBytesPerSec)} | ${mbps(a.memoryBytesPerSec)} | ${mbps(a.transferredBytesPerSec)} | ${mbps(rep.rawTcp.bytesPerSec)} | ${a.wireOverRawTcp.toFixed(3)} | ${a.memoryOverRawTcp.toFixed(3)} | ${a.digestsMatch ? 'equal' : 'DIFFERENT'} |`,
      );
    }
  }
  lines.push('');
  const perGiB = (r: RawTcpResult) => (r.sinkCpuMs === undefined ? '' : `, receiver CPU ${((r.sinkCpuMs / 1000) * (GIB_BYTES / r.bytes)).toFixed(2)} s per GiB`);
  for (const rep of d.repeats) {
    if (rep.rawHttp2 === undefined) continue;
    lines.push(
      `Baselines of repeat ${rep.repeat + 1}: raw TCP ${mbps(rep.rawTcp.bytesPerSec)} MB/s${perGiB(rep.rawTcp)}; node:http2 between two processes as the agents set it up (16 MiB windows, their GLIBC_TUNABLES), no gRPC, ${mbps(rep.rawHttp2.bytesPerSec)} MB/s${perGiB(rep.rawHttp2)}` +
        (rep.lz4 === undefined || rep.memcpy === undefined
          ? '.'
          : `; on one core, lz4 ${mbps(rep.lz4.bytesPerSec)} MB/s over a web guest's checkpoint chunks (to ${((100 * rep.lz4.compressedBytes!) / rep.lz4.bytes).toFixed(0)}% of their size), memcpy ${mbps(rep.memcpy.bytesPerSec)} MB/s.`),
    );
  }
  lines.push('');
  const costed = d.repeats.flatMap((rep) => rep.agents.filter((a) => a.status === 'completed' && (a.cost ?? null) !== null).map((a) => ({ rep, a })));
  if (costed.length > 0) {
    lines.push(
      'Cost of the checkpoint phase per agent process (/proc, between the phase events): CPU time (user + system, and the system part), as a share of the phase, per GiB of guest memory; minor page faults.',
    );
    lines.push('');
    lines.push('| repeat | path | lz4 | source CPU | source CPU/phase | source CPU per GiB | source faults | target CPU | target CPU/phase | target CPU per GiB | target faults |');
    lines.push('|---|---|---|---|---|---|---|---|---|---|---|');
    for (const { rep, a } of costed) {
      const path = a.link === 'direct' ? 'agents direct' : `via ${a.link} link (${a.linkMode})`;
      const side = (c: ProcessCost) =>
        `${(c.cpuMs / 1000).toFixed(2)} s (sys ${((c.systemMs ?? NaN) / 1000).toFixed(2)}) | ${((100 * c.cpuMs) / a.checkpointPhaseMs).toFixed(0)}% | ${((c.cpuMs / 1000) * (GIB_BYTES / a.checkpointMemoryBytesCovered)).toFixed(2)} s | ${c.minorFaults}`;
      lines.push(`| ${rep.repeat + 1} | ${path} | ${a.compression ? 'on' : 'off'} | ${side(a.cost!.source)} | ${side(a.cost!.target)} |`);
    }
    lines.push('');
  }
  const ok = d.repeats.flatMap((rep) => rep.agents.filter((a) => a.status === 'completed'));
  const ratio = (pick: (a: AgentDataplaneFigures) => boolean, f: (a: AgentDataplaneFigures) => number) => {
    const xs = ok.filter(pick).map(f).sort((a, b) => a - b);
    return xs.length === 0 ? '–' : xs.length === 1 ? xs[0].toFixed(3) : `${xs[xs.length >> 1].toFixed(3)} (${xs[0].toFixed(3)}–${xs[xs.length - 1].toFixed(3)})`;
  };
  const direct = (lz4: boolean) => (a: AgentDataplaneFigures) => a.link === 'direct' && a.compression === lz4;
  lines.push(
    `**Agent / raw TCP** (checkpoint wire bytes per second over raw TCP's bytes per second, median over repeats): **${ratio(direct(false), (a) => a.wireOverRawTcp)}** without lz4, **${ratio(direct(true), (a) => a.wireOverRawTcp)}** with lz4; in guest memory moved per second: ${ratio(direct(false), (a) => a.memoryOverRawTcp)} without lz4, ${ratio(direct(true), (a) => a.memoryOverRawTcp)} with lz4.`,
  );
  const viaIn = ok.filter((a) => a.link === 'lan' && a.linkMode === 'in-process').map((a) => a.wireBytesPerSec);
  const viaChild = ok.filter((a) => a.link === 'lan' && a.linkMode === 'child').map((a) => a.wireBytesPerSec);
  const directOff = ok.filter(direct(false)).map((a) => a.wireBytesPerSec);
  if (viaIn.length > 0 && viaChild.length > 0) {
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
    lines.push('');
    lines.push(
      `Link check (uncompressed, wire MB/s, medians): agents direct ${mbps(med(directOff))}, through the lan emulator (125 MB/s line rate) in the harness process ${mbps(med(viaIn))}, in a child process ${mbps(med(viaChild))}. The agents, not the emulator, set the pace when both are well below 125 MB/s and close to the direct figure.`,
    );
  }
  lines.push('');
  lines.push(dataplaneLine(d));
  return lines.join('\n');
}

export async function runDataplaneBench(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'memory-mib': { type: 'string', default: '1024' },
      repeats: { type: 'string', default: '1' },
      'link-check': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(`usage: npm run bench -- dataplane [--memory-mib 1024] [--repeats 1] [--link-check] [--json]

Checkpoint streaming throughput of the agents (idle guest, CR/TR, with and without lz4) against raw
TCP between two processes, measured in the same run; prints the ratio agent/raw TCP. --link-check
also migrates through the lan link emulator, in this process and in a child process.`);
    return 0;
  }
  const result = await runDataplane({
    memoryMiB: Number(values['memory-mib']),
    repeats: Math.max(1, Number(values.repeats)),
    linkCheck: values['link-check'],
    warmupMs: 1000,
    onStep: (label) => console.error(`  done: ${label}`),
  });
  if (values.json) console.log(JSON.stringify(result));
  // The markdown ends with the summary line (dataplaneLine): a script takes it with `tail -1`.
  console.log(dataplaneMarkdown(result));
  const ok = result.repeats.every((r) => r.agents.every((a) => a.status === 'completed' && a.digestsMatch));
  return ok ? 0 : 1;
}
