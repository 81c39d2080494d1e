// `npm run bench -- qemu [--repeats N] [--downtime-limit-ms MS] [--memory-mib MIB]`: a real Linux
// guest (Debian's kernel and a busybox initramfs, the tests' image, under TCG) migrated between two
// agent processes of the qemu driver on loopback by each method that carries it (qemu-native
// pre-copy, and post-copy), moving back and forth; next to it, in the same run, the built-in sim
// guest of the same size (profile idle) migrated by pre-copy, post-copy and CR/TR between two
// agent processes of the sim driver (sim's methods do not apply to a real guest). The same table
// as the harness: downtime, guest disruption, total time, data transmitted, rounds; for the real
// guest, whether it went on after each move (its console: the counter up from where it was, no
// second boot, its memory pattern intact).
//
// Its last line: `qemu: <k> migrations of a real guest, <c> continued`.
// Where qemu-system-x86, linux-image-amd64 or busybox-static is missing, it says which package,
// and ends with `qemu: 0 migrations of a real guest, 0 continued`.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildGuestImage, skipUnlessGuestPackages } from '../test/support/initramfs.js';
import { MIB_BYTES, table } from './format.js';
import { REAL_GUEST_ID, type RealMove, RealGuestPair } from './qemu-guest.js';
import { runOne } from './run.js';
import type { Method, RunRecord } from './run-record.js';
import { fmtSummary, summarize } from './stats.js';

const USAGE = `usage: npm run bench -- qemu [--repeats N] [--downtime-limit-ms MS] [--memory-mib MIB]

  --repeats N            moves of the real guest per method, and sim runs per method (default 3)
  --downtime-limit-ms    the migrations' downtime limit (default 300)
  --memory-mib           the guests' memory, 64 to 1024 (default 128)`;

const SIM_METHODS: readonly Method[] = ['precopy', 'postcopy', 'crtr'];

interface Row {
  guest: string;
  method: string;
  ok: number;
  n: number;
  downtime: number[];
  disruption: number[];
  totalS: number[];
  dataMiB: number[];
  rounds: number[];
  /** The real guest: moves after which it went on. */
  continued: number | null;
}

function cpuPressure(): string {
  try {
    const m = /^some avg10=([\d.]+) avg60=([\d.]+) avg300=([\d.]+)/m.exec(readFileSync('/proc/pressure/cpu', 'utf8'));
    return m ? `avg10 ${m[1]}%, avg60 ${m[2]}%, avg300 ${m[3]}%` : 'not readable';
  } catch {
    return 'not readable';
  }
}

function rowOf(guest: string, method: string, runs: ReadonlyArray<{ status: string; downtimeMs: number; disruptionMs: number; totalTimeMs: number; transferredBytes: number; rounds: number }>, continued: number | null): Row {
  const ok = runs.filter((r) => r.status === 'completed');
  return {
    guest,
    method,
    ok: ok.length,
    n: runs.length,
    downtime: ok.map((r) => r.downtimeMs),
    disruption: ok.map((r) => r.disruptionMs),
    totalS: ok.map((r) => r.totalTimeMs / 1000),
    dataMiB: ok.map((r) => r.transferredBytes / MIB_BYTES),
    rounds: ok.map((r) => r.rounds),
    continued,
  };
}

function printTable(rows: Row[]): void {
  const headers = ['guest', 'method', 'runs ok', 'downtime (ms)', 'disruption (ms)', 'total time (s)', 'data transmitted (MiB)', 'rounds', 'continued'];
  const cells = rows.map((r) => [
    r.guest,
    r.method,
    `${r.ok}/${r.n}`,
    fmtSummary(summarize(r.downtime), 1),
    fmtSummary(summarize(r.disruption), 1),
    fmtSummary(summarize(r.totalS), 2),
    fmtSummary(summarize(r.dataMiB), 1),
    fmtSummary(summarize(r.rounds), 0),
    r.continued === null ? '' : `${r.continued}/${r.n}`,
  ]);
  console.log(table(headers, cells));
}

/** QEMU's own figures of the real guest's moves, which count from its instants (docs/qemu.md). */
function printQemuOwn(moves: RealMove[]): void {
  const cells = (['qemu-native', 'qemu-native --postcopy'] as const).map((method) => {
    const ok = moves.filter((m) => m.method === method && m.status === 'completed');
    return [method, fmtSummary(summarize(ok.map((m) => m.qemuDowntimeMs)), 0), fmtSummary(summarize(ok.map((m) => m.qemuTotalTimeMs / 1000)), 2), fmtSummary(summarize(ok.map((m) => m.downtimeMs - m.qemuDowntimeMs)), 1)];
  });
  console.log("QEMU's own figures (the guest's stop to the end of its stream; the migrate command to the end), and what the agents add to the downtime (the target's load, the commit, the resume):");
  console.log(table(['method', "QEMU's downtime (ms)", "QEMU's total time (s)", 'agents add (ms)'], cells));
}

/** The real guest, moved `repeats` times by each method, back and forth. */
async function realGuestRuns(repeats: number, downtimeLimitMs: number, memoryBytes: number): Promise<RealMove[]> {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-qemu-'));
  const moves: RealMove[] = [];
  let pair: RealGuestPair | null = null;
  try {
    const bootStart = performance.now();
    pair = await RealGuestPair.start(buildGuestImage(dir), dir, memoryBytes);
    console.log(`real guest '${REAL_GUEST_ID}' booted (${memoryBytes / MIB_BYTES} MiB, TCG) and ticking after ${((performance.now() - bootStart) / 1000).toFixed(1)} s`);
    for (let i = 0; i < repeats; i++) {
      for (const postcopy of [false, true]) {
        const move = await pair.move(postcopy, downtimeLimitMs);
        moves.push(move);
        const figures = move.status === 'completed' ? `downtime ${move.downtimeMs.toFixed(1)} ms, total ${(move.totalTimeMs / 1000).toFixed(2)} s, ${(move.transferredBytes / MIB_BYTES).toFixed(1)} MiB` : move.error;
        console.log(`  ${move.method}: ${move.status}, ${figures}; ${move.continued ? 'continued' : 'DID NOT CONTINUE'} (${move.console})`);
      }
    }
  } finally {
    await pair?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  return moves;
}

/** The sim guest of the same size, by each of its methods, `repeats` times. */
async function simRuns(repeats: number, downtimeLimitMs: number, memoryBytes: number): Promise<Map<Method, RunRecord[]>> {
  const byMethod = new Map<Method, RunRecord[]>(SIM_METHODS.map((m) => [m, []]));
  for (let repeat = 0; repeat < repeats; repeat++) {
    for (const method of SIM_METHODS) {
      const record = await runOne({ kind: 'matrix', profile: 'idle', method, link: 'direct', memoryBytes, repeat, seed: 1000 + repeat, downtimeLimitMs, policy: 'force', maxDurationMs: 120_000, warmupMs: 1_000, sampleMs: 100, disableCompression: false, linkMode: 'in-process' });
      byMethod.get(method)!.push(record);
      console.log(`  sim ${method}: ${record.status}, downtime ${record.downtimeMs.toFixed(1)} ms, total ${(record.totalTimeMs / 1000).toFixed(2)} s${record.error ? ` (${record.error})` : ''}`);
    }
  }
  return byMethod;
}

export async function runQemuBench(argv: string[]): Promise<number> {
  let values: { repeats?: string; 'downtime-limit-ms'?: string; 'memory-mib'?: string; help?: boolean };
  try {
    ({ values } = parseArgs({ args: argv, options: { repeats: { type: 'string' }, 'downtime-limit-ms': { type: 'string' }, 'memory-mib': { type: 'string' }, help: { type: 'boolean' } } }));
  } catch (error) {
    console.error(`bench qemu: ${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const repeats = Number(values.repeats ?? 3);
  const downtimeLimitMs = Number(values['downtime-limit-ms'] ?? 300);
  const memoryMib = Number(values['memory-mib'] ?? 128);
  if (!(Number.isInteger(repeats) && repeats >= 1 && repeats <= 20) || !(Number.isInteger(downtimeLimitMs) && downtimeLimitMs >= 1) || !(Number.isInteger(memoryMib) && memoryMib >= 64 && memoryMib <= 1024 && memoryMib % 2 === 0)) {
    console.error(`bench qemu: --repeats 1 to 20, --downtime-limit-ms at least 1, --memory-mib an even 64 to 1024\n${USAGE}`);
    return 2;
  }
  const skip = skipUnlessGuestPackages();
  if (skip !== false) {
    console.log(`qemu: skipped, ${skip}`);
    console.log('qemu: 0 migrations of a real guest, 0 continued');
    return 0;
  }
  const memoryBytes = memoryMib * MIB_BYTES;
  console.log(`qemu bench: ${repeats} repeat(s), ${memoryMib} MiB guests, downtime limit ${downtimeLimitMs} ms, loopback; CPU pressure at start: ${cpuPressure()}`);
  const moves = await realGuestRuns(repeats, downtimeLimitMs, memoryBytes);
  const sim = await simRuns(repeats, downtimeLimitMs, memoryBytes);
  const rows: Row[] = [];
  for (const method of ['qemu-native', 'qemu-native --postcopy'] as const) {
    const of = moves.filter((m) => m.method === method);
    rows.push(rowOf('real (QEMU)', method, of, of.filter((m) => m.continued).length));
  }
  for (const method of SIM_METHODS) rows.push(rowOf('sim idle', method, sim.get(method)!, null));
  console.log('');
  printTable(rows);
  console.log('');
  printQemuOwn(moves);
  console.log('');
  console.log(`CPU pressure at end: ${cpuPressure()}. Cells: median (min–max) of completed runs. Disruption of the real guest: its downtime and the time its vCPUs waited for pages on the target (post-copy), as QEMU measures it.`);
  console.log(`qemu: ${moves.length} migrations of a real guest, ${moves.filter((m) => m.continued).length} continued`);
  return 0;
}
