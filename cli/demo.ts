// `npm run demo`: a live migration on this machine. Starts a source agent and a target agent as
// two processes on loopback, boots a guest on the source, migrates it while it runs, shows the
// phases and progress, and ends with a summary: the three figures (downtime, total migration
// time, data transmitted), rounds, units, and whether the digests matched.

import { Command, Option } from 'commander';
import { PROFILE_NAMES } from '../shared/driver/sim/profiles.js';
import { controlService, grpc, makeClient, pb, unary } from '../shared/transport/grpc.js';
import { type AgentProcess, startAgentProcess, stopAgentProcess } from './agent-process.js';

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
  const sourceControl = makeClient(controlService, 'Control', source.address, credentials);
  const targetControl = makeClient(controlService, 'Control', target.address, credentials);

  const memoryBytes = Number(opts.memoryMib) * 2 ** 20;
  const started = await unary(
    sourceControl,
    controlService.startGuest,
    pb.StartGuestRequest.create({ id: 'demo-guest', profile: opts.profile, memoryBytes }),
    60_000,
    'starting the guest',
  );
  say(`Booted guest '${started.guest?.description?.id}' on the source: ${started.guest?.description?.summary}. It runs in real time.`);
  await new Promise((resolve) => setTimeout(resolve, Number(opts.warmupMs)));

  const { jobId } = await unary(
    sourceControl,
    controlService.startMigration,
    pb.StartMigrationRequest.create({
      guestId: 'demo-guest',
      targetAddress: target.address,
      method: opts.method,
      downtimeLimitMs: Number(opts.downtimeLimitMs),
      nonConvergencePolicy: opts.policy,
      maxDurationMs: Number(opts.maxDurationMs),
    }),
    10_000,
    'starting the migration',
  );
  say(`Migration ${jobId} started (${({ crtr: 'CR/TR', precopy: 'pre-copy', postcopy: 'post-copy' } as Record<string, string>)[opts.method]}, downtime limit ${opts.downtimeLimitMs} ms, policy ${opts.policy}).`);

  const watch = sourceControl.makeServerStreamRequest(
    controlService.watchJob.path,
    controlService.watchJob.requestSerialize,
    controlService.watchJob.responseDeserialize,
    pb.WatchJobRequest.create({ jobId, intervalMs: 250 }),
  );
  let last: InstanceType<typeof pb.Job> | null = null;
  const tty = process.stdout.isTTY && !opts.json;
  for await (const event of watch as AsyncIterable<InstanceType<typeof pb.JobEvent>>) {
    last = event.job as InstanceType<typeof pb.Job>;
    const s = last.stats as InstanceType<typeof pb.MigrationStats>;
    if (event.kind === 'phase') {
      if (tty) process.stdout.write('\n');
      say(`  phase: ${event.message}`);
    } else if (event.kind === 'progress') {
      const pct = s.memoryBytes > 0 ? (100 * s.checkpointMemoryBytesCovered) / s.memoryBytes : 0;
      const line = `  ${s.status.padEnd(13)} checkpoint ${pct.toFixed(0).padStart(3)}%  units recorded ${s.unitsRecorded} sent ${s.unitsSent} replayed ${s.unitsReplayed}  ${s.mbps.toFixed(0)} Mbit/s  expected downtime ${s.expectedDowntimeMs.toFixed(0)} ms`;
      if (tty) process.stdout.write(`\r${line}`);
      else say(line);
    }
  }
  if (tty) process.stdout.write('\n');
  const s = last!.stats as InstanceType<typeof pb.MigrationStats>;
  const targetGuests = await unary(targetControl, controlService.listGuests, pb.ListGuestsRequest.create(), 5_000, 'listing target guests');
  const sourceGuests = await unary(sourceControl, controlService.listGuests, pb.ListGuestsRequest.create(), 5_000, 'listing source guests');
  const onTarget = targetGuests.guests.find((g) => g.description?.id === 'demo-guest')?.state ?? 'absent';
  const onSource = sourceGuests.guests.find((g) => g.description?.id === 'demo-guest')?.state ?? 'absent';
  const ok = s.status === 'completed' && s.sourceDigest !== '' && s.sourceDigest === s.targetDigest && onTarget === 'running' && onSource === 'absent';

  say('');
  say(`Migration ${s.status}${s.error ? `: ${s.error}` : ''}.`);
  say(`  downtime:                ${s.downtimeMs.toFixed(1)} ms (source suspend to target resume; limit ${opts.downtimeLimitMs} ms${s.forced ? ', forced' : ''})`);
  say(`  total migration time:    ${(s.totalTimeMs / 1000).toFixed(2)} s (start to commit)`);
  say(`  data transmitted:        ${mib(s.transferredBytes)} between the agents (checkpoint ${mib(s.checkpointWireBytes)} on the wire of ${mib(s.memoryBytes)} guest memory, log ${mib(s.logBytes)})`);
  if (opts.method === 'crtr') say(`  units:                   ${s.unitsRecorded} recorded, ${s.unitsReplayed} replayed at ${s.replayRate.toFixed(1)}x guest speed; ${s.rounds} wait-and-ack rounds`);
  else if (opts.method === 'precopy') say(`  rounds:                  ${s.rounds} pre-copy rounds; ${s.stopPagesSent} pages sent during stop-and-copy`);
  else say(`  pages:                   ${s.demandPages} fetched on demand by the running guest, the rest pushed`);
  say(`  digests:                 source ${s.sourceDigest}, target ${s.targetDigest}: ${s.sourceDigest === s.targetDigest ? 'equal' : 'DIFFERENT'}`);
  say(`  guest now:               ${onTarget} on the target, ${onSource} on the source`);
  if (opts.json) {
    console.log(
      JSON.stringify({
        status: s.status,
        method: s.method,
        profile: opts.profile,
        memoryBytes: s.memoryBytes,
        downtimeLimitMs: Number(opts.downtimeLimitMs),
        downtimeMs: s.downtimeMs,
        totalTimeMs: s.totalTimeMs,
        setupTimeMs: s.setupTimeMs,
        transferredBytes: s.transferredBytes,
        checkpointBytes: s.checkpointBytes,
        checkpointWireBytes: s.checkpointWireBytes,
        logBytes: s.logBytes,
        unitsRecorded: s.unitsRecorded,
        unitsReplayed: s.unitsReplayed,
        rounds: s.rounds,
        replayRate: s.replayRate,
        throttle: s.throttle,
        forced: s.forced,
        sourceDigest: s.sourceDigest,
        targetDigest: s.targetDigest,
        guestOnTarget: onTarget,
        guestOnSource: onSource,
        error: s.error,
      }),
    );
  }
  sourceControl.close();
  targetControl.close();
  exitCode = ok ? 0 : 1;
} finally {
  await Promise.all(agents.map((a) => stopAgentProcess(a)));
}
process.exit(exitCode);
