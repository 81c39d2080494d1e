// `npm run bench -- memory`: how much memory each agent uses while it migrates a large guest,
// against the guest's size and the configured windows. Starts two agent processes on loopback,
// boots a guest on the source, migrates it, and samples both processes' resident memory (VmRSS,
// and the kernel's peak VmHWM) from /proc while it runs.
//
// What to expect: the source holds the guest (what its memory touched) plus bounded queues; the
// target holds the replica (the same pages) plus at most its unit window of unreplayed units.
// Neither should grow with the guest's size beyond that.

import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { type AgentProcess, startAgentProcess, stopAgentProcess } from '../cli/agent-process.js';
import { jobEnded, jobStateWord, policyValue } from '../cli/views.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';
import { MIB_BYTES } from './format.js';

function procKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

const mib = (b: number) => (b / MIB_BYTES).toFixed(0);

export async function runAgentMemoryBench(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'memory-mib': { type: 'string', default: '4096' },
      profile: { type: 'string', default: 'web' },
      'unit-window-mib': { type: 'string', default: '64' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log('usage: npm run bench -- memory [--memory-mib 4096] [--profile web] [--unit-window-mib 64] [--json]');
    return 0;
  }
  const memoryBytes = Number(values['memory-mib']) * MIB_BYTES;
  const windowArgs = ['--unit-window-mib', String(values['unit-window-mib']), '--log-level', 'warn', '--memory-mib', String(Math.max(16384, 2 * Number(values['memory-mib'])))];
  const agents: AgentProcess[] = [];
  try {
    const [source, target] = await Promise.all([startAgentProcess('source', windowArgs), startAgentProcess('target', windowArgs)]);
    agents.push(source, target);
    const idle = { source: procKiB(source.pid, 'VmRSS'), target: procKiB(target.pid, 'VmRSS') };
    const control = makeClient(controlServiceV2, 'Control', source.address, grpc.credentials.createInsecure());
    const bootStart = performance.now();
    await unary(control, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'big', profile: values.profile, memoryBytes }), 300_000, 'starting the guest');
    const bootMs = performance.now() - bootStart;
    const booted = procKiB(source.pid, 'VmRSS');
    console.error(`booted a ${mib(memoryBytes)} MiB '${values.profile}' guest in ${bootMs.toFixed(0)} ms; source RSS ${mib(booted)} MiB; migrating...`);
    const { jobId } = await unary(
      control,
      controlServiceV2.startMigration,
      pb2.StartMigrationRequest.create({ guestId: 'big', targetAddress: target.address, nonConvergencePolicy: policyValue('force'), maxDurationMs: 900_000 }),
      10_000,
      'starting the migration',
    );
    const peak = { source: 0, target: 0 };
    let job: InstanceType<typeof pb2.Job>;
    for (;;) {
      await sleep(200);
      peak.source = Math.max(peak.source, procKiB(source.pid, 'VmRSS'));
      peak.target = Math.max(peak.target, procKiB(target.pid, 'VmRSS'));
      job = await unary(control, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'job');
      if (jobEnded(job)) break;
    }
    const hwm = { source: procKiB(source.pid, 'VmHWM'), target: procKiB(target.pid, 'VmHWM') };
    const s = job.source ?? {};
    control.close();
    const status = jobStateWord(job.state);
    const result = {
      memoryBytes,
      profile: values.profile,
      status,
      error: job.errorMessage ?? '',
      totalTimeMs: s.totalTimeMs ?? 0,
      downtimeMs: s.downtimeMs ?? 0,
      // Raw checkpoint bytes: the guest's non-zero pages.
      checkpointBytes: Number(s.bytes?.checkpoint?.rawBytes ?? 0),
      transferredBytes: Number(s.bytes?.transferredBytes ?? 0),
      digestsEqual: (s.sourceDigest ?? '') !== '' && s.sourceDigest === s.targetDigest,
      unitWindowBytes: Number(values['unit-window-mib']) * MIB_BYTES,
      sourceRssIdleBytes: idle.source,
      sourceRssAfterBootBytes: booted,
      sourceRssPeakBytes: Math.max(peak.source, hwm.source),
      targetRssIdleBytes: idle.target,
      targetRssPeakBytes: Math.max(peak.target, hwm.target),
    };
    console.log(`guest ${mib(memoryBytes)} MiB (${values.profile}), checkpoint ${mib(result.checkpointBytes)} MiB of non-zero pages; migration ${status} in ${(result.totalTimeMs / 1000).toFixed(1)} s, downtime ${result.downtimeMs.toFixed(0)} ms, digests ${result.digestsEqual ? 'equal' : 'DIFFERENT'}`);
    console.log(`source agent: RSS ${mib(idle.source)} MiB idle, ${mib(booted)} MiB with the guest booted, peak ${mib(result.sourceRssPeakBytes)} MiB during the migration`);
    console.log(`target agent: RSS ${mib(idle.target)} MiB idle, peak ${mib(result.targetRssPeakBytes)} MiB (replica + unit window of ${values['unit-window-mib']} MiB)`);
    console.log(
      `peak / guest size: source ${(result.sourceRssPeakBytes / memoryBytes).toFixed(2)}, target ${(result.targetRssPeakBytes / memoryBytes).toFixed(2)}; ` +
        `peak over the guest's own pages (checkpoint bytes): source +${mib(result.sourceRssPeakBytes - result.checkpointBytes)} MiB, target +${mib(result.targetRssPeakBytes - result.checkpointBytes)} MiB`,
    );
    if (values.json) console.log(JSON.stringify(result));
    return status === 'completed' && result.digestsEqual ? 0 : 1;
  } finally {
    await Promise.all(agents.map((a) => stopAgentProcess(a)));
  }
}
