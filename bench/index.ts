// `npm run bench -- [name] [options]`: runs one benchmark, chosen by the first positional word
// (default `harness`); the rest of the command line is that benchmark's own options.
//
//   npm run bench                                the migration bench harness, full matrix (hours)
//   npm run bench -- --quick --out DIR           the same, short (~3 min): report.md, results.json, SVGs
//   npm run bench -- harness --help              its options
//   npm run bench -- dataplane                   checkpoint streaming vs raw TCP
//   npm run bench -- sim --quick                 the sim driver benchmark, smaller and shorter
//   npm run bench -- memory                      memory of the agents migrating a large guest
//   npm run bench -- faults                      the fault matrix: every fault x phase x method, 3 seeds
//   npm run bench -- vcpu                        the guest's vCPU against the transfer, inline or on a thread
//   npm run bench -- protocol-sim --seeds N      the protocol under simulated faults, N seeds
//   npm run bench -- arbiter                     the failover arbiter on a private etcd: go-live latency, fencing delays
//   npm run bench -- qemu                        a real Linux guest moved by QEMU's own stream (qemu-native), next to the sim guest
//   npm run bench -- qemu-rr                     the real guest moved by QEMU's record/replay between two QEMUs (CR/TR's prototype)

import { runAgentMemoryBench } from './agent-memory.js';
import { runArbiterBench } from './arbiter.js';
import { runDataplaneBench } from './dataplane.js';
import { runDrBench } from './dr.js';
import { runFaultsBench } from './faults/index.js';
import { runHarness } from './harness.js';
import { runProtocolSimBench } from './protocol-sim.js';
import { runQemuBench } from './qemu.js';
import { runQemuRrBench } from './qemu-rr.js';
import { runSimBench } from './sim/index.js';
import { runVcpuBench } from './vcpu.js';

interface Benchmark {
  readonly summary: string;
  /** Runs with the benchmark's own arguments; resolves to the process exit code. */
  run(argv: string[]): Promise<number>;
}

const BENCHMARKS: Readonly<Record<string, Benchmark>> = {
  harness: {
    summary: 'live migrations profiles x methods x links x sizes x repeats through the link emulator: report.md, results.json, SVG plots',
    run: runHarness,
  },
  dataplane: {
    summary: 'checkpoint streaming throughput between the agent processes against raw TCP, with and without lz4',
    run: runDataplaneBench,
  },
  sim: {
    summary: 'the built-in deterministic guest: record/replay per profile, 1 GiB checkpoint throughput, copy-on-write pool',
    run: runSimBench,
  },
  memory: {
    summary: 'memory of both agent processes while they migrate a large guest (default 4 GiB), against the guest size and windows',
    run: runAgentMemoryBench,
  },
  faults: {
    summary: 'kill -9, SIGTERM, link cut, stall and corrupt byte at every phase of every method; invariants checked, a table of outcomes',
    run: runFaultsBench,
  },
  vcpu: {
    summary: "the sim guest's vCPU and the checkpoint stream on one source: lateness, checkpoint rate, event-loop delay, vCPU inline or on its own thread",
    run: runVcpuBench,
  },
  dr: {
    summary: 'continuous protection per profile and link: log bandwidth, guest performance, lag, output delay; then kill -9 of the primary, failover, RTO and outputs lost',
    run: runDrBench,
  },
  'protocol-sim': {
    summary: 'the migration protocol in one process over a simulated network (drops, delays, reordering, stalls, target crashes), seed by seed, against its invariants',
    run: runProtocolSimBench,
  },
  qemu: {
    summary: "a real Linux guest (TCG) moved back and forth between two qemu agents by QEMU's own stream, pre-copy and post-copy; next to the sim guest of the same size by pre-copy, post-copy and CR/TR",
    run: runQemuBench,
  },
  'qemu-rr': {
    summary: 'record/replay migration of the real test guest between two QEMUs, checkpoint init and savevm: checkpoint, log rate, replay speed, lag, downtime, total',
    run: runQemuRrBench,
  },
  arbiter: {
    summary: 'the failover arbiter against a private etcd: claim and go-live latency, and how long a primary cut off from etcd takes to fence itself and a standby to go live',
    run: runArbiterBench,
  },
};
const DEFAULT_BENCHMARK = 'harness';

function usage(): string {
  const names = Object.keys(BENCHMARKS);
  const width = Math.max(...names.map((n) => n.length));
  return [
    'usage: npm run bench -- [benchmark] [options]',
    '',
    `benchmarks (default ${DEFAULT_BENCHMARK}):`,
    ...names.map((n) => `  ${n.padEnd(width)}  ${BENCHMARKS[n].summary}`),
    '',
    "each benchmark's options: npm run bench -- <benchmark> --help",
  ].join('\n');
}

const argv = process.argv.slice(2);
const first = argv[0];
if (first === 'help' || first === 'list') {
  console.log(usage());
} else {
  const named = first !== undefined && !first.startsWith('-');
  const name = named ? first : DEFAULT_BENCHMARK;
  const benchmark = Object.hasOwn(BENCHMARKS, name) ? BENCHMARKS[name] : undefined;
  if (benchmark === undefined) {
    console.error(`bench: unknown benchmark '${name}'\n\n${usage()}`);
    process.exitCode = 2;
  } else {
    process.exitCode = await benchmark.run(named ? argv.slice(1) : argv);
  }
}
