// `npm run bench -- [name] [options]`: runs one benchmark, chosen by the first positional word
// (default `sim`); the rest of the command line is that benchmark's own options.
//
//   npm run bench                    the sim driver benchmark, full
//   npm run bench -- sim --quick     the same, smaller and shorter
//   npm run bench -- sim --help      its options

import { runAgentMemoryBench } from './agent-memory.js';
import { runSimBench } from './sim.js';

interface Benchmark {
  readonly summary: string;
  /** Runs with the benchmark's own arguments; resolves to the process exit code. */
  run(argv: string[]): Promise<number>;
}

const BENCHMARKS: Readonly<Record<string, Benchmark>> = {
  sim: {
    summary: 'the built-in deterministic guest: record/replay per profile, 1 GiB checkpoint throughput, copy-on-write pool',
    run: runSimBench,
  },
  memory: {
    summary: 'memory of both agent processes while they migrate a large guest (default 4 GiB), against the guest size and windows',
    run: runAgentMemoryBench,
  },
};
const DEFAULT_BENCHMARK = 'sim';

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
