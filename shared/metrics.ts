// Prometheus metrics of one agent, and the small HTTP server that exposes them (`/metrics`) with a
// liveness probe (`/healthz`).
//
// Each agent owns its own prom-client Registry, never the global one: the tests run several
// agents in one process, and each must report only its own migrations. Our metrics are prefixed
// `vmmigrate_`; prom-client's default process and Node.js metrics (optional, see the constructor)
// keep their standard names (`process_*`, `nodejs_*`) so that stock dashboards find them.
//
// Cardinality is bounded by construction: labels only take values from small fixed sets (method,
// gRPC status name, role, guest state, direction, outcome). Nothing is labelled by job or guest
// id; per-job detail is what the Control API's GetJob and WatchJob are for.
//
// Roles: a migration is counted by the agent it runs on in that role. The source agent counts
// outgoing migrations (started, completed, failed, cancelled, durations, bytes on the wire both
// ways); the target agent counts incoming ones (outcome, units replayed). Summing a metric over all
// agents therefore counts each migration, and each byte, once.

import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { type ProtectionGaugeView, registerProtectionGauges } from './protection-metrics.js';
import { assert } from './assert.js';
import type { GuestState } from './driver/types.js';
import { InvalidArgumentError } from './errors.js';
import type { MigrationMethod, MigrationStats } from './stats.js';

const PREFIX = 'vmmigrate_';
const METHODS: readonly MigrationMethod[] = ['crtr', 'precopy', 'postcopy', 'qemu-native'];
const GUEST_STATES = ['running', 'blocked', 'suspended', 'restoring', 'replica', 'discarded'] as const satisfies readonly GuestState[];
// Fails to compile when GuestState gains a state that GUEST_STATES does not list.
const GUEST_STATES_COMPLETE: [Exclude<GuestState, (typeof GUEST_STATES)[number]>] extends [never] ? true : never = true;
void GUEST_STATES_COMPLETE;

/** Downtime: a CR/TR stop-and-copy takes milliseconds; a forced or pre-copy one, seconds. */
export const DOWNTIME_BUCKETS_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** Total migration time: a small idle guest on a LAN takes a second; a large busy one on a WAN, up to the maximum duration. */
export const TOTAL_TIME_BUCKETS_SECONDS = [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];

/** How an incoming migration ended on the target. */
export type IncomingOutcome = 'committed' | 'discarded';
/** An incoming migration whose transfer never opened does not know its method yet. */
export type IncomingMethod = MigrationMethod | 'unknown';

/**
 * An outgoing migration as the metrics follow it: what source-agent/migration.ts SourceMigration
 * offers, stated here so that this module does not depend on the source role.
 */
export interface OutgoingMigration {
  readonly request: { readonly method: MigrationMethod };
  readonly stats: Readonly<Pick<MigrationStats, 'status' | 'errorCode' | 'downtimeMs' | 'totalTimeMs' | 'remainingUnits' | 'unitMs'>>;
  /** Bytes on the wire so far: `sent` to the target, `received` from it. */
  readonly wireBytes: Readonly<{ sent: number; received: number }>;
  once(event: 'end', listener: () => void): unknown;
}

/** What the metrics read from the host at scrape time. */
export interface HostView {
  guestStates(): Iterable<GuestState>;
  memory(): { memoryBytesReserved: number; memoryBytesTotal: number };
}

export class AgentMetrics {
  readonly registry = new Registry();
  /** Outgoing migrations not yet ended, with the wire bytes already counted for each. */
  private readonly outgoing = new Map<OutgoingMigration, { sent: number; received: number }>();
  private incomingActive: () => number = () => 0;
  private host: HostView | null = null;

  private readonly started: Counter<'method'>;
  private readonly completed: Counter<'method'>;
  private readonly failed: Counter<'method' | 'code'>;
  private readonly cancelled: Counter<'method'>;
  private readonly incoming: Counter<'method' | 'outcome'>;
  private readonly downtime: Histogram<'method'>;
  private readonly totalTime: Histogram<'method'>;
  private readonly transmitted: Counter<'method' | 'direction'>;
  private readonly replayed: Counter;

  /**
   * `processMetrics`: also prom-client's default metrics. Their collectors (a GC observer, an
   * event-loop delay monitor sampling every 10 ms) cannot be stopped once started, so an agent that
   * exposes no endpoint (tests start dozens in one process) does without them.
   */
  constructor(options: { processMetrics: boolean } = { processMetrics: true }) {
    const registers = [this.registry];
    if (options.processMetrics) collectDefaultMetrics({ register: this.registry });
    this.started = new Counter({ name: `${PREFIX}migrations_started_total`, help: 'Outgoing migrations started on this agent (source role).', labelNames: ['method'], registers });
    this.completed = new Counter({
      name: `${PREFIX}migrations_completed_total`,
      help: 'Outgoing migrations that completed: committed on the target and activated there (source role).',
      labelNames: ['method'],
      registers,
    });
    this.failed = new Counter({
      name: `${PREFIX}migrations_failed_total`,
      help: 'Outgoing migrations that failed, by gRPC status name of the error (source role). Cancellations are counted apart.',
      labelNames: ['method', 'code'],
      registers,
    });
    this.cancelled = new Counter({
      name: `${PREFIX}migrations_cancelled_total`,
      help: 'Outgoing migrations cancelled before their commit: by CancelJob, agent shutdown or injected abort; the guest stays on the source (source role).',
      labelNames: ['method'],
      registers,
    });
    this.incoming = new Counter({
      name: `${PREFIX}incoming_migrations_total`,
      help: 'Incoming migrations that ended on this agent (target role): committed here, or discarded before the commit (method "unknown" if discarded before its transfer opened).',
      labelNames: ['method', 'outcome'],
      registers,
    });
    this.downtime = new Histogram({
      name: `${PREFIX}migration_downtime_seconds`,
      help: 'Downtime of completed outgoing migrations: source suspend to target resume (source role).',
      labelNames: ['method'],
      buckets: DOWNTIME_BUCKETS_SECONDS,
      registers,
    });
    this.totalTime = new Histogram({
      name: `${PREFIX}migration_total_time_seconds`,
      help: 'Total time of completed outgoing migrations: start to the consistent state (commit) (source role).',
      labelNames: ['method'],
      buckets: TOTAL_TIME_BUCKETS_SECONDS,
      registers,
    });
    this.transmitted = new Counter({
      name: `${PREFIX}transmitted_bytes_total`,
      help: 'Bytes of migration messages between the agents (gRPC framing included), counted by the source agent as they go; direction to_target or to_source.',
      labelNames: ['method', 'direction'],
      registers,
      // Bring running migrations up to date, so that a scrape during a long migration moves.
      collect: () => {
        for (const job of this.outgoing.keys()) this.countWireBytes(job);
      },
    });
    this.replayed = new Counter({ name: `${PREFIX}units_replayed_total`, help: 'Log units replayed by incoming migrations on this agent (target role).', registers });

    // Gauges read at scrape time, from the live objects.
    registerScrapeGauges(registers, { outgoing: this.outgoing, incomingActive: () => this.incomingActive(), host: () => this.host });

    // Every fixed series starts at 0, so that rate() and increase() see the first event.
    for (const method of METHODS) {
      for (const counter of [this.started, this.completed, this.cancelled]) counter.inc({ method }, 0);
      for (const direction of ['to_target', 'to_source']) this.transmitted.inc({ method, direction }, 0);
      for (const outcome of ['committed', 'discarded'] satisfies IncomingOutcome[]) this.incoming.inc({ method, outcome }, 0);
      this.downtime.zero({ method });
      this.totalTime.zero({ method });
    }
    this.replayed.inc(0);
  }

  /** Follows one outgoing migration from its start to its end. Call before the migration runs. */
  trackOutgoing(job: OutgoingMigration): void {
    assert(!this.outgoing.has(job), 'an outgoing migration was tracked twice');
    const method = job.request.method;
    this.outgoing.set(job, { sent: 0, received: 0 });
    this.started.inc({ method });
    job.once('end', () => {
      this.countWireBytes(job);
      this.outgoing.delete(job);
      const s = job.stats;
      switch (s.status) {
        case 'completed':
          this.completed.inc({ method });
          this.downtime.observe({ method }, s.downtimeMs / 1000);
          this.totalTime.observe({ method }, s.totalTimeMs / 1000);
          break;
        case 'cancelled':
          this.cancelled.inc({ method });
          break;
        case 'failed':
          this.failed.inc({ method, code: s.errorCode || 'UNKNOWN' });
          break;
        default:
          assert(false, `an outgoing migration ended with status '${s.status}' (expected completed, cancelled or failed)`);
      }
    });
  }

  /** An incoming migration ended on this agent (target role). */
  incomingEnded(method: IncomingMethod, outcome: IncomingOutcome): void {
    this.incoming.inc({ method, outcome });
  }

  /** Units replayed on this agent (target role), counted as they are replayed. */
  unitsReplayed(count = 1): void {
    this.replayed.inc(count);
  }

  /** How many incoming migrations are in progress, read at scrape time (target role). */
  observeIncoming(active: () => number): void {
    this.incomingActive = active;
  }

  /** The protections this agent holds, read at scrape time (call once). */
  observeProtections(read: () => ProtectionGaugeView[]): void {
    registerProtectionGauges(this.registry, read);
  }

  /** The host's guests and memory, read at scrape time. */
  observeHost(view: HostView): void {
    this.host = view;
  }

  /** Adds the wire bytes of `job` not yet counted. */
  private countWireBytes(job: OutgoingMigration): void {
    const counted = this.outgoing.get(job);
    if (counted === undefined) return;
    const method = job.request.method;
    const { sent, received } = job.wireBytes;
    if (sent > counted.sent) this.transmitted.inc({ method, direction: 'to_target' }, sent - counted.sent);
    if (received > counted.received) this.transmitted.inc({ method, direction: 'to_source' }, received - counted.received);
    counted.sent = Math.max(counted.sent, sent);
    counted.received = Math.max(counted.received, received);
  }
}

// --- the HTTP endpoint ---------------------------------------------------------------

/** Limits of the metrics endpoint: it answers small GETs from a scraper and a probe, nothing else. */
export const METRICS_SERVER_LIMITS = {
  /** A whole request (headers included) must arrive within this. */
  requestTimeoutMs: 10_000,
  headersTimeoutMs: 5_000,
  keepAliveTimeoutMs: 5_000,
  maxHeaderBytes: 8 * 1024,
  maxConnections: 32,
  /** close() waits this long for scrapes in progress, then drops their connections. */
  closeGraceMs: 2_000,
} as const;

export interface MetricsServer {
  /** host:port it listens on (the real port when asked for port 0). */
  readonly address: string;
  /** From now on `/healthz` answers 503: the agent is shutting down. */
  shuttingDown(): void;
  /** Stops listening; resolves once every connection is closed. */
  close(): Promise<void>;
}

/** Splits `host:port` (IPv6 hosts in brackets: `[::1]:9464`); port 0 picks a free one. */
function parseListen(listen: string): { host: string; port: number } {
  const colon = listen.lastIndexOf(':');
  const port = Number(listen.slice(colon + 1));
  const host = listen.slice(0, Math.max(0, colon)).replace(/^\[(.*)\]$/, '$1');
  if (colon < 1 || host === '' || !Number.isInteger(port) || port < 0 || port > 65535 || listen.slice(colon + 1) === '') {
    throw new InvalidArgumentError(`metrics address '${listen}': expected host:port, port 0 to 65535 (for example 127.0.0.1:9464)`);
  }
  return { host, port };
}

/**
 * Serves `GET /metrics` (the Prometheus text format) and `GET /healthz` (200 `ok`, or 503 once
 * shutdown began) over plain HTTP on `listen`. Anything else is refused without reading a body:
 * 405 for another method, 413 for a request that announces a body, 404 for another path.
 */
export async function startMetricsServer(listen: string, metrics: AgentMetrics, log: Logger): Promise<MetricsServer> {
  const { host, port } = parseListen(listen);
  const limits = METRICS_SERVER_LIMITS;
  let stopping = false;
  const reply = (res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}) => {
    res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store', ...headers });
    res.end(body);
  };
  const server = createServer(
    { requestTimeout: limits.requestTimeoutMs, headersTimeout: limits.headersTimeoutMs, keepAliveTimeout: limits.keepAliveTimeoutMs, maxHeaderSize: limits.maxHeaderBytes },
    (req: IncomingMessage, res: ServerResponse) => {
      if (req.method !== 'GET') return reply(res, 405, `method ${req.method} not allowed: only GET\n`, { Allow: 'GET', Connection: 'close' });
      // We never read a request body: one that announces a body gets its connection closed.
      const length = Number(req.headers['content-length'] ?? 0);
      if (req.headers['transfer-encoding'] !== undefined || length > 0) return reply(res, 413, 'a GET takes no body\n', { Connection: 'close' });
      const path = (req.url ?? '/').split('?')[0];
      if (path === '/healthz') return stopping ? reply(res, 503, 'shutting down\n') : reply(res, 200, 'ok\n');
      if (path !== '/metrics') return reply(res, 404, `no ${path} here: try /metrics or /healthz\n`);
      metrics.registry.metrics().then(
        (text) => reply(res, 200, text, { 'Content-Type': metrics.registry.contentType }),
        (error: unknown) => {
          log.error({ err: error }, 'could not collect metrics');
          reply(res, 500, 'could not collect metrics; see the agent log\n');
        },
      );
    },
  );
  server.maxConnections = limits.maxConnections;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (error) => log.error({ err: error }, 'metrics server error'));
  const bound = server.address();
  assert(bound !== null && typeof bound === 'object', 'a TCP server has an address once listening');
  const address = `${host.includes(':') ? `[${host}]` : host}:${bound.port}`;
  log.info({ metricsAddress: address }, 'metrics listening (/metrics, /healthz)');
  let closing: Promise<void> | null = null;
  return {
    address,
    shuttingDown() {
      stopping = true;
    },
    close() {
      stopping = true;
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        const timer = setTimeout(() => server.closeAllConnections(), limits.closeGraceMs);
        timer.unref();
      });
      return closing;
    },
  };
}

/**
 * The gauges read at scrape time: migrations in progress and in doubt, the replay lag, guests by
 * state, memory. prom-client calls `collect` with the gauge as `this`.
 */
function registerScrapeGauges(
  registers: Registry[],
  live: { outgoing: ReadonlyMap<OutgoingMigration, unknown>; incomingActive: () => number; host: () => HostView | null },
): void {
  const { outgoing, incomingActive, host } = live;
  const maxOverOutgoing = (of: (stats: OutgoingMigration['stats']) => number) => {
    let max = 0;
    for (const job of outgoing.keys()) max = Math.max(max, of(job.stats));
    return max;
  };
  new Gauge({
    name: `${PREFIX}migrations_active`,
    help: 'Migrations in progress: role source (outgoing jobs not ended) or target (incoming, reserved and not yet ended).',
    labelNames: ['role'],
    registers,
    collect() {
      this.set({ role: 'source' }, outgoing.size);
      this.set({ role: 'target' }, incomingActive());
    },
  });
  new Gauge({
    name: `${PREFIX}migrations_in_doubt`,
    help: 'Outgoing migrations in doubt: the commit was sent and its answer lost; the guest is kept suspended here until the target says what it decided (alert on it: an operator may have to resolve).',
    registers,
    collect() {
      let n = 0;
      for (const job of outgoing.keys()) if (job.stats.status === 'in-doubt') n++;
      this.set(n);
    },
  });
  // The maximum over outgoing migrations rather than one series per guest: a fixed number of
  // series whatever the guests, and an alert on it fires for whichever migration lags.
  new Gauge({
    name: `${PREFIX}replay_lag_units`,
    help: 'Log units recorded and not yet replayed on the target: the maximum over outgoing migrations in progress (0 if none).',
    registers,
    collect() {
      this.set(maxOverOutgoing((s) => s.remainingUnits));
    },
  });
  new Gauge({
    name: `${PREFIX}replay_lag_seconds`,
    help: 'Guest time recorded and not yet replayed on the target (remaining units x unit length): the maximum over outgoing migrations in progress (0 if none).',
    registers,
    collect() {
      this.set(maxOverOutgoing((s) => (s.remainingUnits * s.unitMs) / 1000));
    },
  });
  registerHostGauges(registers, host);
}

/** The host's gauges read at scrape time: guests by state, guest memory reserved and offered. */
function registerHostGauges(registers: Registry[], host: () => HostView | null): void {
  new Gauge({
    name: `${PREFIX}guests`,
    help: 'Guests on this host by state (replicas of incoming migrations are not guests until activated).',
    labelNames: ['state'],
    registers,
    collect() {
      const counts = new Map<GuestState, number>(GUEST_STATES.map((s) => [s, 0]));
      for (const state of host()?.guestStates() ?? []) counts.set(state, (counts.get(state) ?? 0) + 1);
      for (const [state, n] of counts) this.set({ state }, n);
    },
  });
  new Gauge({
    name: `${PREFIX}memory_reserved_bytes`,
    help: 'Guest memory this host holds: its guests and the replicas of incoming migrations.',
    registers,
    collect() {
      this.set(host()?.memory().memoryBytesReserved ?? 0);
    },
  });
  new Gauge({
    name: `${PREFIX}memory_capacity_bytes`,
    help: 'Guest memory this host offers to guests (the agent\'s --memory-mib).',
    registers,
    collect() {
      this.set(host()?.memory().memoryBytesTotal ?? 0);
    },
  });
}
