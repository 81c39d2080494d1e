// An agent process: one gRPC server offering the Control service (guests, jobs) and the Migration
// service (incoming guests), over one host of the configured driver (sim, or qemu; see
// agent-driver.ts). Every agent can play both roles: a guest that arrived here can later be
// migrated onward or back. `source-agent` and `target-agent` are the same daemon under two names,
// with different default ports.
//
// Configuration: a YAML file (--config, or VMMIGRATE_CONFIG) with flags laid over it, validated
// in shared/config.ts. The daemon refuses to start on any invalid field, naming it.

import { hostname } from 'node:os';
import { createArbiter } from '../shared/arbiter/factory.js';
import { randomUUID } from 'node:crypto';
import { Command, Option } from 'commander';
import { pino, destination, type Logger } from 'pino';
import { ControlService, CONTROL_DEFAULTS } from '../source-agent/control-service.js';
import { ControlServiceV2 } from '../source-agent/control-v2/service.js';
import { SOURCE_DEFAULTS } from '../source-agent/migration.js';
import { recoverSourceRecords } from '../source-agent/decisions.js';
import { MigrationService, TARGET_DEFAULTS, type TargetOptions } from '../target-agent/migration-service.js';
import { type AgentDriver, hostDriver } from './agent-driver.js';
import { PackPool } from '../shared/pack-pool.js';
import { type DecisionJournal, openJournal } from '../shared/journal.js';
import { type AgentConfig, ConfigError, readConfigFile, setPath, validateConfig } from '../shared/config.js';
import { AgentMetrics, startMetricsServer } from '../shared/metrics.js';
import { addHealthService } from '../shared/transport/health.js';
import { addReflectionService } from '../shared/transport/reflection.js';
import { controlService, controlServiceV2, createServer, migrationService, onTlsHandshakeFailure, widenServerSessions } from '../shared/transport/grpc.js';
import { allowlistInterceptor, clientCredentials, loadTlsMaterial, serverCredentials, type TlsMaterial, TlsMaterialError } from '../shared/transport/tls.js';

export type AgentRole = 'source' | 'target';

/** A validated configuration with its TLS material read (null: plaintext, loopback only). */
export interface AgentOptions {
  config: AgentConfig;
  tls: TlsMaterial | null;
  /** Where the configuration came from, for messages: a file name, or 'flags'. */
  source: string;
}

export interface RunningAgent {
  readonly address: string;
  readonly driver: AgentDriver;
  readonly control: ControlService;
  readonly migration: MigrationService;
  readonly log: Logger;
  readonly metrics: AgentMetrics;
  /** host:port of /metrics and /healthz, or null without metricsListen. */
  readonly metricsAddress: string | null;
  /** Cancels migrations not yet committed (guests stay here), drops incoming ones, stops serving. */
  shutdown(reason: string): Promise<void>;
}

/** What the target side takes from the configuration. */
function targetOptions(config: AgentConfig, agentInstanceId: string): TargetOptions {
  const { limits, hooks } = config;
  return {
    ...TARGET_DEFAULTS,
    chunkWindow: limits.chunkWindow,
    unitWindow: limits.unitWindow,
    unitWindowBytes: limits.unitWindowMib * 2 ** 20,
    reservationTimeoutMs: limits.reservationTimeoutMs,
    resumeWindowMs: limits.resumeWindowMs,
    transferIdleTimeoutMs: limits.transferIdleTimeoutMs,
    peerMemoryPercent: limits.peerMemoryPercent,
    peerTransfersMax: limits.peerTransfersMax,
    activationHooks: hooks.activation,
    hookTimeoutMs: hooks.timeoutMs,
    agentInstanceId,
  };
}

export async function startAgent(options: AgentOptions, log: Logger = pino({ level: options.config.log.level }, destination(2))): Promise<RunningAgent> {
  const { config, tls } = options;
  const driver = hostDriver(config, log);
  const metrics = new AgentMetrics({ processMetrics: config.metricsListen !== undefined });
  // Who this agent is, for this run: a migration whose target answers with the same id is refused.
  const agentInstanceId = randomUUID();
  const journal = openAgentJournal(config, log);
  recoverSourceRecords(journal, log);
  // The failover arbiter (none by default: failover is manual). Its holder id names this agent in
  // the records: stable across restarts when configured or when the listen port is fixed.
  const holderId = config.listen.endsWith(':0') ? `${hostname()}/${agentInstanceId}` : `${hostname()}/${config.listen}`;
  const arbiter = createArbiter(config.arbiter, { holderId });
  const migration = new MigrationService(driver, targetOptions(config, agentInstanceId), log, metrics, undefined, journal, arbiter);
  // Outgoing checkpoint chunks are compressed in these workers, off the event loop.
  const packer = config.limits.compressionWorkers > 0 ? new PackPool(config.limits.compressionWorkers) : undefined;
  const control = new ControlService(
    driver,
    // Outgoing migrations dial targets with our certificate and accept only allowed peers.
    { ...SOURCE_DEFAULTS, credentials: clientCredentials(tls, config.allow.peers), agentInstanceId, packer, journal, activationTimeoutMs: config.limits.activationTimeoutMs, resumeWindowMs: config.limits.resumeWindowMs },
    {
      ...CONTROL_DEFAULTS,
      downtimeLimitMsDefault: config.migration.downtimeLimitMs,
      maxDurationMsDefault: config.migration.maxDurationMs,
      maxBandwidthBytesPerSecDefault: config.migration.maxBandwidth,
      nonConvergencePolicyDefault: config.migration.nonConvergencePolicy,
      jobsMax: config.limits.jobsMax,
      allowFaultInjection: config.allowFaultInjection,
      plaintext: tls === null,
    },
    log,
    metrics,
    migration.incoming,
  );
  const server = createServer(tls === null ? [] : [allowlistInterceptor(config.allow, log)]);
  server.addService(migrationService, migration.handlers());
  server.addService(controlService, control.handlers());
  let address = config.listen;
  const controlV2 = new ControlServiceV2(control, migration.incoming, driver, { agentInstanceId, listenAddress: () => address }, log, { failover: (guestId, force) => migration.failover(guestId, force), drop: (guestId) => migration.dropStandby(guestId) }, arbiter);
  metrics.observeProtections(() => controlV2.protectionGauges());
  server.addService(controlServiceV2, controlV2.handlers());
  const health = addHealthService(server);
  addReflectionService(server);
  let port: number;
  try {
    port = await new Promise<number>((resolve, reject) => server.bindAsync(config.listen, serverCredentials(tls), (error, p) => (error ? reject(error) : resolve(p))));
  } catch (error) {
    await driver.shutdown();
    void packer?.close();
    journal.close();
    throw new ConfigError('listen', `cannot listen on ${config.listen}: ${(error as Error).message}`);
  }
  widenServerSessions(server);
  onTlsHandshakeFailure(server, (error, remote) => log.warn({ remote, err: error.message }, 'refused a connection: TLS handshake failed (a client certificate not issued by tls.ca, none, or plaintext)'));
  const host = config.listen.slice(0, config.listen.lastIndexOf(':'));
  address = `${host}:${port}`;
  let metricsServer: Awaited<ReturnType<typeof startMetricsServer>> | null = null;
  if (config.metricsListen !== undefined) {
    try {
      metricsServer = await startMetricsServer(config.metricsListen, metrics, log);
    } catch (error) {
      server.forceShutdown();
      await driver.shutdown();
      void packer?.close();
      journal.close();
      throw new ConfigError('metricsListen', `cannot serve metrics on ${config.metricsListen}: ${(error as Error).message}`);
    }
  }
  health.serving();
  log.info(
    { address, metricsAddress: metricsServer?.address, memoryBytesTotal: config.host.memoryMib * 2 ** 20, tls: tls ? { identities: tls.identities } : 'plaintext (loopback only)', allow: tls ? config.allow : undefined, config: options.source },
    'agent listening',
  );
  let stopping: Promise<void> | null = null;
  return {
    address,
    driver,
    control,
    migration,
    log,
    metrics,
    metricsAddress: metricsServer?.address ?? null,
    shutdown(reason: string) {
      stopping ??= (async () => {
        log.info({ reason }, 'agent shutting down');
        // Probes see the agent going first; the metrics endpoint stays up until the end, so that a
        // last scrape sees how the running migrations ended.
        health.shuttingDown();
        metricsServer?.shuttingDown();
        await control.shutdown(reason);
        migration.shutdown(reason);
        await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
        await driver.shutdown();
        await packer?.close();
        await metricsServer?.close();
        await arbiter?.close().catch((error: unknown) => log.warn({ err: String(error) }, 'could not close the arbiter'));
        journal.close();
      })();
      return stopping;
    },
  };
}

/** The decision journal in config.stateDir (in memory without one, said at start); a directory it cannot use stops the agent. */
function openAgentJournal(config: AgentConfig, log: Logger): DecisionJournal {
  let journal: DecisionJournal;
  try {
    journal = openJournal(config.stateDir);
  } catch (error) {
    throw new ConfigError('stateDir', `cannot use the state directory ${config.stateDir}: ${(error as Error).message}`);
  }
  if (!journal.durable) log.warn('no stateDir configured: migration decisions are kept in memory only, and an agent restart forgets them (a source in doubt may then need an operator: vmmigrate resolve)');
  else log.info({ journal: journal.path, records: journal.entries().length, corruptLines: journal.corruptLines }, 'decision journal opened');
  if (journal.corruptLines > 0) log.error({ journal: journal.path, corruptLines: journal.corruptLines }, 'decision journal: damaged records skipped');
  return journal;
}

/** Flag (commander's camelCase name) → configuration field, and how its text becomes a value. */
const FLAGS: Array<{ option: string; flag: string; field: string; value?: (text: string) => unknown }> = [
  { option: 'listen', flag: '--listen', field: 'listen' },
  { option: 'driver', flag: '--driver', field: 'driver' },
  { option: 'metricsListen', flag: '--metrics-listen', field: 'metricsListen' },
  { option: 'tlsCa', flag: '--tls-ca', field: 'tls.ca' },
  { option: 'tlsCert', flag: '--tls-cert', field: 'tls.cert' },
  { option: 'tlsKey', flag: '--tls-key', field: 'tls.key' },
  { option: 'insecurePlaintext', flag: '--insecure-plaintext', field: 'tls.plaintext' },
  { option: 'allowPeer', flag: '--allow-peer', field: 'allow.peers' },
  { option: 'allowControl', flag: '--allow-control', field: 'allow.control' },
  { option: 'memoryMib', flag: '--memory-mib', field: 'host.memoryMib', value: Number },
  { option: 'vcpus', flag: '--vcpus', field: 'host.vcpus', value: Number },
  { option: 'unitMs', flag: '--unit-ms', field: 'host.unitMs', value: Number },
  { option: 'vcpu', flag: '--vcpu', field: 'host.vcpu' },
  { option: 'downtimeLimitMs', flag: '--downtime-limit-ms', field: 'migration.downtimeLimitMs', value: Number },
  { option: 'maxBandwidth', flag: '--max-bandwidth', field: 'migration.maxBandwidth' },
  { option: 'maxDurationMs', flag: '--max-duration-ms', field: 'migration.maxDurationMs', value: Number },
  { option: 'policy', flag: '--policy', field: 'migration.nonConvergencePolicy' },
  { option: 'jobsMax', flag: '--jobs-max', field: 'limits.jobsMax', value: Number },
  { option: 'chunkWindow', flag: '--chunk-window', field: 'limits.chunkWindow', value: Number },
  { option: 'unitWindow', flag: '--unit-window', field: 'limits.unitWindow', value: Number },
  { option: 'unitWindowMib', flag: '--unit-window-mib', field: 'limits.unitWindowMib', value: Number },
  { option: 'transferIdleTimeoutMs', flag: '--transfer-idle-timeout-ms', field: 'limits.transferIdleTimeoutMs', value: Number },
  { option: 'compressionWorkers', flag: '--compression-workers', field: 'limits.compressionWorkers', value: Number },
  { option: 'activationHook', flag: '--activation-hook', field: 'hooks.activation' },
  { option: 'hookTimeoutMs', flag: '--hook-timeout-ms', field: 'hooks.timeoutMs', value: Number },
  { option: 'logLevel', flag: '--log-level', field: 'log.level' },
  { option: 'stateDir', flag: '--state-dir', field: 'stateDir' },
  { option: 'resumeWindowMs', flag: '--resume-window-ms', field: 'limits.resumeWindowMs', value: Number },
  { option: 'activationTimeoutMs', flag: '--activation-timeout-ms', field: 'limits.activationTimeoutMs', value: Number },
  { option: 'onStopWithGuests', flag: '--on-stop-with-guests', field: 'onStopWithGuests' },
  { option: 'allowFaultInjection', flag: '--allow-fault-injection', field: 'allowFaultInjection' },
];

/**
 * The configuration from the file (if any) with the flags given laid over it, validated, and
 * the TLS material read and checked. Throws ConfigError naming the field.
 */
export function agentOptionsFrom(role: AgentRole, opts: Record<string, unknown>): AgentOptions {
  const file = typeof opts.config === 'string' && opts.config !== '' ? opts.config : undefined;
  const raw = file === undefined ? {} : readConfigFile(file);
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError('(file)', `the configuration file ${file} must hold a YAML mapping (field: value lines)`);
  const doc = raw as Record<string, unknown>;
  const flagOf: Record<string, string> = {};
  for (const { option, flag, field, value } of FLAGS) {
    const given = opts[option];
    if (given === undefined) continue;
    setPath(doc, field, typeof given === 'string' && value ? value(given) : given);
    flagOf[field] = flag;
  }
  if (doc.listen === undefined) doc.listen = `127.0.0.1:${role === 'source' ? 7400 : 7401}`;
  const source = file ?? 'flags';
  const config = validateConfig(doc, source, flagOf);
  let tls: TlsMaterial | null = null;
  if (!config.tls.plaintext) {
    try {
      tls = loadTlsMaterial({ ca: config.tls.ca!, cert: config.tls.cert!, key: config.tls.key! });
    } catch (error) {
      if (!(error instanceof TlsMaterialError)) throw error;
      const field = `tls.${error.field}`;
      throw new ConfigError(field, `invalid configuration in ${source}: ${field}${flagOf[field] ? ` (set by ${flagOf[field]})` : ''}: ${error.message}`);
    }
  }
  return { config, tls, source };
}

/** The daemon's options. No defaults here: unset flags leave the file's value (or the built-in default) alone. */
function agentOptionsCommand(role: AgentRole): Command {
  const defaultPort = role === 'source' ? 7400 : 7401;
  return new Command(`${role}-agent`)
    .description(`run the ${role} agent: the Control and Migration gRPC services over a sim or qemu host (flags override the configuration file)`)
    .addOption(new Option('--config <file>', 'YAML configuration file (deploy/agent.example.yaml documents it)').env('VMMIGRATE_CONFIG'))
    .option('--check-config', 'check the configuration (and read the TLS files), print the verdict and exit: 0 valid, 2 not')
    .option('--listen <host:port>', `address to serve on (default 127.0.0.1:${defaultPort})`)
    .addOption(new Option('--driver <name>', 'hypervisor driver: sim (the built-in guest, default) or qemu (QEMU processes; the qemu section of --config says what they boot)').choices(['sim', 'qemu']))
    .option('--metrics-listen <host:port>', 'serve Prometheus metrics over HTTP here (default: off)')
    .option('--tls-ca <file>', 'PEM CA certificate that issued every agent and client certificate')
    .option('--tls-cert <file>', "PEM certificate of this agent (server and client)")
    .option('--tls-key <file>', 'PEM private key of --tls-cert')
    .option('--insecure-plaintext', 'no TLS: allowed only when --listen is a loopback address')
    .option('--allow-peer <identity...>', "agent identities (certificate CN, DNS or URI name) allowed to exchange guests with this one; '*': any the CA issued")
    .option('--allow-control <identity...>', "client identities allowed on the Control API; '*': any the CA issued")
    .option('--state-dir <dir>', 'directory of the decision journal (default: none, decisions kept in memory only)')
    .option('--resume-window-ms <n>', 'a transfer whose stream broke before the commit: how long to resume it on a new stream, as source and as target (0: never; default 10000)')
    .option('--activation-timeout-ms <n>', "after a matched commit, how long to wait for the target's activation confirmation before asking it instead (default 60000)")
    .option('--on-stop-with-guests <refuse|drop>', 'SIGTERM while guests live in this agent (sim and qemu: they die with it): refuse (default: keep running, stop once none is left) or drop (stop, destroying them)')
    .option('--memory-mib <n>', 'memory this host offers to guests, MiB (default 16384)')
    .option('--vcpus <n>', 'vCPUs this host offers (default 16)')
    .option('--unit-ms <n>', 'default log unit length, ms (1-100, default 10)')
    .addOption(new Option('--vcpu <where>', "where a guest's vCPU executes: thread (its own, default) or inline (the agent's event loop)").choices(['thread', 'inline']))
    .option('--downtime-limit-ms <n>', 'default downtime limit of outgoing migrations (default 300)')
    .option('--max-bandwidth <rate>', 'default bandwidth cap of outgoing migrations: bytes/s, or 1gbit, 100mbit, 125MB/s, 12MiB/s (default 0: unlimited)')
    .option('--max-duration-ms <n>', 'default maximum duration of outgoing migrations (default 600000)')
    .addOption(new Option('--policy <name>', 'default non-convergence policy (default abort)').choices(['abort', 'force', 'throttle']))
    .option('--jobs-max <n>', 'migration jobs kept, finished ones dropped oldest first (default 1000)')
    .option('--chunk-window <n>', 'checkpoint chunks an incoming migration may have in flight (default 16)')
    .option('--unit-window <n>', 'log units an incoming migration may have in flight (default 4096)')
    .option('--unit-window-mib <n>', 'log bytes an incoming migration may have in flight, MiB (default 64)')
    .option('--transfer-idle-timeout-ms <n>', 'an incoming transfer whose source sends nothing for this long ends and frees its reservation (default 30000)')
    .option('--compression-workers <n>', 'worker threads compressing outgoing checkpoint chunks, 0 to 8; 0: the event loop (default: cores - 1, at most 2)')
    .option('--activation-hook <command...>', 'command run (sh -c) after an incoming guest resumes here; repeatable')
    .option('--hook-timeout-ms <n>', 'time an activation hook may take before it is killed (default 10000)')
    .option('--allow-fault-injection', 'honour fault injection in migration requests (tests only)')
    .addOption(new Option('--log-level <level>', 'log level (default info)').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']));
}

/** Parses daemon arguments (no program name) into validated options, without starting anything. */
export function agentOptionsFromArgs(role: AgentRole, args: string[]): AgentOptions {
  const command = agentOptionsCommand(role).exitOverride().parse(args, { from: 'user' });
  return agentOptionsFrom(role, command.opts());
}

/** Starts the daemon and runs it until SIGTERM/SIGINT, then shuts down safely. */
export async function runAgent(role: AgentRole, opts: Record<string, unknown>): Promise<RunningAgent> {
  let options: AgentOptions;
  try {
    options = agentOptionsFrom(role, opts);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`${role}-agent: ${error.message}`);
    process.exit(2);
  }
  if (opts.checkConfig) {
    console.log(`${role}-agent: configuration ${options.source} is valid (listen ${options.config.listen}, ${options.tls ? `mutual TLS as [${options.tls.identities.join(', ')}]` : 'plaintext on loopback'})`);
    process.exit(0);
  }
  const log = pino({ level: options.config.log.level }, destination(2));
  // Node's warnings go to the log. grpc-js passes an IP address as the TLS server name when a
  // target is dialled by address, which Node flags as deprecated (DEP0123) on every first dial;
  // the certificate is still checked against that address, so that one is only worth a debug line.
  process.removeAllListeners('warning');
  process.on('warning', (warning: Error & { code?: string }) => {
    if (warning.code === 'DEP0123') log.debug({ warning: warning.message }, 'node warning');
    else log.warn({ warning: warning.message, code: warning.code }, 'node warning');
  });
  let agent: RunningAgent;
  try {
    agent = await startAgent(options, log);
  } catch (error) {
    console.error(`${role}-agent: ${(error as Error).message}`);
    process.exit(error instanceof ConfigError ? 2 : 1);
  }
  // Tell a parent process where we listen (port 0 picks one).
  console.log(JSON.stringify({ listening: agent.address, metrics: agent.metricsAddress ?? undefined }));
  onStopSignals(agent, options.config.onStopWithGuests, log);
  return agent;
}

/** Polls a pending stop this often: the agent stops once its last guest is gone. */
const PENDING_STOP_POLL_MS = 1_000;

/**
 * SIGTERM/SIGINT: stop, unless guests live in this agent (sim, qemu: they would die with it) and the
 * configuration says refuse: then a pending stop, carried out once none is left.
 */
function onStopSignals(agent: RunningAgent, onStopWithGuests: 'refuse' | 'drop', log: Logger): void {
  // Blocked too: a post-copy guest whose source died, of which this host holds the only live half.
  const living = () => agent.driver.listGuests().filter((g) => g.state === 'running' || g.state === 'blocked' || g.state === 'suspended').map((g) => g.id);
  let pending: ReturnType<typeof setInterval> | null = null;
  const stop = (signal: string) => {
    if (pending !== null) clearInterval(pending);
    void agent.shutdown(signal).then(() => process.exit(0));
  };
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      const guests = living();
      if (guests.length === 0) return stop(signal);
      if (onStopWithGuests === 'drop') {
        for (const id of guests) log.error({ signal, guestId: id }, `stopping the agent destroys this guest (onStopWithGuests: drop; the ${agent.driver.name} driver ends its guests with the agent)`);
        return stop(signal);
      }
      log.error(
        { signal, guests },
        `refusing to stop: ${guests.length} guest(s) live in this agent process and would be destroyed (the ${agent.driver.name} driver ends its guests with the agent). Migrate them away or stop them: the agent stops by itself once none is left. onStopWithGuests: drop stops at once and destroys them`,
      );
      pending ??= setInterval(() => {
        if (living().length === 0) {
          log.info({ signal }, 'no guest left: carrying out the pending stop');
          stop(signal);
        }
      }, PENDING_STOP_POLL_MS);
    });
  }
}

/** The daemon's command, with its action: `vmmigrate source-agent ...` and the role's own main. */
export function agentCommand(role: AgentRole): Command {
  return agentOptionsCommand(role).action(async (opts: Record<string, unknown>) => {
    await runAgent(role, opts);
  });
}

/** `node dist/source-agent/main.js ...`: the same as `vmmigrate source-agent ...`. */
export async function agentMain(role: AgentRole, argv = process.argv): Promise<void> {
  await agentCommand(role).parseAsync(argv);
}
