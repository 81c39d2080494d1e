#!/usr/bin/env node
// `vmmigrate`: the operator's command line. Runs the agent daemons (`source-agent`,
// `target-agent`) and drives a running agent through its Control API v2: guests, capacity,
// migrations (started, watched live, cancelled on Ctrl-C) and jobs, outgoing and incoming. Every
// client command speaks mutual TLS, or plaintext to a loopback agent only (cli/connect.ts), prints
// tables and lines for a person or one JSON document with --json (the Control v2 messages, enum
// values by name), and ends with an exit code a script can act on.

import { Command, CommanderError, InvalidArgumentError as CommanderArgumentError, Option } from 'commander';
import { NON_CONVERGENCE_POLICIES } from '../shared/convergence.js';
import { PROFILE_NAMES } from '../shared/driver/sim/profiles.js';
import { VmMigrateError } from '../shared/errors.js';
import { AGENT_VERSION } from '../shared/protocol.js';
import { controlServiceV2, grpc, pb2 } from '../shared/transport/grpc.js';
import { agentCommand } from './agent.js';
import { migrate, type MigrateOptions } from './migrate.js';
import { addProtectionCommands } from './protect.js';
import { clientAction, exitCodeOf, Session } from './session.js';
import { CallError, EXIT } from './calls.js';
import { AGENT_ADDRESS_DEFAULT, parseAddress } from './connect.js';
import { parseBandwidth, parseDuration, parseInteger } from './units.js';
import {
  capacityLines,
  guestSummary,
  guestStateWord,
  guestsTable,
  jobEnded,
  jobLines,
  jobStateWord,
  jobsTable,
  messageJson,
} from './views.js';

const EXIT_CODES_HELP = `
Exit codes:
  0  success
  1  the operation failed: the migration failed or was cancelled, an unknown job or guest,
     a request the agent refused (no room, wrong state)
  2  usage or configuration error: bad flags or values (here or as judged by the agent,
     INVALID_ARGUMENT), missing TLS material, --plaintext to a non-loopback address
  3  the agent is unreachable (UNAVAILABLE, DEADLINE_EXCEEDED)
  4  the agent's security refused this client (UNAUTHENTICATED, PERMISSION_DENIED)

Client commands talk to --agent (default: $VMMIGRATE_AGENT, else ${AGENT_ADDRESS_DEFAULT}) over
mutual TLS (--tls-ca, --tls-cert, --tls-key, or $VMMIGRATE_TLS_CA, $VMMIGRATE_TLS_CERT,
$VMMIGRATE_TLS_KEY), or with --plaintext to an agent on loopback only.`;

// --- option parsing --------------------------------------------------------------------------

/** A commander argument parser from one of units.ts's (their errors become usage errors). */
function parsedBy<T>(parse: (text: string) => T): (text: string) => T {
  return (text: string) => {
    try {
      return parse(text);
    } catch (error) {
      if (error instanceof VmMigrateError) throw new CommanderArgumentError(error.message);
      throw error;
    }
  };
}

const integer = (name: string, min: number, max: number) => parsedBy((text) => parseInteger(name, text, min, max));

const agentAddress = parsedBy((text: string) => {
  parseAddress(text);
  return text;
});

/** The connection options and --json, on every command that talks to an agent. */
function withClientOptions(command: Command): Command {
  return command
    .addOption(new Option('--agent <host:port>', 'the agent to talk to').env('VMMIGRATE_AGENT').default(AGENT_ADDRESS_DEFAULT).argParser(agentAddress))
    .addOption(new Option('--tls-ca <file>', 'PEM file of the CA that signed the agent certificate (mutual TLS)').env('VMMIGRATE_TLS_CA'))
    .addOption(new Option('--tls-cert <file>', "PEM file of this client's certificate (mutual TLS)").env('VMMIGRATE_TLS_CERT'))
    .addOption(new Option('--tls-key <file>', "PEM file of this client's private key (mutual TLS)").env('VMMIGRATE_TLS_KEY'))
    .option('--plaintext', 'no TLS; allowed only to an agent on loopback (127.0.0.0/8, ::1, localhost)')
    .option('--timeout-ms <ms>', 'deadline of each call to the agent', integer('--timeout-ms', 1, 3_600_000), 10_000)
    .option('--json', 'print one JSON document on stdout and nothing else');
}

// --- guests and capacity ---------------------------------------------------------------------

async function listGuests(session: Session): Promise<number> {
  const { guests } = await session.call(controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 'listing guests');
  session.document(guests.map(messageJson));
  session.say(guestsTable(guests));
  return EXIT.ok;
}

interface StartGuestOptions {
  /** A sim guest's workload (the agent's default, idle, when left out); a qemu guest takes none. */
  profile?: string;
  memoryMib: number;
  id?: string;
  unitMs?: number;
}

/** Booting writes every page of the guest's memory: give it at least this long. */
const START_GUEST_TIMEOUT_MS_MIN = 60_000;

async function startGuest(session: Session, opts: StartGuestOptions): Promise<number> {
  const request = pb2.StartGuestRequest.create({ id: opts.id ?? '', profile: opts.profile ?? '', memoryBytes: opts.memoryMib * 2 ** 20, unitMs: opts.unitMs ?? 0 });
  const res = await session.call(controlServiceV2.startGuest, request, 'starting a guest', Math.max(session.options.timeoutMs, START_GUEST_TIMEOUT_MS_MIN));
  const guest = res.guest ?? pb2.Guest.create();
  session.document(messageJson(guest));
  session.say(`Started guest '${guest.id}' on ${session.options.agent}: ${guestSummary(guest)} (${guestStateWord(guest.state)}).`);
  return EXIT.ok;
}

/** The agent answers a stop once the guest's hypervisor process exited (a QEMU has qemu.stopGraceMs, 5 s by default): give it that long. */
const STOP_GUEST_TIMEOUT_MS_MIN = 30_000;

async function stopGuest(session: Session, id: string): Promise<number> {
  await session.call(controlServiceV2.stopGuest, pb2.StopGuestRequest.create({ id }), `stopping guest '${id}'`, Math.max(session.options.timeoutMs, STOP_GUEST_TIMEOUT_MS_MIN));
  session.document({ id, stopped: true });
  session.say(`Stopped guest '${id}' on ${session.options.agent}; its memory is freed.`);
  return EXIT.ok;
}

/**
 * A console's text as a terminal may show it: the guest's terminal escapes (a reset, colours, the
 * cursor's moves) and carriage returns left out, other control characters as '?'.
 */
export function printableConsole(text: string): string {
  return text
    .replace(/\x1b\[[0-?]*[ -/]*[@-~]/g, '')
    .replace(/\x1b[@-Z\\-_c]?/g, '')
    .replace(/\r/g, '')
    .replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '?');
}

async function showConsole(session: Session, id: string, opts: { bytes?: number; raw?: boolean }): Promise<number> {
  const res = await session.call(controlServiceV2.getConsole, pb2.GetConsoleRequest.create({ guestId: id, maxBytes: opts.bytes ?? 0 }), `reading the console of guest '${id}'`);
  session.document({ id, text: res.text, bytesTotal: Number(res.bytesTotal) });
  session.say((opts.raw ? res.text : printableConsole(res.text)).replace(/\n$/, ''));
  return EXIT.ok;
}

async function showCapacity(session: Session): Promise<number> {
  const capacity = await session.call(controlServiceV2.getCapacity, pb2.GetCapacityRequest.create(), 'getting the capacity');
  session.document(messageJson(capacity));
  session.say(...capacityLines(capacity));
  return EXIT.ok;
}

// --- jobs ------------------------------------------------------------------------------------

/** Outgoing and incoming jobs alike (ListJobs with no role). */
async function listJobs(session: Session): Promise<number> {
  const { jobs } = await session.call(controlServiceV2.listJobs, pb2.ListJobsRequest.create(), 'listing jobs');
  session.document(jobs.map(messageJson));
  session.say(jobsTable(jobs));
  return EXIT.ok;
}

async function cancelJob(session: Session, jobId: string): Promise<number> {
  const res = await session.call(controlServiceV2.cancelJob, pb2.CancelJobRequest.create({ jobId }), `cancelling job ${jobId}`);
  const job = res.job ?? pb2.Job.create({ jobId });
  session.document(messageJson(job));
  const status = jobStateWord(job.state);
  // CancelJob answers a job that had already ended with that job, unchanged: nothing was cancelled.
  if (job.state === pb2.JobState.JOB_STATE_SUCCEEDED || job.state === pb2.JobState.JOB_STATE_FAILED) {
    process.stderr.write(`vmmigrate: cancelling job ${jobId} on ${session.options.agent}: the job had already ended (${status}); nothing to cancel\n`);
    return EXIT.failed;
  }
  session.say(`Job ${jobId} is ${status}; the guest '${job.guestId}' stays on the source. Follow it with 'vmmigrate status ${jobId}'.`);
  return EXIT.ok;
}

interface ResolveOptions {
  resumeHere?: boolean;
  discardHere?: boolean;
  force?: boolean;
}

/** An operator's action on an in-doubt job: ask its target again (the default), or decide by hand. */
async function resolveJob(session: Session, jobId: string, o: ResolveOptions): Promise<number> {
  const { ResolveAction } = pb2;
  const action = o.resumeHere ? ResolveAction.RESOLVE_ACTION_RESUME_HERE : o.discardHere ? ResolveAction.RESOLVE_ACTION_DISCARD_HERE : ResolveAction.RESOLVE_ACTION_QUERY;
  const res = await session.call(controlServiceV2.resolveJob, pb2.ResolveJobRequest.create({ jobId, action, force: o.force === true }), `resolving job ${jobId}`);
  const job = res.job ?? pb2.Job.create({ jobId });
  session.document(messageJson(job));
  session.say(`Job ${jobId} is ${jobStateWord(job.state)}${job.errorMessage ? `: ${job.errorMessage}` : ''}`);
  return EXIT.ok;
}

async function showJob(session: Session, jobId: string): Promise<number> {
  const job = await session.call(controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), `getting job ${jobId}`);
  session.document(messageJson(job));
  session.say(...jobLines(job));
  return EXIT.ok;
}

/**
 * The standard gRPC health status of the agent as a whole (service ''): SERVING, NOT_SERVING,
 * ..., or "not offered" by an agent without the Health service (UNIMPLEMENTED).
 */
async function healthOf(session: Session): Promise<string> {
  // grpc-health-check parses its .proto when loaded: only `status` pays for that.
  const { service } = await import('grpc-health-check');
  try {
    const res = (await session.call(service.Check, { service: '' }, 'checking health')) as { status?: string };
    return res.status ?? 'UNKNOWN';
  } catch (error) {
    if (error instanceof CallError && error.code === grpc.status.UNIMPLEMENTED) return 'not offered';
    if (error instanceof CallError && error.code === grpc.status.NOT_FOUND) return 'unknown (the agent reports no status for the server as a whole)';
    throw error;
  }
}

async function showAgent(session: Session): Promise<number> {
  // Capacity first: an unreachable agent fails here, once.
  const capacity = await session.call(controlServiceV2.getCapacity, pb2.GetCapacityRequest.create(), 'getting the capacity');
  const [{ guests }, { jobs }, health] = await Promise.all([
    session.call(controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 'listing guests'),
    session.call(controlServiceV2.listJobs, pb2.ListJobsRequest.create(), 'listing jobs'),
    healthOf(session),
  ]);
  const activeJobs = jobs.filter((j) => !jobEnded(j));
  session.document({ agent: session.options.agent, health, capacity: messageJson(capacity), guests: guests.map(messageJson), activeJobs: activeJobs.map(messageJson) });
  session.say(
    `agent:     ${session.options.agent}`,
    `health:    ${health}`,
    ...capacityLines(capacity),
    '',
    `Guests (${guests.length}):`,
    guestsTable(guests),
    '',
    `Active jobs (${activeJobs.length}):`,
    jobsTable(activeJobs),
  );
  return EXIT.ok;
}

// --- the program -----------------------------------------------------------------------------

function buildProgram(): Command {
  const program = new Command('vmmigrate')
    .description('Live migration of VMs by checkpoint + trace/replay: run the agents, and drive them.')
    .version(AGENT_VERSION)
    .exitOverride()
    .configureOutput({
      // Commander's usage errors in the CLI's one-line shape: "vmmigrate: <what>".
      outputError: (text, write) => write(`vmmigrate: ${text.replace(/^error: /, '').trimEnd()} (see 'vmmigrate help')\n`),
    })
    .addHelpText('afterAll', EXIT_CODES_HELP);

  // The daemons: agent.ts owns their flags and their run (start, print where it listens, stop on SIGTERM).
  for (const role of ['source', 'target'] as const) program.addCommand(agentCommand(role).copyInheritedSettings(program));

  withClientOptions(program.command('guests').description('list the guests on the agent: id, state, role (and the job behind it), memory, profile')).action(clientAction((s) => listGuests(s)));

  const guest = program.command('guest').description('start, stop or read a guest on the agent (sim: a workload profile; qemu: the image its agent is configured with)');
  withClientOptions(
    guest
      .command('start')
      .description('boot a guest: sim, a workload profile that runs in real time; qemu, the image its agent is configured with')
      .addOption(new Option('--profile <name>', "sim: the workload (default: the agent's, idle); qemu: none, a profile is refused (the guest runs the operating system it boots)").choices(PROFILE_NAMES))
      .addOption(new Option('--memory-mib <n>', 'guest memory, MiB (64 to 65536, even)').argParser(integer('--memory-mib', 64, 65536)).makeOptionMandatory())
      .option('--id <id>', 'guest id (default: the agent picks one)')
      .option('--unit-ms <n>', "log unit length, ms (default: the agent's)", integer('--unit-ms', 1, 100)),
  ).action(clientAction((s) => startGuest(s, s.options as unknown as StartGuestOptions)));
  withClientOptions(guest.command('stop <id>').description('stop a guest and free its memory')).action(clientAction((s, id) => stopGuest(s, id)));
  withClientOptions(
    guest
      .command('console <id>')
      .description("the last bytes of a guest's console (qemu: its serial port) on this agent")
      .option('--bytes <n>', 'how many of the last bytes (default 16384)', integer('--bytes', 1, 65_536))
      .option('--raw', "print the bytes as the guest wrote them (its terminal escapes too); default: without them"),
  ).action(clientAction((s, id) => showConsole(s, id, s.options as { bytes?: number; raw?: boolean })));

  withClientOptions(
    program
      .command('migrate <guest>')
      .description('live-migrate a guest from this agent (the source) to a target agent, and watch it to the end')
      .addOption(new Option('--to <host:port>', 'the target agent, as the source agent reaches it').argParser(agentAddress).makeOptionMandatory())
      .addOption(new Option('--method <name>', "migration method (default: the agent's choice for the guest's driver: crtr for sim, qemu-native for qemu)").choices(['crtr', 'precopy', 'postcopy', 'qemu-native']))
      .option('--downtime-limit-ms <n>', "downtime to aim for (default: the agent's, 300)", integer('--downtime-limit-ms', 1, 600_000))
      .option('--max-bandwidth <rate>', 'bandwidth cap between the agents: 1gbit, 100mbit, 125MB/s, 12MiB/s or bytes/s (default: none)', parsedBy(parseBandwidth))
      .addOption(new Option('--policy <name>', "what to do if it does not converge (default: the agent's, abort)").choices(NON_CONVERGENCE_POLICIES))
      .option('--max-duration <time>', "bound on the migration: seconds, or 1500ms, 90s, 10m (default: the agent's, 10 min)", parsedBy(parseDuration))
      .option('--no-hybrid', 'crtr: catch up by replaying the log only, never by delta checkpoints (for comparison)')
      .option('--no-final-approach', 'crtr: stop without first slowing the guest so that the replica drains its backlog (lower disruption on a guest that replays barely faster than it runs, higher downtime)')
      .option('--postcopy', 'qemu-native: switch to post-copy as soon as the hypervisor\'s stream runs')
      .option('--no-wait', 'print the job id and return at once instead of watching')
      .option('--dry-run', "migrate nothing: the agent samples the guest and the link and predicts each method's downtime, total time, data and disruption, and recommends one")
      .option('--sample-ms <n>', "with --dry-run: how long the agent samples the guest (default: the agent's, 2000)", integer('--sample-ms', 250, 30_000)),
  ).action(clientAction((s, guestId) => migrate(s, guestId, s.options as unknown as MigrateOptions)));

  withClientOptions(program.command('jobs').description('list the migration jobs of the agent, outgoing and incoming')).action(clientAction((s) => listJobs(s)));
  withClientOptions(program.command('status [job]').description("a job's statistics; without a job: the agent's address, health, capacity, guests and active jobs")).action(
    clientAction((s, jobId) => (jobId ? showJob(s, jobId) : showAgent(s))),
  );
  withClientOptions(program.command('cancel <job>').description('cancel a migration job not yet committed (the guest stays on the source)')).action(clientAction((s, jobId) => cancelJob(s, jobId)));
  withClientOptions(
    program
      .command('resolve <job>')
      .description("an in-doubt job (its commit's answer was lost): ask the target again now; or resume the guest here, or drop the copy here, which the agent refuses while the target may have decided otherwise, unless --force")
      .addOption(new Option('--resume-here', 'resume the suspended guest on this (source) agent').conflicts('discardHere'))
      .option('--discard-here', 'drop the suspended copy here: the guest lives on the target')
      .option('--force', 'act without the target\'s word: may leave the guest running twice (--resume-here) or nowhere (--discard-here)'),
  ).action(clientAction((s, jobId) => resolveJob(s, jobId, s.options as unknown as ResolveOptions)));
  withClientOptions(program.command('capacity').description('what the agent offers: memory and vCPUs, free and total; the methods it can carry out')).action(clientAction((s) => showCapacity(s)));
  addProtectionCommands(program, { withClientOptions, clientAction, agentAddress, integer });
  return program;
}

// grpc-js sets the TLS server name to the agent's host even when it is an IP address, which makes
// Node warn (DEP0123) on every TLS connection to an IP: nothing the operator can act on, and it
// would break the one line on stderr that scripts read. Every other warning still shows.
const emitWarning = process.emitWarning.bind(process);
process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
  const code = typeof rest[0] === 'object' && rest[0] !== null ? (rest[0] as { code?: string }).code : rest[1];
  if (code === 'DEP0123') return;
  (emitWarning as (...args: unknown[]) => void)(warning, ...rest);
}) as typeof process.emitWarning;

// A reader that goes away (`vmmigrate jobs | head -1`) is not a failure: the command goes on (a
// migration being watched keeps being watched) and the rest of its output is dropped.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code !== 'EPIPE') throw error;
});

try {
  // Not process.exit(): `source-agent` and `target-agent` keep running after their action returns.
  await buildProgram().parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    // Help and version exit 0; every other commander error is a usage error, already printed.
    process.exitCode = error.exitCode === 0 ? EXIT.ok : EXIT.usage;
  } else if (error instanceof VmMigrateError) {
    // An agent daemon's own option checks (agent.ts).
    process.stderr.write(`vmmigrate: ${error.message}\n`);
    process.exitCode = exitCodeOf(error);
  } else {
    throw error;
  }
}
