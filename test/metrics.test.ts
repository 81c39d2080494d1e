// Observability: the Prometheus endpoint (shared/metrics.ts), the gRPC health service
// (shared/transport/health.ts) and the log fields. The endpoint and the health service are tested
// alone first, then through two agents started in this process: a CR/TR migration scraped while
// it runs and after it ends, a failure and a cancellation, the logs of both agents, and shutdown.
import { request } from 'node:http';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import { type Agent, GUEST_BYTES, MiB, sleep, startGuest, startMigration, startTestAgent } from './support/agents.js';
import { NotFoundError, UnavailableError, VmMigrateError } from '../shared/errors.js';
import { AgentMetrics, startMetricsServer } from '../shared/metrics.js';
import { controlService, createServer, grpc, makeClient, pb, unary } from '../shared/transport/grpc.js';
import { addHealthService, checkHealth, HEALTH_SERVICES, HEALTH_WATCHERS_MAX, healthService } from '../shared/transport/health.js';

type Job = InstanceType<typeof pb.Job>;
type Stats = InstanceType<typeof pb.MigrationStats>;
type JobEvent = InstanceType<typeof pb.JobEvent>;
type LogLine = Record<string, unknown> & { msg: string; level: number };

const silent = pino({ level: 'silent' });

// --- helpers -------------------------------------------------------------------------

interface HttpReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One HTTP request to `address` (host:port); `body`, with its Content-Length, whatever the method. */
function http(address: string, path: string, method = 'GET', body?: string): Promise<HttpReply> {
  const colon = address.lastIndexOf(':');
  const headers = body === undefined ? {} : { 'Content-Length': String(Buffer.byteLength(body)) };
  return new Promise((resolve, reject) => {
    const req = request({ host: address.slice(0, colon), port: Number(address.slice(colon + 1)), path, method, headers, agent: false, timeout: 10_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error(`no answer from ${address}${path} within 10 s`)));
    req.end(body);
  });
}

/** The samples of a Prometheus text exposition, keyed `name{label="value",...}` with labels sorted. */
function parseExposition(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null) throw new Error(`not a Prometheus sample line: ${line}`);
    const labels = [...(m[2] ?? '').matchAll(/([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map(([, k, v]) => `${k}="${v}"`).sort();
    samples.set(labels.length > 0 ? `${m[1]}{${labels.join(',')}}` : m[1], Number(m[3]));
  }
  return samples;
}

/** A scrape of an agent's /metrics, with lookups by name and labels. */
class Scrape {
  constructor(readonly samples: Map<string, number>) {}

  static async of(address: string): Promise<Scrape> {
    const reply = await http(address, '/metrics');
    if (reply.status !== 200) throw new Error(`GET ${address}/metrics: ${reply.status} ${reply.body}`);
    return new Scrape(parseExposition(reply.body));
  }

  /** The sample `name{labels}`; undefined if there is none. */
  get(name: string, labels: Record<string, string> = {}): number | undefined {
    const l = Object.entries(labels)
      .map(([k, v]) => `${k}="${v}"`)
      .sort();
    return this.samples.get(l.length > 0 ? `${name}{${l.join(',')}}` : name);
  }

  /** The sum of every sample of `name` whose labels include `labels`. */
  sum(name: string, labels: Record<string, string> = {}): number {
    const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
    let total = 0;
    for (const [key, value] of this.samples) {
      const brace = key.indexOf('{');
      if ((brace < 0 ? key : key.slice(0, brace)) !== name) continue;
      const have = brace < 0 ? [] : key.slice(brace + 1, -1).split(',');
      if (want.every((w) => have.includes(w))) total += value;
    }
    return total;
  }
}

/** A logger at level info whose JSON lines land in `lines`. */
function capturingLogger(lines: LogLine[]) {
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const text of chunk.toString('utf8').split('\n')) if (text !== '') lines.push(JSON.parse(text) as LogLine);
      callback();
    },
  });
  return pino({ level: 'info' }, stream);
}

/** Follows a job with WatchJob until the server ends the stream; `onEvent` sees every event. */
async function watchJob(a: Agent, jobId: string, onEvent?: (event: JobEvent) => void, timeoutMs = 120_000): Promise<Job> {
  const m = controlService.watchJob;
  const call = a.ctl.makeServerStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, pb.WatchJobRequest.create({ jobId, intervalMs: 50 }));
  const timer = setTimeout(() => call.cancel(), timeoutMs);
  let job: Job | null = null;
  try {
    for await (const event of call as AsyncIterable<JobEvent>) {
      job = event.job as Job;
      onEvent?.(event);
    }
  } finally {
    clearTimeout(timer);
  }
  if (job === null) throw new Error(`WatchJob ${jobId} ended without an event`);
  return job;
}

/** Polls `read` until `ok` holds or `timeoutMs` passes; returns the last value read. */
async function eventually<T>(read: () => Promise<T>, ok: (value: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const until = performance.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (ok(value) || performance.now() > until) return value;
    await sleep(50);
  }
}

async function rejection(p: Promise<unknown>): Promise<Error | undefined> {
  try {
    await p;
  } catch (error) {
    return error as Error;
  }
  return undefined;
}

/**
 * A Watch on the health of `service` at `address`: the statuses received, and the status code the
 * stream ended with. On its own client unless `shared` is given.
 */
function watchHealth(address: string, service: string, shared?: grpc.Client) {
  const client = shared ?? makeClient(healthService, 'Health', address, grpc.credentials.createInsecure());
  const m = healthService.Watch as grpc.MethodDefinition<{ service: string }, { status: string }>;
  const call = client.makeServerStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, { service });
  const statuses: string[] = [];
  let notify = () => {};
  call.on('data', (message: { status: string }) => {
    statuses.push(message.status);
    notify();
  });
  const ended = new Promise<string>((resolve) => {
    call.on('status', (s: grpc.StatusObject) => resolve(grpc.status[s.code]));
  }).finally(() => {
    if (shared === undefined) client.close();
  });
  call.on('error', () => {}); // The status arrives on 'status' as well.
  return {
    statuses,
    ended,
    /** Resolves once `n` statuses have arrived (or after `timeoutMs`). */
    async received(n: number, timeoutMs = 5_000): Promise<string[]> {
      const until = performance.now() + timeoutMs;
      while (statuses.length < n && performance.now() < until) await new Promise<void>((resolve) => ((notify = resolve), setTimeout(resolve, 50)));
      return statuses;
    },
    cancel: () => call.cancel(),
  };
}

// --- the endpoint alone --------------------------------------------------------------

t.test('the metrics endpoint: /metrics in the Prometheus format, /healthz, 404, and its limits', async (t) => {
  const metrics = new AgentMetrics();
  const server = await startMetricsServer('127.0.0.1:0', metrics, silent);
  t.teardown(() => server.close());
  t.match(server.address, /^127\.0\.0\.1:\d+$/, 'the real port replaces 0');
  t.not(server.address, '127.0.0.1:0');

  const scrape = await http(server.address, '/metrics');
  t.equal(scrape.status, 200);
  t.equal(scrape.headers['content-type'], metrics.registry.contentType, "prom-client's content type");
  const types = new Map([...scrape.body.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map(([, name, type]) => [name, type]));
  const expected: Array<[string, string]> = [
    ['vmmigrate_migrations_started_total', 'counter'],
    ['vmmigrate_migrations_completed_total', 'counter'],
    ['vmmigrate_migrations_failed_total', 'counter'],
    ['vmmigrate_migrations_cancelled_total', 'counter'],
    ['vmmigrate_incoming_migrations_total', 'counter'],
    ['vmmigrate_migration_downtime_seconds', 'histogram'],
    ['vmmigrate_migration_total_time_seconds', 'histogram'],
    ['vmmigrate_transmitted_bytes_total', 'counter'],
    ['vmmigrate_units_replayed_total', 'counter'],
    ['vmmigrate_replay_lag_units', 'gauge'],
    ['vmmigrate_replay_lag_seconds', 'gauge'],
    ['vmmigrate_migrations_active', 'gauge'],
    ['vmmigrate_guests', 'gauge'],
    ['vmmigrate_memory_reserved_bytes', 'gauge'],
    ['vmmigrate_memory_capacity_bytes', 'gauge'],
    ['process_cpu_seconds_total', 'counter'],
    ['nodejs_eventloop_lag_seconds', 'gauge'],
  ];
  for (const [name, type] of expected) t.equal(types.get(name), type, `${name} is a ${type}`);
  const s = new Scrape(parseExposition(scrape.body));
  t.equal(s.get('vmmigrate_migrations_started_total', { method: 'crtr' }), 0, 'fixed series start at 0');
  t.equal(s.get('vmmigrate_transmitted_bytes_total', { method: 'postcopy', direction: 'to_source' }), 0);
  t.equal(s.get('vmmigrate_incoming_migrations_total', { method: 'precopy', outcome: 'discarded' }), 0);
  t.equal(s.get('vmmigrate_migration_downtime_seconds_bucket', { method: 'crtr', le: '0.001' }), 0, 'downtime buckets from 1 ms');
  t.equal(s.get('vmmigrate_migration_downtime_seconds_bucket', { method: 'crtr', le: '60' }), 0, 'to 60 s');
  t.equal(s.get('vmmigrate_migration_total_time_seconds_bucket', { method: 'crtr', le: '0.5' }), 0, 'total-time buckets from 0.5 s');
  t.equal(s.get('vmmigrate_migration_total_time_seconds_bucket', { method: 'crtr', le: '3600' }), 0, 'to 1 h');
  t.equal(s.get('vmmigrate_guests', { state: 'running' }), 0, 'no host observed: no guest');
  t.equal(s.get('vmmigrate_migrations_active', { role: 'source' }), 0);
  t.equal(s.get('vmmigrate_migrations_active', { role: 'target' }), 0);

  const healthz = await http(server.address, '/healthz');
  t.same([healthz.status, healthz.body], [200, 'ok\n'], '/healthz: 200 ok');
  const missing = await http(server.address, '/metrics/extra');
  t.equal(missing.status, 404, 'another path: 404');
  t.match(missing.body, /try \/metrics or \/healthz/);
  const post = await http(server.address, '/metrics', 'POST', 'x=1');
  t.equal(post.status, 405, 'POST: 405');
  t.equal(post.headers.allow, 'GET');
  const withBody = await http(server.address, '/metrics', 'GET', 'hello');
  t.equal(withBody.status, 413, 'a GET with a body is refused unread');
  t.equal(withBody.headers.connection, 'close', 'and its connection closed');

  server.shuttingDown();
  const stopping = await http(server.address, '/healthz');
  t.same([stopping.status, stopping.body], [503, 'shutting down\n'], '/healthz: 503 once shutdown began');
  t.equal((await http(server.address, '/metrics')).status, 200, '/metrics still answers while shutting down');
  await server.close();
  const refused = await rejection(http(server.address, '/healthz'));
  t.match(refused?.message ?? '', /ECONNREFUSED/, 'closed: connections refused');

  const bad = await rejection(startMetricsServer('localhost', metrics, silent));
  t.ok(bad instanceof VmMigrateError && bad.code === 'INVALID_ARGUMENT', `an address without a port is refused (${bad?.message})`);
  t.match(bad?.message ?? '', /expected host:port/);
});

t.test('gRPC health: NOT_SERVING until serving(), then SERVING for the agent and both services; at shutdown NOT_SERVING and watchers ended', async (t) => {
  const server = createServer();
  const health = addHealthService(server);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  t.teardown(() => server.forceShutdown());
  const address = `127.0.0.1:${port}`;
  t.equal(await checkHealth(address, '', 5_000), 'NOT_SERVING', 'before serving(): NOT_SERVING');
  health.serving();
  for (const service of HEALTH_SERVICES) t.equal(await checkHealth(address, service, 5_000), 'SERVING', `'${service}': SERVING`);
  const unknown = await rejection(checkHealth(address, 'vmmigrate.v1.Nope', 5_000));
  t.ok(unknown instanceof NotFoundError, `an unknown service: NOT_FOUND (${unknown?.message})`);

  // Watch streams are bounded: one past the limit is refused.
  const client = makeClient(healthService, 'Health', address, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  const watches = Array.from({ length: HEALTH_WATCHERS_MAX }, () => watchHealth(address, '', client));
  for (const w of watches) await w.received(1);
  t.ok(
    watches.every((w) => w.statuses.join() === 'SERVING'),
    `${HEALTH_WATCHERS_MAX} watchers hear SERVING`,
  );
  const extra = watchHealth(address, '', client);
  t.equal(await extra.ended, 'RESOURCE_EXHAUSTED', `watcher ${HEALTH_WATCHERS_MAX + 1} is refused`);
  health.shuttingDown();
  for (const w of watches) await w.received(2);
  t.ok(
    watches.every((w) => w.statuses.join() === 'SERVING,NOT_SERVING'),
    'then every watcher hears NOT_SERVING at shutdown',
  );
  t.same(new Set(await Promise.all(watches.map((w) => w.ended))), new Set(['OK']), 'and every Watch stream ends');
  for (const service of HEALTH_SERVICES) t.equal(await checkHealth(address, service, 5_000), 'NOT_SERVING', `'${service}': NOT_SERVING`);
  health.serving();
  t.equal(await checkHealth(address, '', 5_000), 'NOT_SERVING', 'shutdown is for good: serving() no longer flips it');
  // No stream is left open: a graceful shutdown completes.
  const down = await Promise.race([new Promise<boolean>((resolve) => server.tryShutdown(() => resolve(true))), sleep(5_000).then(() => false)]);
  t.ok(down, 'the server shuts down gracefully within 5 s');
});

// --- two agents ----------------------------------------------------------------------

/** A source agent (fault injection allowed) and a target agent, both with /metrics and captured logs. */
async function agentPair(t: Test): Promise<{ source: Agent; target: Agent; sourceLog: LogLine[]; targetLog: LogLine[]; sourceMetrics: string; targetMetrics: string }> {
  const sourceLog: LogLine[] = [];
  const targetLog: LogLine[] = [];
  const source = await startTestAgent(t, ['--allow-fault-injection', '--metrics-listen', '127.0.0.1:0'], capturingLogger(sourceLog));
  const target = await startTestAgent(t, ['--metrics-listen', '127.0.0.1:0'], capturingLogger(targetLog));
  const sourceMetrics = source.agent.metricsAddress;
  const targetMetrics = target.agent.metricsAddress;
  if (sourceMetrics === null || targetMetrics === null) throw new Error('--metrics-listen was given: the agents must expose metricsAddress');
  return { source, target, sourceLog, targetLog, sourceMetrics, targetMetrics };
}

t.test('a CR/TR migration moves the counters while it runs and when it completes; the logs of both agents carry its jobId', async (t) => {
  const { source, target, sourceLog, targetLog, sourceMetrics, targetMetrics } = await agentPair(t);
  t.match(sourceMetrics, /^127\.0\.0\.1:\d+$/);
  for (const a of [source, target]) {
    for (const service of HEALTH_SERVICES) t.equal(await checkHealth(a.address, service, 5_000), 'SERVING', `${a.address} '${service}': SERVING`);
  }
  const id = 'vm-metrics';
  await startGuest(source, id, 'web');
  const before = await Scrape.of(sourceMetrics);
  t.equal(before.get('vmmigrate_guests', { state: 'running' }), 1, 'the source hosts one running guest');
  t.equal(before.get('vmmigrate_memory_reserved_bytes'), GUEST_BYTES, 'its memory');
  t.equal(before.get('vmmigrate_memory_capacity_bytes'), 16384 * MiB, "the host's --memory-mib default");
  t.ok((before.get('process_cpu_seconds_total') ?? 0) > 0, "prom-client's process metrics come along");
  await sleep(200);

  // The bandwidth limit stretches the checkpoint over a few seconds, so that a scrape lands while
  // the migration runs (units then pile up: the target replays only once it has the whole image).
  const jobId = await startMigration(source, {
    guestId: id,
    targetAddress: target.address,
    downtimeLimitMs: 300,
    nonConvergencePolicy: 'force',
    maxDurationMs: 60_000,
    maxBandwidthBytesPerSec: 16_000_000,
  });
  let during: Promise<{ source: Scrape; target: Scrape; jobAfter: Job }> | null = null;
  const job = await watchJob(source, jobId, (event) => {
    const s = event.job?.stats;
    if (during === null && s?.phase === 'checkpoint' && (s.unitsRecorded ?? 0) > 0) {
      during = (async () => {
        const [sourceScrape, targetScrape] = await Promise.all([Scrape.of(sourceMetrics), Scrape.of(targetMetrics)]);
        const jobAfter = await unary(source.ctl, controlService.getJob, pb.GetJobRequest.create({ jobId }), 10_000, 'job');
        return { source: sourceScrape, target: targetScrape, jobAfter };
      })();
    }
  });
  const s = job.stats as Stats;
  t.equal(s.status, 'completed', `completed (${s.error})`);
  t.comment(`downtime ${s.downtimeMs.toFixed(1)} ms, total ${s.totalTimeMs.toFixed(0)} ms, ${(s.transferredBytes / MiB).toFixed(1)} MiB, units ${s.unitsReplayed}`);

  // While it ran.
  t.ok(during !== null, 'the watch saw the checkpoint phase with units recorded');
  const mid = await during!;
  t.equal(mid.jobAfter.stats?.phase, 'checkpoint', 'the scrapes were taken during the checkpoint (still there after them)');
  t.equal(mid.source.get('vmmigrate_migrations_active', { role: 'source' }), 1, 'during: one outgoing migration on the source');
  t.equal(mid.target.get('vmmigrate_migrations_active', { role: 'target' }), 1, 'during: one incoming migration on the target');
  const midBytes = mid.source.sum('vmmigrate_transmitted_bytes_total', { method: 'crtr' });
  t.ok(midBytes > 0 && midBytes < s.transferredBytes, `during: bytes counted as they go (${midBytes} of ${s.transferredBytes})`);
  const lagUnits = mid.source.get('vmmigrate_replay_lag_units') ?? 0;
  t.ok(lagUnits > 0, `during: units wait for the checkpoint to be restored (${lagUnits})`);
  t.equal(mid.source.get('vmmigrate_replay_lag_seconds'), (lagUnits * s.unitMs) / 1000, 'lag in seconds = units x unit length');
  t.equal(mid.source.get('vmmigrate_migrations_completed_total', { method: 'crtr' }), 0, 'during: not completed yet');

  // After it ended.
  const after = await Scrape.of(sourceMetrics);
  t.equal(after.get('vmmigrate_migrations_started_total', { method: 'crtr' }), 1, 'started: 1');
  t.equal(after.get('vmmigrate_migrations_completed_total', { method: 'crtr' }), 1, 'completed: 1');
  t.equal(after.sum('vmmigrate_migrations_failed_total'), 0, 'failed: none');
  t.equal(after.sum('vmmigrate_migrations_cancelled_total'), 0, 'cancelled: none');
  t.equal(after.get('vmmigrate_migration_downtime_seconds_count', { method: 'crtr' }), 1, 'one downtime observed');
  t.equal(after.get('vmmigrate_migration_downtime_seconds_sum', { method: 'crtr' }), s.downtimeMs / 1000, "it is the job's downtime");
  t.equal(after.get('vmmigrate_migration_total_time_seconds_count', { method: 'crtr' }), 1, 'one total time observed');
  t.equal(after.get('vmmigrate_migration_total_time_seconds_sum', { method: 'crtr' }), s.totalTimeMs / 1000, "it is the job's total time");
  const toTarget = after.get('vmmigrate_transmitted_bytes_total', { method: 'crtr', direction: 'to_target' }) ?? 0;
  const toSource = after.get('vmmigrate_transmitted_bytes_total', { method: 'crtr', direction: 'to_source' }) ?? 0;
  t.equal(toTarget + toSource, s.transferredBytes, `bytes both ways (${toTarget} + ${toSource}) = the job's transferredBytes`);
  t.ok(toTarget > s.checkpointWireBytes && toSource > 0, 'the checkpoint went to the target, progress reports came back');
  t.equal(after.get('vmmigrate_migrations_active', { role: 'source' }), 0, 'no migration in progress');
  t.equal(after.get('vmmigrate_replay_lag_units'), 0, 'no lag without a migration');
  t.equal(after.get('vmmigrate_guests', { state: 'running' }), 0, 'the guest left the source');
  t.equal(after.get('vmmigrate_memory_reserved_bytes'), 0, 'and its memory with it');
  t.equal(after.get('vmmigrate_units_replayed_total'), 0, 'the source replays nothing');
  t.equal(after.sum('vmmigrate_incoming_migrations_total'), 0, 'nor receives anything');

  const onTarget = await Scrape.of(targetMetrics);
  t.equal(onTarget.get('vmmigrate_incoming_migrations_total', { method: 'crtr', outcome: 'committed' }), 1, 'the target: one incoming migration committed');
  t.equal(onTarget.sum('vmmigrate_incoming_migrations_total', { outcome: 'discarded' }), 0, 'none discarded');
  t.equal(onTarget.get('vmmigrate_units_replayed_total'), s.unitsReplayed, `the target replayed the job's ${s.unitsReplayed} units`);
  t.ok(s.unitsReplayed > 0);
  t.equal(onTarget.get('vmmigrate_migrations_active', { role: 'target' }), 0, 'no incoming migration in progress');
  t.equal(onTarget.get('vmmigrate_guests', { state: 'running' }), 1, 'the guest runs on the target');
  t.equal(onTarget.get('vmmigrate_memory_reserved_bytes'), GUEST_BYTES);
  t.equal(onTarget.sum('vmmigrate_migrations_started_total'), 0, 'the target started no outgoing migration');
  t.equal(onTarget.sum('vmmigrate_transmitted_bytes_total'), 0, 'bytes are counted once, by the source');

  // Logs: one jobId across both agents.
  const completed = sourceLog.filter((l) => l.msg === 'migration completed');
  t.equal(completed.length, 1, "one 'migration completed' line");
  t.match(completed[0], { jobId, guestId: id, level: 30 }, 'it carries jobId and guestId, at info');
  t.match(sourceLog.find((l) => l.msg === 'migration started'), { jobId, guestId: id, target: target.address, method: 'crtr' }, "'migration started' carries them");
  const phases = sourceLog.filter((l) => l.msg === 'phase');
  t.same(
    phases.map((l) => l.phase),
    ['pre-migration', 'reservation', 'checkpoint', 'log-transfer', 'stop-and-copy', 'commitment', 'activation'],
    'every phase change is logged',
  );
  t.ok(
    phases.every((l) => l.jobId === jobId && l.guestId === id),
    'each with jobId and guestId',
  );
  t.match(sourceLog.find((l) => l.msg === 'guest started'), { guestId: id }, "'guest started' carries guestId");
  const targetLines = targetLog.filter((l) => l.jobId === jobId);
  for (const msg of ['reserved room for an incoming guest', 'transfer opened', 'checkpoint restored: replaying', 'final unit replayed', 'committed and resumed the guest here']) {
    t.match(
      targetLines.find((l) => l.msg === msg),
      { jobId, guestId: id },
      `target: '${msg}' carries the source's jobId and the guestId`,
    );
  }
  t.notOk(
    [...sourceLog, ...targetLog].some((l) => 'migrationId' in l),
    'no line uses the old field name migrationId',
  );
});

t.test('a failed and a cancelled migration are counted apart, the failure by its code; the target counts both discards', async (t) => {
  const { source, target, sourceLog, targetLog, sourceMetrics, targetMetrics } = await agentPair(t);
  const id = 'vm-metrics-fail';
  await startGuest(source, id, 'idle');
  const base = { guestId: id, targetAddress: target.address, downtimeLimitMs: 300, maxDurationMs: 60_000 };

  const failedId = await startMigration(source, { ...base, faultInjection: { corruptChunkIndex: 3 } });
  const failed = (await watchJob(source, failedId)).stats as Stats;
  t.equal(failed.status, 'failed');
  t.equal(failed.errorCode, 'DATA_LOSS');
  let s = await Scrape.of(sourceMetrics);
  t.equal(s.get('vmmigrate_migrations_failed_total', { method: 'crtr', code: 'DATA_LOSS' }), 1, 'failed{code="DATA_LOSS"}: 1');
  t.equal(s.sum('vmmigrate_migrations_failed_total'), 1, 'no other failure');
  t.equal(s.get('vmmigrate_migrations_completed_total', { method: 'crtr' }), 0);
  t.equal(s.get('vmmigrate_migration_downtime_seconds_count', { method: 'crtr' }), 0, 'no downtime observed for a failure');
  t.equal(s.sum('vmmigrate_transmitted_bytes_total', { method: 'crtr' }), failed.transferredBytes, "its bytes are counted too: the job's transferredBytes");
  const targetAfterFailure = await eventually(
    () => Scrape.of(targetMetrics),
    (x) => x.get('vmmigrate_incoming_migrations_total', { method: 'crtr', outcome: 'discarded' }) === 1,
  );
  t.equal(targetAfterFailure.get('vmmigrate_incoming_migrations_total', { method: 'crtr', outcome: 'discarded' }), 1, 'the target discarded the replica');
  t.match(
    sourceLog.find((l) => l.msg === 'migration failed: guest runs on the source'),
    { jobId: failedId, guestId: id, code: 'DATA_LOSS', level: 40, err: /checkpoint chunk 3/ },
    'the failure is logged at warn with jobId, guestId, code and reason',
  );
  t.match(
    targetLog.find((l) => l.msg === 'incoming migration ended before commit: replica discarded'),
    { jobId: failedId, guestId: id, level: 40 },
    'the target logs the discard with the same jobId',
  );

  // An injected abort is a cancellation (status cancelled): it is not a failure.
  const cancelledId = await startMigration(source, { ...base, faultInjection: { abortAtPhase: 'checkpoint' } });
  const cancelled = (await watchJob(source, cancelledId)).stats as Stats;
  t.equal(cancelled.status, 'cancelled');
  s = await Scrape.of(sourceMetrics);
  t.equal(s.get('vmmigrate_migrations_cancelled_total', { method: 'crtr' }), 1, 'cancelled: 1');
  t.equal(s.sum('vmmigrate_migrations_failed_total'), 1, 'failed: still 1');
  t.equal(s.get('vmmigrate_migrations_started_total', { method: 'crtr' }), 2, 'started: 2');
  t.equal(s.get('vmmigrate_migrations_active', { role: 'source' }), 0);
  t.equal(s.get('vmmigrate_guests', { state: 'running' }), 1, 'the guest still runs on the source');
  // Aborted as the checkpoint phase began, before any transfer opened: the source released its
  // reservation, whose method the target never learnt.
  const targetAfterCancel = await eventually(
    () => Scrape.of(targetMetrics),
    (x) => x.get('vmmigrate_incoming_migrations_total', { method: 'unknown', outcome: 'discarded' }) === 1,
  );
  t.equal(targetAfterCancel.get('vmmigrate_incoming_migrations_total', { method: 'unknown', outcome: 'discarded' }), 1, 'the target released the unopened reservation');
  t.equal(targetAfterCancel.sum('vmmigrate_incoming_migrations_total', { outcome: 'committed' }), 0, 'nothing committed');
  t.equal(targetAfterCancel.get('vmmigrate_migrations_active', { role: 'target' }), 0);
  t.match(
    sourceLog.find((l) => l.msg === 'migration cancelled: guest runs on the source'),
    { jobId: cancelledId, guestId: id, code: 'ABORTED', level: 40 },
    'the cancellation is logged at warn with its code',
  );
  t.match(targetLog.find((l) => l.msg === 'released reservation' && l.jobId === cancelledId), { guestId: id }, 'the release on the target carries the jobId');
});

t.test('a post-copy migration is counted under its method on both agents', async (t) => {
  const { source, target, sourceMetrics, targetMetrics } = await agentPair(t);
  const id = 'vm-metrics-post';
  await startGuest(source, id, 'web');
  await sleep(200);
  const s = (await watchJob(source, await startMigration(source, { guestId: id, targetAddress: target.address, method: 'postcopy', maxDurationMs: 60_000 }))).stats as Stats;
  t.equal(s.status, 'completed', `completed (${s.error})`);
  const onSource = await Scrape.of(sourceMetrics);
  t.equal(onSource.get('vmmigrate_migrations_completed_total', { method: 'postcopy' }), 1, 'completed{method="postcopy"}: 1');
  t.equal(onSource.get('vmmigrate_migrations_completed_total', { method: 'crtr' }), 0, 'nothing under crtr');
  t.equal(onSource.get('vmmigrate_migration_downtime_seconds_count', { method: 'postcopy' }), 1);
  t.equal(onSource.sum('vmmigrate_transmitted_bytes_total', { method: 'postcopy' }), s.transferredBytes, "bytes: the job's transferredBytes");
  const onTarget = await Scrape.of(targetMetrics);
  t.equal(onTarget.get('vmmigrate_incoming_migrations_total', { method: 'postcopy', outcome: 'committed' }), 1, 'the target: committed{method="postcopy"}: 1');
  t.equal(onTarget.get('vmmigrate_units_replayed_total'), 0, 'post-copy replays no unit');
});

t.test('agent shutdown: health turns NOT_SERVING for watchers, then the gRPC server and the metrics endpoint close', async (t) => {
  const plain = await startTestAgent(t);
  t.equal(plain.agent.metricsAddress, null, 'without --metrics-listen there is no endpoint');
  t.equal(await checkHealth(plain.address, '', 5_000), 'SERVING', 'but the health service is there');
  const lines: LogLine[] = [];
  const a = await startTestAgent(t, ['--metrics-listen', '127.0.0.1:0'], capturingLogger(lines));
  const metricsAddress = a.agent.metricsAddress!;
  t.equal((await http(metricsAddress, '/healthz')).status, 200, '/healthz: 200 while serving');
  await startGuest(a, 'vm-stop', 'idle');
  await unary(a.ctl, controlService.stopGuest, pb.StopGuestRequest.create({ id: 'vm-stop' }), 10_000, 'stop');
  t.match(
    lines.find((l) => l.msg === 'guest stopped'),
    { guestId: 'vm-stop', level: 30 },
    "'guest stopped' is logged with guestId",
  );

  const watches = HEALTH_SERVICES.map((service) => watchHealth(a.address, service));
  for (const w of watches) t.same(await w.received(1), ['SERVING'], 'a watcher hears SERVING');
  const down = a.agent.shutdown('test: shutdown');
  for (const [i, w] of watches.entries()) {
    t.same(await w.received(2), ['SERVING', 'NOT_SERVING'], `'${HEALTH_SERVICES[i]}': NOT_SERVING once shutdown begins`);
    t.equal(await w.ended, 'OK', 'and the Watch stream ends, so that it does not hold the shutdown');
  }
  const finished = await Promise.race([down.then(() => true), sleep(10_000).then(() => false)]);
  t.ok(finished, 'the agent shuts down within 10 s');
  const after = await rejection(checkHealth(a.address, '', 2_000));
  t.ok(after instanceof UnavailableError, `after shutdown the health service is unavailable (${after?.message})`);
  const refused = await rejection(http(metricsAddress, '/healthz'));
  t.match(refused?.message ?? '', /ECONNREFUSED/, 'and the metrics endpoint is closed');
});
