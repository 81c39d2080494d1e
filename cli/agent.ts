// An agent process: one gRPC server offering the Control service (guests, jobs) and the Migration
// service (incoming guests), over one `sim` host. Every agent can play both roles: a guest that
// arrived here can later be migrated onward or back. `source-agent` and `target-agent` are the
// same daemon under two names, with different default ports.

import { Command, Option } from 'commander';
import { pino, destination, type Logger } from 'pino';
import { ControlService, CONTROL_DEFAULTS, type ControlOptions } from '../source-agent/control-service.js';
import { SOURCE_DEFAULTS } from '../source-agent/migration.js';
import { MigrationService, TARGET_DEFAULTS, type TargetOptions } from '../target-agent/migration-service.js';
import { SimDriver } from '../shared/driver/sim/driver.js';
import { checkUnitMs, UNIT_MS_DEFAULT } from '../shared/driver/sim/config.js';
import { InvalidArgumentError } from '../shared/errors.js';
import { controlService, createServer, grpc, migrationService, widenServerSessions } from '../shared/transport/grpc.js';

export interface AgentOptions {
  listen: string;
  memoryBytesTotal: number;
  vcpusTotal: number;
  unitMs: number;
  control: ControlOptions;
  target: TargetOptions;
  logLevel: string;
}

export interface RunningAgent {
  readonly address: string;
  readonly driver: SimDriver;
  readonly control: ControlService;
  readonly migration: MigrationService;
  readonly log: Logger;
  /** Cancels migrations not yet committed (guests stay here), drops incoming ones, stops serving. */
  shutdown(reason: string): Promise<void>;
}

export async function startAgent(options: AgentOptions, log: Logger = pino({ level: options.logLevel }, destination(2))): Promise<RunningAgent> {
  checkUnitMs(options.unitMs);
  const driver = new SimDriver({ memoryBytesTotal: options.memoryBytesTotal, vcpusTotal: options.vcpusTotal, unitMsDefault: options.unitMs });
  const migration = new MigrationService(driver, options.target, log);
  const control = new ControlService(driver, SOURCE_DEFAULTS, options.control, log);
  const server = createServer();
  server.addService(migrationService, migration.handlers());
  server.addService(controlService, control.handlers());
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(options.listen, grpc.ServerCredentials.createInsecure(), (error, p) => (error ? reject(error) : resolve(p))),
  );
  widenServerSessions(server);
  const host = options.listen.slice(0, options.listen.lastIndexOf(':'));
  const address = `${host}:${port}`;
  log.info({ address, memoryBytesTotal: options.memoryBytesTotal }, 'agent listening');
  let stopping: Promise<void> | null = null;
  return {
    address,
    driver,
    control,
    migration,
    log,
    shutdown(reason: string) {
      stopping ??= (async () => {
        log.info({ reason }, 'agent shutting down');
        await control.shutdown(reason);
        migration.shutdown(reason);
        await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
        driver.shutdown();
      })();
      return stopping;
    },
  };
}

function positiveInt(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError(`${name} ${value}: expected a positive integer`);
    return n;
  };
}

/** The daemon's command line; `role` only sets the default port. */
export function agentCommand(role: 'source' | 'target'): Command {
  const defaultPort = role === 'source' ? 7400 : 7401;
  return new Command(`${role}-agent`)
    .description(`run the ${role} agent: Control and Migration gRPC services over a sim host`)
    .option('--listen <host:port>', 'address to serve on (loopback unless you mean it)', `127.0.0.1:${defaultPort}`)
    .option('--memory-mib <n>', 'memory this host offers to guests, MiB', positiveInt('--memory-mib'), 16384)
    .option('--vcpus <n>', 'vCPUs this host offers', positiveInt('--vcpus'), 16)
    .option('--unit-ms <n>', 'default log unit length, ms (1-100)', positiveInt('--unit-ms'), UNIT_MS_DEFAULT)
    .option('--downtime-limit-ms <n>', 'default downtime limit of outgoing migrations', positiveInt('--downtime-limit-ms'), CONTROL_DEFAULTS.downtimeLimitMsDefault)
    .option('--max-duration-ms <n>', 'default maximum duration of outgoing migrations', positiveInt('--max-duration-ms'), CONTROL_DEFAULTS.maxDurationMsDefault)
    .option('--chunk-window <n>', 'checkpoint chunks an incoming migration may have in flight', positiveInt('--chunk-window'), TARGET_DEFAULTS.chunkWindow)
    .option('--unit-window <n>', 'log units an incoming migration may have in flight', positiveInt('--unit-window'), TARGET_DEFAULTS.unitWindow)
    .option('--unit-window-mib <n>', 'log bytes an incoming migration may have in flight, MiB', positiveInt('--unit-window-mib'), TARGET_DEFAULTS.unitWindowBytes / 2 ** 20)
    .option('--activation-hook <command...>', 'command run (sh -c) after an incoming guest resumes here; repeatable')
    .option('--allow-fault-injection', 'honour fault injection in migration requests (tests only)', false)
    .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error']).default('info'))
    .action(async (opts: Record<string, unknown>) => {
      const agent = await startAgent(agentOptionsFrom(opts));
      // Tell a parent process where we listen (port 0 picks one).
      console.log(JSON.stringify({ listening: agent.address }));
      for (const signal of ['SIGTERM', 'SIGINT'] as const) {
        process.once(signal, () => {
          void agent.shutdown(signal).then(() => process.exit(0));
        });
      }
    });
}

export function agentOptionsFrom(opts: Record<string, unknown>): AgentOptions {
  return {
    listen: String(opts.listen),
    memoryBytesTotal: Number(opts.memoryMib) * 2 ** 20,
    vcpusTotal: Number(opts.vcpus),
    unitMs: Number(opts.unitMs),
    control: {
      ...CONTROL_DEFAULTS,
      downtimeLimitMsDefault: Number(opts.downtimeLimitMs),
      maxDurationMsDefault: Number(opts.maxDurationMs),
      allowFaultInjection: Boolean(opts.allowFaultInjection),
    },
    target: {
      ...TARGET_DEFAULTS,
      chunkWindow: Number(opts.chunkWindow),
      unitWindow: Number(opts.unitWindow),
      unitWindowBytes: Number(opts.unitWindowMib) * 2 ** 20,
      activationHooks: (opts.activationHook as string[] | undefined) ?? [],
    },
    logLevel: String(opts.logLevel),
  };
}

/** Runs the daemon until SIGTERM/SIGINT, then shuts down safely. */
export async function agentMain(role: 'source' | 'target', argv = process.argv): Promise<void> {
  // The command's action runs the daemon (parsing must not start a second one here).
  await agentCommand(role).parseAsync(argv);
}
