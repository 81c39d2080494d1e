// `npm run demo`: a live migration on this machine. Starts a source agent and a target agent as
// two processes on loopback, boots a guest on the source, migrates it while it runs, shows the
// phases and progress, and ends with a summary: the three figures (downtime, total migration
// time, data transmitted), rounds, units, and whether the digests matched.

import { Command, Option } from 'commander';
import { PROFILE_NAMES } from '../shared/driver/sim/profiles.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';
import { type AgentProcess, startAgentProcess, stopAgentProcess } from './agent-process.js';
import { guestStateWord, guestSummary, type JobMessage, jobStateWord, methodValue, methodWord, phaseWord, policyValue } from './views.js';

const program = new Command()
  .name('demo')
  .description('Live-migrate a sim guest between two agent processes on loopback.')
  .addOption(new Option('--profile <name>', 'workload profile').choices(PROFILE_NAMES).default('web'))
  .option('--memory-mib <n>', 'guest memory in MiB', '512')
  .addOption(new Option('--method <name>', 'migration method').choices(['crtr', 'precopy', 'postcopy']).default('crtr'))
  .option('--downtime-limit-ms <n>', 'downtime limit', '300')
  .addOption(new Option('--policy <name>', 'non-convergence policy').choices(['abort', 'force', 'throttle']).default('throttle'))
  .option('--max-duration-ms <n>', 'maximum migration duration', '120000')
  .option('--warmup-ms <n>', 'how long the guest runs before the migration starts', '1000')
  .option('--json', 'print one JSON object with the results as the last line')
  .parse();
const opts = program.opts<{ method: string; profile: string; memoryMib: string; downtimeLimitMs: string; policy: string; maxDurationMs: string; warmupMs: string; json?: boolean }>();

const say = (line: string) => {
  if (!opts.json) console.log(line);
};
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

const agents: AgentProcess[] = [];
// DEMO_AGENT_NODE_ARGS: extra Node.js flags for the agents (e.g. "--cpu-prof" to profile them).
const nodeArgs = (process.env.DEMO_AGENT_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
const agentArgs = ['--log-level', process.env.DEMO_LOG_LEVEL ?? 'warn'];
let exitCode = 1;
try {
  const [source, target] = await Promise.all([startAgentProcess('source', agentArgs, nodeArgs), startAgentProcess('target', agentArgs, nodeArgs)]);
  agents.push(source, target);
  say(`Started a source agent at ${source.address} and a target agent at ${target.address} (two processes).`);
  const credentials = grpc.credentials.createInsecure();
  const sourceControl = makeClient(controlServiceV2, 'Control', source.address, credentials);
  const targetControl = makeClient(controlServiceV2, 'Control', target.address, credentials);

  const memoryBytes = Number(opts.memoryMib) * 2 ** 20;
  const started = await unary(
    sourceControl,
    controlServiceV2.startGuest,
    pb2.StartGuestRequest.create({ id: 'demo-guest', profile: opts.profile, memoryBytes }),
    60_000,
    'starting the guest',
  );
  say(`Booted guest '${started.guest?.id}' on the source: ${guestSummary(started.guest ?? {})}. It runs in real time.`);
  await new Promise((resolve) => setTimeout(resolve, Number(opts.warmupMs)));

  const { jobId } = await unary(
    sourceControl,
    controlServiceV2.startMigration,
    pb2.StartMigrationRequest.create({
      guestId: 'demo-guest',
      targetAddress: target.address,
      method: methodValue(opts.method),
      downtimeLimitMs: Number(opts.downtimeLimitMs),
      nonConvergencePolicy: policyValue(opts.policy),
      maxDurationMs: Number(opts.maxDurationMs),
    }),
    10_000,
    'starting the migration',
  );
  say(`Migration ${jobId} started (${({ crtr: 'CR/TR', precopy: 'pre-copy', postcopy: 'post-copy' } as Record<string, string>)[opts.method]}, downtime limit ${opts.downtimeLimitMs} ms, policy ${opts.policy}).`);

  const watch = sourceControl.makeServerStreamRequest(
    controlServiceV2.watchJob.path,
    controlServiceV2.watchJob.requestSerialize,
    controlServiceV2.watchJob.responseDeserialize,
    pb2.WatchJobRequest.create({ jobId, intervalMs: 250 }),
  );
  let last: JobMessage | null = null;
  const tty = process.stdout.isTTY && !opts.json;
  const { JobEventKind } = pb2;
  for await (const event of watch as AsyncIterable<InstanceType<typeof pb2.JobEvent>>) {
    last = event.job ?? last;
    const s = last?.source ?? {};
    if (event.kind === JobEventKind.JOB_EVENT_KIND_PHASE) {
      if (tty) process.stdout.write('\n');
      say(`  phase: ${phaseWord(event.phase)}`);
    } else if (event.kind === JobEventKind.JOB_EVENT_KIND_PROGRESS) {
      const c = s.crtr ?? {};
      const mbps = (Number(s.throughputBytesPerSec ?? 0) * 8) / 1e6;
      const line = `  ${phaseWord(last?.phase).padEnd(13)} checkpoint ${(s.checkpointPercent ?? 0).toFixed(0).padStart(3)}%  units recorded ${c.unitsRecorded ?? 0} sent ${c.unitsSent ?? 0} replayed ${c.unitsReplayed ?? 0}  ${mbps.toFixed(0)} Mbit/s  expected downtime ${(s.expectedDowntimeMs ?? 0).toFixed(0)} ms`;
      if (tty) process.stdout.write(`\r${line}`);
      else say(line);
    }
  }
  if (tty) process.stdout.write('\n');
  const job = last!;
  const s = job.source ?? {};
  const bytes = s.bytes ?? {};
  const crtr = s.crtr ?? {};
  const status = jobStateWord(job.state);
  // The bulk copy of memory: CR/TR's checkpoint stream, or the other methods' pages.
  const bulk = job.method === pb2.Method.METHOD_CRTR ? bytes.checkpoint : bytes.pages;
  const figures = {
    downtimeMs: s.downtimeMs ?? 0,
    totalTimeMs: s.totalTimeMs ?? 0,
    transferredBytes: Number(bytes.transferredBytes ?? 0),
    checkpointBytes: Number(bulk?.rawBytes ?? 0),
    checkpointWireBytes: Number(bulk?.wireBytes ?? 0),
    memoryBytes: Number(s.memoryBytes ?? 0),
    logBytes: Number(crtr.logBytes ?? 0),
    rounds: s.precopy ? (s.precopy.rounds ?? 0) : (crtr.stopRequests ?? 0),
    sourceDigest: s.sourceDigest ?? '',
    targetDigest: s.targetDigest ?? '',
  };
  const guestOn = async (control: typeof sourceControl, what: string) => {
    const { guests } = await unary(control, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 5_000, what);
    const guest = guests.find((g) => g.id === 'demo-guest');
    return guest ? guestStateWord(guest.state) : 'absent';
  };
  const onTarget = await guestOn(targetControl, 'listing target guests');
  const onSource = await guestOn(sourceControl, 'listing source guests');
  const ok = status === 'completed' && figures.sourceDigest !== '' && figures.sourceDigest === figures.targetDigest && onTarget === 'running' && onSource === 'absent';

  say('');
  say(`Migration ${status}${job.errorMessage ? `: ${job.errorMessage}` : ''}.`);
  say(`  downtime:                ${figures.downtimeMs.toFixed(1)} ms (source suspend to target resume; limit ${opts.downtimeLimitMs} ms${crtr.forced ? ', forced' : ''})`);
  const disruption = s.disruption;
  if (disruption) say(`  disruption:              ${(disruption.disruptionMs ?? 0).toFixed(1)} ms of the guest's work lost (downtime, stalls ${((disruption.sourceStallMs ?? 0) + (disruption.targetStallMs ?? 0)).toFixed(1)} ms, throttled ${(disruption.throttledMs ?? 0).toFixed(1)} ms, lost schedule ${(disruption.lostScheduleMs ?? 0).toFixed(1)} ms)`);
  say(`  total migration time:    ${(figures.totalTimeMs / 1000).toFixed(2)} s (start to commit)`);
  say(`  data transmitted:        ${mib(figures.transferredBytes)} between the agents (checkpoint ${mib(figures.checkpointWireBytes)} on the wire of ${mib(figures.memoryBytes)} guest memory, log ${mib(figures.logBytes)})`);
  if (opts.method === 'crtr') say(`  units:                   ${crtr.unitsRecorded ?? 0} recorded, ${crtr.unitsReplayed ?? 0} replayed at ${(crtr.replayRate ?? 0).toFixed(1)}x guest speed; ${figures.rounds} wait-and-ack rounds`);
  else if (opts.method === 'precopy') say(`  rounds:                  ${figures.rounds} pre-copy rounds; ${Number(s.precopy?.stopPagesSent ?? 0)} pages sent during stop-and-copy`);
  else say(`  pages:                   ${Number(s.postcopy?.demandPages ?? 0)} fetched on demand by the running guest, the rest pushed`);
  say(`  digests:                 source ${figures.sourceDigest}, target ${figures.targetDigest}: ${figures.sourceDigest === figures.targetDigest ? 'equal' : 'DIFFERENT'}`);
  say(`  guest now:               ${onTarget} on the target, ${onSource} on the source`);
  if (opts.json) {
    console.log(
      JSON.stringify({
        status,
        method: methodWord(job.method),
        profile: opts.profile,
        memoryBytes: figures.memoryBytes,
        downtimeLimitMs: Number(opts.downtimeLimitMs),
        downtimeMs: figures.downtimeMs,
        totalTimeMs: figures.totalTimeMs,
        disruptionMs: s.disruption?.disruptionMs ?? 0,
        throttledMs: s.disruption?.throttledMs ?? 0,
        setupTimeMs: s.setupTimeMs ?? 0,
        transferredBytes: figures.transferredBytes,
        checkpointBytes: figures.checkpointBytes,
        checkpointWireBytes: figures.checkpointWireBytes,
        logBytes: figures.logBytes,
        unitsRecorded: crtr.unitsRecorded ?? 0,
        unitsReplayed: crtr.unitsReplayed ?? 0,
        rounds: figures.rounds,
        replayRate: crtr.replayRate ?? 0,
        throttle: crtr.throttle ?? 1,
        forced: crtr.forced ?? false,
        sourceDigest: figures.sourceDigest,
        targetDigest: figures.targetDigest,
        guestOnTarget: onTarget,
        guestOnSource: onSource,
        error: job.errorMessage ?? '',
      }),
    );
  }
  // The guest ends with the demo: stopped where it runs before its agent stops (an agent stopped
  // with a guest says so as an error).
  for (const control of [targetControl, sourceControl]) {
    await unary(control, controlServiceV2.stopGuest, pb2.StopGuestRequest.create({ id: 'demo-guest' }), 10_000, 'stopping the demo guest').catch(() => {});
  }
  sourceControl.close();
  targetControl.close();
  exitCode = ok ? 0 : 1;
} finally {
  await Promise.all(agents.map((a) => stopAgentProcess(a)));
}
process.exit(exitCode);
