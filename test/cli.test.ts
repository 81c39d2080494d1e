// The operator CLI as a person or a script runs it: `node dist/cli/vmmigrate.js ...` as a child
// process, against a source and a target agent that the CLI itself started (`vmmigrate
// source-agent`, `vmmigrate target-agent`) on 127.0.0.1, and against small gRPC servers made
// here for what those agents do not do (mutual TLS, the health service, a security refusal).
// Every process and server started here is stopped when the test ends.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as createTcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { agentOptionsFromArgs, startAgent } from '../cli/agent.js';
import { type AgentProcess, stopAgentProcess } from '../cli/agent-process.js';
import { CallError, EXIT, errorLine, exitCodeForStatus } from '../cli/calls.js';
import { credentialsFrom, isLoopback, parseAddress } from '../cli/connect.js';
import { parseBandwidth, parseDuration } from '../cli/units.js';
import { guestsTable, jobsTable, messageJson, progressView } from '../cli/views.js';
import { VmMigrateError } from '../shared/errors.js';
import { controlService, controlServiceV2, createServer, grpc, makeClient, pb, pb2, unary } from '../shared/transport/grpc.js';

const CLI = fileURLToPath(new URL('../cli/vmmigrate.js', import.meta.url));
const MiB = 2 ** 20;
/** Bound on one CLI run; none of them should come near it. */
const RUN_TIMEOUT_MS = 60_000;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The environment of a CLI run: this process's, without VMMIGRATE_* settings of whoever runs the tests. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('VMMIGRATE_')) env[k] = v;
  return { ...env, ...extra };
}

const running = new Set<import('node:child_process').ChildProcess>();
t.teardown(() => {
  for (const child of running) child.kill('SIGKILL');
});

/**
 * Runs the CLI with `args` to its end. `onOutput` sees stdout and stderr as they grow and may
 * return a signal to send to the CLI.
 */
function runCli(args: string[], options: { env?: Record<string, string>; onOutput?: (stdout: string, stderr: string) => NodeJS.Signals | null } = {}): Promise<Run> {
  const child = spawn(process.execPath, ['--enable-source-maps', CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv(options.env) });
  running.add(child);
  let stdout = '';
  let stderr = '';
  const onData = () => {
    const signal = options.onOutput?.(stdout, stderr) ?? null;
    if (signal !== null) child.kill(signal);
  };
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
    onData();
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
    onData();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), RUN_TIMEOUT_MS);
  return new Promise((resolve) =>
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      running.delete(child);
      resolve({ code, signal, stdout, stderr });
    }),
  );
}

/** An `onOutput` that sends SIGINT once, when `pattern` first shows in stdout or stderr. */
function interruptOnce(pattern: RegExp): (stdout: string, stderr: string) => NodeJS.Signals | null {
  let sent = false;
  return (stdout, stderr) => {
    if (sent || !pattern.test(stdout + stderr)) return null;
    sent = true;
    return 'SIGINT';
  };
}

/** The one JSON document a --json run printed (the whole of stdout), or a failed assertion. */
function parsed<T>(t: Test, run: Run): T {
  try {
    return JSON.parse(run.stdout) as T;
  } catch (error) {
    t.fail(`stdout is not one JSON document (${(error as Error).message}): ${run.stdout.slice(0, 2000)}; stderr: ${run.stderr.slice(0, 2000)}`);
    throw error;
  }
}

/** `vmmigrate source-agent` / `target-agent` on 127.0.0.1:0, as a child process. */
async function startCliAgent(role: 'source' | 'target'): Promise<AgentProcess> {
  const child = spawn(process.execPath, ['--enable-source-maps', CLI, `${role}-agent`, '--listen', '127.0.0.1:0', '--insecure-plaintext', '--log-level', 'error', '--memory-mib', '1024', '--on-stop-with-guests', 'drop'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: cleanEnv(),
  });
  running.add(child);
  child.once('exit', () => running.delete(child));
  for await (const line of createInterface({ input: child.stdout })) {
    try {
      const { listening } = JSON.parse(line) as { listening?: string };
      if (listening) return { child, address: listening, pid: child.pid! };
    } catch {
      // Not the line we wait for.
    }
  }
  throw new Error(`vmmigrate ${role}-agent exited before listening (exit code ${child.exitCode})`);
}

/** A loopback port nothing listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const server = createTcpServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as import('node:net').AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A gRPC server on 127.0.0.1:0 with `setup`'s services, shut down when `t` ends. */
async function startServer(t: Test, credentials: grpc.ServerCredentials, setup: (server: grpc.Server) => void): Promise<string> {
  const server = createServer();
  setup(server);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', credentials, (error, p) => (error ? reject(error) : resolve(p))));
  t.teardown(() => server.forceShutdown());
  return `127.0.0.1:${port}`;
}

/**
 * What an agent holds, asked in this process (cheaper than one more CLI run, and independent
 * of the CLI's own views): guest ids and states, and a job's status (Control v1), and whether a
 * guest has arrived as a replica (Control v2: v1 does not list replicas).
 */
function agentView(t: Test, address: string) {
  const client = makeClient(controlService, 'Control', address, grpc.credentials.createInsecure());
  const v2 = makeClient(controlServiceV2, 'Control', address, grpc.credentials.createInsecure());
  t.teardown(() => {
    client.close();
    v2.close();
  });
  return {
    async guests(): Promise<string[]> {
      const res = await unary(client, controlService.listGuests, pb.ListGuestsRequest.create(), 10_000, 'listing guests');
      return res.guests.map((g) => `${g.description?.id}:${g.state}`).sort();
    },
    async jobStatus(jobId: string): Promise<string> {
      return (await unary(client, controlService.getJob, pb.GetJobRequest.create({ jobId }), 10_000, 'getting a job')).stats?.status ?? '';
    },
    /** Waits (bounded) until guest `id` is listed in role MIGRATING_IN; whether it was. */
    async arriving(id: string): Promise<boolean> {
      for (let i = 0; i < 100; i++) {
        const { guests } = await unary(v2, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 10_000, 'listing guests');
        if (guests.some((g) => g.id === id && g.role === pb2.GuestRole.GUEST_ROLE_MIGRATING_IN)) return true;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      return false;
    },
  };
}

type Json = Record<string, unknown>;
/** A Control v2 Job as --json prints it. */
type JobDoc = Json & { jobId: string; guestId: string; peerAddress: string; role: string; method: string; state: string; startedAtMs: number; source?: Json & { bytes: Json; crtr?: Json } };

// --- pure functions: parsing and the decisions behind exit codes ------------------------------

t.test('bandwidths, durations and addresses in human units', async (t) => {
  t.equal(parseBandwidth('1gbit'), 125_000_000);
  t.equal(parseBandwidth('100mbit'), 12_500_000);
  t.equal(parseBandwidth('100Mbps'), 12_500_000);
  t.equal(parseBandwidth('125MB/s'), 125_000_000);
  t.equal(parseBandwidth('12MiB/s'), 12 * MiB);
  t.equal(parseBandwidth('250000'), 250_000);
  t.equal(parseBandwidth('1.5gbit/s'), 187_500_000);
  t.throws(() => parseBandwidth('100mb'), /ambiguous.*100mbit.*100MB\/s/, 'a lone b: bits or bytes?');
  t.throws(() => parseBandwidth('fast'), /expected bytes per second/);
  t.throws(() => parseBandwidth('10kbit'), /1250 bytes\/s.*125000/, 'below what the agents accept');
  t.throws(() => parseBandwidth('10furlong'), /unknown unit 'furlong'/);
  t.equal(parseDuration('90'), 90_000, 'a plain number is seconds');
  t.equal(parseDuration('1500ms'), 1500);
  t.equal(parseDuration('10m'), 600_000);
  t.throws(() => parseDuration('5ms'), /100 ms to 24 h/);
  t.throws(() => parseDuration('soon'), /expected seconds/);
  t.same(parseAddress('[::1]:7400'), { host: '::1', port: 7400 });
  t.throws(() => parseAddress('::1:7400'), /expected host:port/, 'IPv6 needs brackets');
  t.throws(() => parseAddress('host:70000'), /expected host:port/);
});

t.test('loopback, and the credentials a connection gets', async (t) => {
  for (const host of ['127.0.0.1', '127.200.3.4', '::1', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1', 'localhost', 'LOCALHOST']) t.ok(isLoopback(host), `${host} is loopback`);
  for (const host of ['10.0.0.1', '128.0.0.1', '::2', '::ffff:10.0.0.1', 'localhost.example', 'agent1', '0.0.0.0']) t.notOk(isLoopback(host), `${host} is not loopback`);
  t.ok(credentialsFrom({ agent: '127.0.0.1:7400', plaintext: true }), 'plaintext to loopback');
  const refused = (options: Parameters<typeof credentialsFrom>[0], pattern: RegExp, what: string) => {
    try {
      credentialsFrom(options);
      t.fail(`${what}: not refused`);
    } catch (error) {
      t.ok(error instanceof VmMigrateError && error.code === 'INVALID_ARGUMENT', `${what}: an INVALID_ARGUMENT error (exit 2)`);
      t.match((error as Error).message, pattern, what);
    }
  };
  refused({ agent: '192.0.2.1:7400', plaintext: true }, /allowed only to a loopback agent/, 'plaintext off loopback');
  refused({ agent: '127.0.0.1:7400' }, /--tls-ca FILE.*--plaintext/, 'neither TLS nor plaintext');
  refused({ agent: '127.0.0.1:7400', tlsCa: '/ca.pem' }, /missing --tls-cert and --tls-key/, 'TLS files missing');
  refused({ agent: '127.0.0.1:7400', tlsCa: '/ca.pem', plaintext: true }, /choose one/, 'both TLS and plaintext');
  const nowhere = join(tmpdir(), 'vmmigrate-cli-test-no-such-dir');
  refused({ agent: '10.0.0.1:7400', tlsCa: join(nowhere, 'ca.pem'), tlsCert: join(nowhere, 'c.pem'), tlsKey: join(nowhere, 'c.key') }, /--tls-ca .*ca\.pem: cannot read it \(ENOENT\)/, 'an unreadable file');
});

t.test('exit codes by gRPC status, and what the progress bar measures', async (t) => {
  t.equal(exitCodeForStatus('UNAVAILABLE'), EXIT.unreachable);
  t.equal(exitCodeForStatus('DEADLINE_EXCEEDED'), EXIT.unreachable);
  t.equal(exitCodeForStatus('UNAUTHENTICATED'), EXIT.refused);
  t.equal(exitCodeForStatus('PERMISSION_DENIED'), EXIT.refused);
  t.equal(exitCodeForStatus('INVALID_ARGUMENT'), EXIT.usage);
  t.equal(exitCodeForStatus('NOT_FOUND'), EXIT.failed);
  t.equal(exitCodeForStatus('FAILED_PRECONDITION'), EXIT.failed);
  const crtr = pb2.Job.create({
    method: pb2.Method.METHOD_CRTR,
    phase: pb2.Phase.PHASE_CHECKPOINT,
    source: { memoryBytes: 128 * MiB, checkpointPercent: 25, throughputBytesPerSec: 100_000_000, crtr: { remainingUnits: 7 } },
  });
  const view = progressView(crtr);
  t.equal(view.phase, 'checkpoint', 'the phase by its name');
  t.equal(view.percent, 25, 'the share of memory the checkpoint covered');
  t.match(view.remaining, /^7 units/);
  t.match(view.throughput, /800 Mbit\/s \(100\.0 MB\/s\)/, 'bytes per second shown as megabits per second');
  const precopy = pb2.Job.create({ method: pb2.Method.METHOD_PRECOPY, source: { memoryBytes: 128 * MiB, checkpointPercent: 100, remainingBytes: 3 * MiB, precopy: { rounds: 2 } } });
  t.match(progressView(precopy).label, /round 3/);
  t.match(progressView(precopy).remaining, /3\.0 MiB dirty/);
});

t.test('views of Control v2 messages: enum names in JSON, words in tables', async (t) => {
  const job = pb2.Job.decode(
    pb2.Job.encode({ jobId: 'j1', role: pb2.JobRole.JOB_ROLE_TARGET, guestId: 'g1', method: pb2.Method.METHOD_CRTR, state: pb2.JobState.JOB_STATE_RUNNING, phase: pb2.Phase.PHASE_LOG_TRANSFER, phasesPassed: [1, 2], target: { unitsReplayed: 5 } }).finish(),
  );
  const json = messageJson(job);
  t.same(Object.keys(json).slice(0, 4), ['jobId', 'role', 'guestId', 'peerAddress'], 'every field in .proto order, defaults included');
  t.equal(json.role, 'JOB_ROLE_TARGET');
  t.equal(json.state, 'JOB_STATE_RUNNING');
  t.same(json.phasesPassed, ['PHASE_PRE_MIGRATION', 'PHASE_RESERVATION']);
  t.equal(json.errorReason, 'ERROR_REASON_UNSPECIFIED');
  t.equal(json.startedAtMs, 0, '64-bit integers as numbers');
  t.notOk('source' in json, 'of the oneof, only the member that is set');
  t.equal((json.target as Json).unitsReplayed, 5);
  t.same(messageJson(pb2.Job.create({ state: 42 as InstanceType<typeof pb2.Job>["state"] })).state, 42, 'a value this CLI does not know stays a number');
  t.match(jobsTable([job]), /^j1 +g1 +incoming +this agent +crtr +running +log-transfer +- +-$/m, 'an incoming job: its role, and the target is this agent');
  const guest = pb2.Guest.create({ id: 'g1', driver: 'sim', memoryBytes: 64 * MiB, unitMs: 10, state: pb2.GuestState.GUEST_STATE_RUNNING, role: pb2.GuestRole.GUEST_ROLE_MIGRATING_OUT, jobId: 'j1', sim: { profile: 'web' } });
  t.match(guestsTable([guest]), /^ID +STATE +ROLE +MEMORY +SUMMARY\ng1 +running +migrating-out j1 +64\.0 MiB +sim web, 64 MiB, 10 ms units, 16384 pages$/);
});

// --- end to end: two agents started by the CLI, and the CLI against them -------------------------

t.test('the CLI against two agents it started', async (t) => {
  const [source, target] = await Promise.all([startCliAgent('source'), startCliAgent('target')]);
  t.teardown(async () => {
    await Promise.all([stopAgentProcess(source), stopAgentProcess(target)]);
  });
  const on = (agent: AgentProcess, ...args: string[]) => [...args, '--agent', agent.address, '--plaintext'];
  const sourceView = agentView(t, source.address);
  const targetView = agentView(t, target.address);

  t.test('guest start --json returns the guest', async (t) => {
    const run = await runCli(on(source, 'guest', 'start', '--profile', 'web', '--memory-mib', '64', '--id', 'web-1', '--json'));
    t.equal(run.code, 0, `exit 0 (stderr: ${run.stderr})`);
    const guest = parsed<Json>(t, run);
    t.equal(guest.id, 'web-1');
    t.equal(guest.state, 'GUEST_STATE_RUNNING', 'the Control v2 Guest, enum values by name');
    t.equal(guest.role, 'GUEST_ROLE_NONE');
    t.equal(guest.memoryBytes, 64 * MiB, 'memory as a number of bytes');
    t.match(guest.sim, { profile: 'web' });
  });

  t.test('guests --json and capacity --json', async (t) => {
    const [guests, capacity] = await Promise.all([runCli(on(source, 'guests', '--json')), runCli(on(source, 'capacity', '--json'))]);
    t.equal(guests.code, 0, guests.stderr);
    const list = parsed<Json[]>(t, guests);
    t.same(
      list.map((g) => [g.id, g.state]),
      [['web-1', 'GUEST_STATE_RUNNING']],
    );
    t.equal(capacity.code, 0, capacity.stderr);
    const c = parsed<Json>(t, capacity);
    t.equal(c.driver, 'sim');
    t.same(c.methods, ['METHOD_CRTR', 'METHOD_PRECOPY', 'METHOD_POSTCOPY']);
    t.equal(c.memoryBytesTotal, 1024 * MiB, 'the --memory-mib the agent was started with');
    t.equal(c.memoryBytesReserved, 64 * MiB, 'the guest');
    t.equal(c.memoryBytesFree, 960 * MiB);
  });

  let jobId = '';
  t.test('migrate --json completes with equal digests', async (t) => {
    // throttle: on a loaded machine a web guest may not converge otherwise (the demo does the same).
    const run = await runCli(on(source, 'migrate', 'web-1', '--to', target.address, '--max-bandwidth', '1gbit', '--policy', 'throttle', '--json'));
    t.equal(run.code, 0, `exit 0 (stderr: ${run.stderr})`);
    const job = parsed<JobDoc>(t, run);
    jobId = job.jobId;
    const s = job.source!;
    t.comment(`downtime ${Number(s.downtimeMs).toFixed(1)} ms, total ${Number(s.totalTimeMs).toFixed(0)} ms, ${s.bytes.transferredBytes} bytes`);
    t.equal(job.guestId, 'web-1');
    t.equal(job.peerAddress, target.address);
    t.equal(job.role, 'JOB_ROLE_SOURCE');
    t.equal(job.state, 'JOB_STATE_SUCCEEDED', `state (error: ${String(job.errorMessage)})`);
    t.equal(job.method, 'METHOD_CRTR');
    t.equal(job.phase, 'PHASE_DONE');
    t.match(s.sourceDigest, /^[0-9a-f]{16}$/, 'source digest');
    t.equal(s.targetDigest, s.sourceDigest, 'target digest equals the source digest');
    for (const key of ['downtimeMs', 'totalTimeMs', 'memoryBytes']) t.type(s[key], 'number', `${key} is a number`);
    t.type(s.bytes.transferredBytes, 'number', 'transferredBytes is a number');
    for (const key of ['unitsReplayed', 'stopRequests']) t.type(s.crtr?.[key], 'number', `crtr.${key} is a number`);
    t.ok(Number(s.downtimeMs) > 0 && Number(s.bytes.transferredBytes) > 0, 'downtime and data measured');
    t.equal(s.memoryBytes, 64 * MiB);
    t.equal(run.stderr, '', 'nothing on stderr');
  });

  t.test('the guest moved', async (t) => {
    const onTarget = await runCli(on(target, 'guests', '--json'));
    t.same(
      parsed<Json[]>(t, onTarget).map((g) => [g.id, g.state, g.role]),
      [['web-1', 'GUEST_STATE_RUNNING', 'GUEST_ROLE_NONE']],
      'running on the target, its migration over',
    );
    t.same(await sourceView.guests(), [], 'gone from the source');
  });

  t.test('jobs --json, status JOB --json, status --json', async (t) => {
    const [jobs, job, agent] = await Promise.all([runCli(on(source, 'jobs', '--json')), runCli(on(source, 'status', jobId, '--json')), runCli(on(source, 'status', '--json'))]);
    t.equal(jobs.code, 0, jobs.stderr);
    const list = parsed<JobDoc[]>(t, jobs);
    t.same(
      list.map((j) => [j.jobId, j.guestId, j.role, j.peerAddress, j.method, j.state]),
      [[jobId, 'web-1', 'JOB_ROLE_SOURCE', target.address, 'METHOD_CRTR', 'JOB_STATE_SUCCEEDED']],
    );
    t.type(list[0].startedAtMs, 'number');
    t.equal(job.code, 0, job.stderr);
    const one = parsed<JobDoc>(t, job);
    t.equal(one.jobId, jobId);
    t.equal(one.state, 'JOB_STATE_SUCCEEDED');
    t.equal(one.source?.targetDigest, one.source?.sourceDigest);
    t.equal(agent.code, 0, agent.stderr);
    const summary = parsed<{ agent: string; health: string; capacity: Json; guests: Json[]; activeJobs: JobDoc[] }>(t, agent);
    t.equal(summary.agent, source.address);
    t.equal(summary.health, 'SERVING', 'grpc.health.v1.Health/Check on the agent');
    t.equal(summary.capacity.memoryBytesReserved, 0, 'the guest left');
    t.same(summary.guests, []);
    t.same(summary.activeJobs, [], 'the finished job is not active');
  });

  t.test('the target lists the incoming job by the same id, and answers status JOB', async (t) => {
    const [jobs, json, job] = await Promise.all([runCli(on(target, 'jobs')), runCli(on(target, 'jobs', '--json')), runCli(on(target, 'status', jobId))]);
    t.equal(jobs.code, 0, jobs.stderr);
    t.match(jobs.stdout, new RegExp(`^${jobId} +web-1 +incoming +this agent +crtr +completed +done +- +\\d`, 'm'));
    t.same(
      parsed<JobDoc[]>(t, json).map((j) => [j.jobId, j.role, j.state, j.peerAddress]),
      [[jobId, 'JOB_ROLE_TARGET', 'JOB_STATE_SUCCEEDED', '']],
    );
    t.equal(job.code, 0, job.stderr);
    t.match(job.stdout, /^role: +incoming$/m);
    t.match(job.stdout, /^target\.activated: +true$/m, "the target's own figures");
  });

  t.test('human output: a table of jobs, the summary of a migration', async (t) => {
    const jobs = await runCli(on(source, 'jobs'));
    t.equal(jobs.code, 0, jobs.stderr);
    t.match(jobs.stdout, /^JOB +GUEST +ROLE +TARGET +METHOD +STATUS +PHASE +DOWNTIME +STARTED\n/);
    t.match(jobs.stdout, new RegExp(`${jobId} +web-1 +outgoing +${target.address} +crtr +completed +done +\\d`));
    // Back to the source, watched without --json: one line per phase (stdout is a pipe), a summary.
    const back = await runCli(on(target, 'migrate', 'web-1', '--to', source.address, '--policy', 'throttle'));
    t.equal(back.code, 0, back.stderr);
    t.match(back.stdout, /^checkpoint +checkpoint +\d+%/m, 'a line for the checkpoint phase');
    t.match(back.stdout, /^stop-and-copy /m, 'a line for stop-and-copy');
    t.match(back.stdout, /\): completed\n/);
    t.match(back.stdout, /digests: +equal \(source ([0-9a-f]{16}), target \1\)/);
    t.match(back.stdout, /forced: +no/);
    t.match(back.stdout, /disruption: +[\d.]+ m?s \(downtime \+ stalls [\d.]+ m?s \+ throttled [\d.]+ m?s \+ lost schedule [\d.]+ m?s; \d+ of \d+ units run\)/, 'the guest disruption, with its terms');
    t.same(await sourceView.guests(), ['web-1:running'], 'back on the source');
    // Stopped now: a running web guest takes a third of a core for the rest of the test.
    const stop = await runCli(on(source, 'guest', 'stop', 'web-1', '--json'));
    t.equal(stop.code, 0, stop.stderr);
    t.same(parsed<Json>(t, stop), { id: 'web-1', stopped: true });
    t.same(await sourceView.guests(), [], 'the stopped guest is gone');
  });

  t.test('Ctrl-C while watching cancels the job; the guest stays on the source', async (t) => {
    const start = await runCli(on(source, 'guest', 'start', '--profile', 'idle', '--memory-mib', '64', '--id', 'idle-1'));
    t.equal(start.code, 0, start.stderr);
    // 1 Mbit/s: the checkpoint would take minutes, so the job is still in it when Ctrl-C comes.
    const run = await runCli(on(source, 'migrate', 'idle-1', '--to', target.address, '--max-bandwidth', '1mbit'), { onOutput: interruptOnce(/^checkpoint /m) });
    t.equal(run.code, EXIT.failed, `exit 1 (stdout: ${run.stdout}; stderr: ${run.stderr})`);
    t.match(run.stderr, /cancelling job [0-9a-f-]+; waiting for it to end/);
    t.match(run.stdout, /\): cancelled\n/);
    t.match(run.stdout, /error: +cancelled by request \(CANCELLED\)\n/, "the job's message and its error reason");
    t.match(run.stdout, /The guest 'idle-1' stays on the source/);
    t.same(await sourceView.guests(), ['idle-1:running']);
    t.same(await targetView.guests(), [], 'nothing left on the target');
  });

  t.test('migrate --no-wait, then cancel', async (t) => {
    const started = await runCli(on(source, 'migrate', 'idle-1', '--to', target.address, '--max-bandwidth', '1mbit', '--no-wait', '--json'));
    t.equal(started.code, 0, started.stderr);
    const { jobId } = parsed<{ jobId: string }>(t, started);
    t.match(jobId, /^[0-9a-f-]{36}$/);
    // While it runs (1 Mbit/s: for minutes), both ends show the guest's role and the job.
    t.ok(await targetView.arriving('idle-1'), 'the guest is arriving on the target');
    const [outGuests, inGuests, inJobs] = await Promise.all([runCli(on(source, 'guests')), runCli(on(target, 'guests')), runCli(on(target, 'jobs'))]);
    t.equal(outGuests.code, 0, outGuests.stderr);
    t.match(outGuests.stdout, /^ID +STATE +ROLE +MEMORY +SUMMARY\n/);
    t.match(outGuests.stdout, new RegExp(`^idle-1 +running +migrating-out ${jobId} +64\\.0 MiB +sim idle, 64 MiB`, 'm'));
    t.equal(inGuests.code, 0, inGuests.stderr);
    t.match(inGuests.stdout, new RegExp(`^idle-1 +(restoring|replica) +migrating-in ${jobId} +64\\.0 MiB`, 'm'));
    t.match(inJobs.stdout, new RegExp(`^${jobId} +idle-1 +incoming +this agent +crtr +running +`, 'm'), 'the incoming job, by the same id');
    const cancel = await runCli(on(source, 'cancel', jobId, '--json'));
    t.equal(cancel.code, 0, cancel.stderr);
    const job = parsed<JobDoc>(t, cancel);
    t.equal(job.jobId, jobId);
    t.match(job.state, /^JOB_STATE_CANCELL(ING|ED)$/);
    // The agent ends the job on its own; follow it (bounded) until it says how it ended.
    let status = job.state === 'JOB_STATE_CANCELLED' ? 'cancelled' : 'cancelling';
    for (let i = 0; i < 100 && status === 'cancelling'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      status = await sourceView.jobStatus(jobId);
    }
    t.equal(status, 'cancelled');
    t.same(await sourceView.guests(), ['idle-1:running'], 'the guest stays on the source');
  });

  t.test('cancel of an unknown job exits 1', async (t) => {
    const run = await runCli(on(source, 'cancel', 'no-such-job', '--json'));
    t.equal(run.code, EXIT.failed);
    t.equal(run.stdout, '', 'no JSON document for a failure');
    t.match(run.stderr, /^vmmigrate: cancelling job no-such-job on 127\.0\.0\.1:\d+: NOT_FOUND: no job 'no-such-job' on this agent \(.*vmmigrate jobs/);
    t.equal(run.stderr.trim().split('\n').length, 1, 'one line');
  });

  t.test('usage and configuration errors exit 2 before dialling', async (t) => {
    const [noTls, notLoopback, badBandwidth] = await Promise.all([
      runCli(['guests', '--agent', source.address]),
      runCli(['guests', '--agent', '192.0.2.1:7400', '--plaintext']),
      runCli(on(source, 'migrate', 'idle-1', '--to', target.address, '--max-bandwidth', '100mb')),
    ]);
    t.equal(noTls.code, EXIT.usage);
    t.match(noTls.stderr, /no credentials for the agent at 127\.0\.0\.1:\d+: pass --tls-ca FILE --tls-cert FILE --tls-key FILE .* or --plaintext/);
    t.equal(notLoopback.code, EXIT.usage);
    // Refused by the configuration check: a dialled address would have failed UNAVAILABLE.
    t.match(notLoopback.stderr, /^vmmigrate: --plaintext is refused for 192\.0\.2\.1:7400: .*loopback/);
    t.notMatch(notLoopback.stderr, /UNAVAILABLE|DEADLINE_EXCEEDED/);
    t.equal(badBandwidth.code, EXIT.usage);
    t.match(badBandwidth.stderr, /^vmmigrate: option '--max-bandwidth <rate>' argument '100mb' is invalid\. .*ambiguous \(bits or bytes\?\); write 100mbit for bits or 100MB\/s for bytes/);
    for (const run of [noTls, notLoopback, badBandwidth]) t.equal(run.stdout, '', 'nothing on stdout');
    t.same(await sourceView.guests(), ['idle-1:running'], 'no migration started');
  });

  t.test('an unreachable agent exits 3', async (t) => {
    const port = await closedPort();
    const run = await runCli(['guests', '--agent', `127.0.0.1:${port}`, '--plaintext', '--json']);
    t.equal(run.code, EXIT.unreachable);
    t.equal(run.stdout, '');
    t.match(run.stderr, new RegExp(`^vmmigrate: listing guests on 127\\.0\\.0\\.1:${port}: UNAVAILABLE: .*\\(is the agent running at 127\\.0\\.0\\.1:${port}\\? check --agent`));
  });

  t.test('the agents stop on SIGTERM and exit 0', async (t) => {
    await Promise.all([stopAgentProcess(source), stopAgentProcess(target)]);
    for (const agent of [source, target]) t.same([agent.child.exitCode, agent.child.signalCode], [0, null], `agent ${agent.address}`);
  });
});

// --- the CLI against agents with mutual TLS, and a job that never ends ----------------------

/**
 * Two certificate sets made by scripts/gen-test-certs.sh: `dir` (a CA, the agent, an operator on
 * the agent's allow.control, an agent identity that is not) and `rogue` (another CA).
 */
function makeCertificates(dir: string, rogue: string): void {
  const script = fileURLToPath(new URL('../../scripts/gen-test-certs.sh', import.meta.url));
  execFileSync('bash', [script, dir, 'agent-a', 'operator', 'agent-b'], { stdio: 'ignore' });
  execFileSync('bash', [script, rogue, 'operator'], { stdio: 'ignore', env: { ...process.env, VMMIGRATE_CA_NAME: 'rogue CA' } });
}

t.test('a second Ctrl-C stops waiting for a job that does not end (exit 130)', async (t) => {
  // A Control v2 service whose job never ends: its watch stream stays open, CancelJob only records.
  const cancelled: string[] = [];
  const job = {
    jobId: 'job-1',
    role: pb2.JobRole.JOB_ROLE_SOURCE,
    guestId: 'g1',
    peerAddress: '127.0.0.1:7401',
    method: pb2.Method.METHOD_CRTR,
    state: pb2.JobState.JOB_STATE_RUNNING,
    phase: pb2.Phase.PHASE_CHECKPOINT,
    source: { memoryBytes: 64 * MiB, crtr: {} },
  };
  const address = await startServer(t, grpc.ServerCredentials.createInsecure(), (server) =>
    server.addService(controlServiceV2, {
      startMigration: (_call: unknown, callback: grpc.sendUnaryData<unknown>) => callback(null, pb2.StartMigrationResponse.create({ jobId: 'job-1', job })),
      watchJob: (call: grpc.ServerWritableStream<unknown, unknown>) => call.write(pb2.JobEvent.create({ sequence: 3, kind: pb2.JobEventKind.JOB_EVENT_KIND_SNAPSHOT, phase: job.phase, job })),
      cancelJob: (call: grpc.ServerUnaryCall<InstanceType<typeof pb2.CancelJobRequest>, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        cancelled.push(call.request.jobId);
        callback(null, pb2.CancelJobResponse.create({ job: { ...job, state: pb2.JobState.JOB_STATE_CANCELLING } }));
      },
    }),
  );
  const first = interruptOnce(/^checkpoint /m);
  const second = interruptOnce(/waiting for it to end/);
  const run = await runCli(['migrate', 'g1', '--to', '127.0.0.1:7401', '--agent', address, '--plaintext'], { onOutput: (out, err) => first(out, err) ?? second(out, err) });
  t.equal(run.code, 130, `exit 130 (stderr: ${run.stderr})`);
  t.same(cancelled, ['job-1'], 'the first Ctrl-C asked the agent to cancel the job');
  t.match(run.stderr, /cancelling job job-1; waiting for it to end \(Ctrl-C again to stop waiting\)/);
  t.match(run.stderr, /stopped waiting; job job-1 may still be ending: 'vmmigrate status job-1' shows it/);
});

t.test('mutual TLS from flags or environment against a TLS agent; refusals exit 3 and 4', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmmigrate-cli-tls-'));
  const rogueDir = mkdtempSync(join(tmpdir(), 'vmmigrate-cli-rogue-'));
  t.teardown(() => {
    rmSync(dir, { recursive: true, force: true });
    rmSync(rogueDir, { recursive: true, force: true });
  });
  makeCertificates(dir, rogueDir);
  const files = (d: string, name: string) => ['--tls-ca', join(d, 'ca.pem'), '--tls-cert', join(d, `${name}.pem`), '--tls-key', join(d, `${name}-key.pem`)];
  const agent = await startAgent(
    agentOptionsFromArgs('source', ['--listen', '127.0.0.1:0', '--memory-mib', '512', ...files(dir, 'agent-a'), '--allow-peer', 'agent-b', '--allow-control', 'operator', '--log-level', 'error']),
  );
  t.teardown(() => agent.shutdown('test over'));
  const address = agent.address;

  const status = await runCli(['status', '--agent', address, ...files(dir, 'operator'), '--json']);
  t.equal(status.code, 0, status.stderr);
  t.equal(status.stderr, '', 'nothing on stderr (no warning about TLS to an IP address)');
  const summary = parsed<{ health: string; capacity: Json }>(t, status);
  t.equal(summary.health, 'SERVING', 'grpc.health.v1.Health/Check');
  t.equal(summary.capacity.memoryBytesTotal, 512 * MiB, 'the TLS agent answered');

  const fromEnv = await runCli(['capacity', '--json'], {
    env: { VMMIGRATE_AGENT: address, VMMIGRATE_TLS_CA: join(dir, 'ca.pem'), VMMIGRATE_TLS_CERT: join(dir, 'operator.pem'), VMMIGRATE_TLS_KEY: join(dir, 'operator-key.pem') },
  });
  t.equal(fromEnv.code, 0, fromEnv.stderr);
  t.equal(parsed<Json>(t, fromEnv).memoryBytesTotal, 512 * MiB, 'agent and TLS files from VMMIGRATE_*');

  // The agent refuses the handshake of a client certificate it does not trust; gRPC reports
  // that as UNAVAILABLE, like an agent that is not there (README, exit codes).
  const rogue = await runCli(['capacity', '--agent', address, ...files(rogueDir, 'operator')]);
  t.equal(rogue.code, EXIT.unreachable, `exit 3 (stderr: ${rogue.stderr})`);
  t.match(rogue.stderr, /^vmmigrate: getting the capacity on 127\.0\.0\.1:\d+: UNAVAILABLE: /);

  // A certificate the CA issued, whose identity is not on allow.control: PERMISSION_DENIED, exit 4.
  const refused = await runCli(['guests', '--agent', address, ...files(dir, 'agent-b')]);
  t.equal(refused.code, EXIT.refused, `exit 4 (stderr: ${refused.stderr})`);
  t.match(refused.stderr, /^vmmigrate: listing guests on 127\.0\.0\.1:\d+: PERMISSION_DENIED: client identities \[agent-b, localhost\] are not on this agent's allow\.control/);
});

t.test("errorLine: an agent's own UNIMPLEMENTED says why, without the hint that the call is missing", async (t) => {
  const refused = new CallError('starting the migration', grpc.status.UNIMPLEMENTED, "method 'precopy' needs page-access on the source, which driver 'qemu' lacks");
  const line = errorLine(refused, '127.0.0.1:7400');
  t.match(line, /needs page-access/);
  t.notMatch(line, /does not offer this call/, 'no hint of an older agent');
  const missing = new CallError('reading the console', grpc.status.UNIMPLEMENTED, 'The server does not implement the method /vmmigrate.v2.Control/GetConsole');
  t.match(errorLine(missing, '127.0.0.1:7400'), /does not offer this call; is it an older version\?/, "gRPC's own UNIMPLEMENTED keeps the hint");
});
