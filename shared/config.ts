// The agent's configuration: a YAML file (deploy/agent.example.yaml documents every field) with
// command-line flags that override it. Everything is validated at start; an invalid value stops
// the agent with a message naming the field (and the flag, when a flag set it).

import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { arbiterConfigSchema } from './arbiter/schema.js';
import { NON_CONVERGENCE_POLICIES } from './convergence.js';
import { UNIT_MS_DEFAULT, UNIT_MS_MAX, UNIT_MS_MIN } from './driver/types.js';
import { findExecutable } from './driver/qemu/args.js';
import { QEMU_DRIVER_DEFAULTS } from './driver/qemu/driver.js';
import { hostOf, isLoopbackHost } from './transport/tls.js';
import { defaultCompressionWorkers } from './pack-pool.js';
import { WINDOW_DEFAULTS } from './protocol.js';
import { POOL_WORKERS_MAX } from './worker-pool.js';
import { parseBandwidth } from './units.js';

/** Largest configuration file read (it is a few hundred bytes normally). */
const CONFIG_BYTES_MAX = 1024 * 1024;

const hostPort = z.string().refine((v) => {
  const colon = v.lastIndexOf(':');
  if (colon <= 0) return false;
  const port = Number(v.slice(colon + 1));
  return Number.isInteger(port) && port >= 0 && port <= 65535;
}, 'expected host:port (port 0 picks a free one)');

const int = (min: number, max: number) => z.number().int().min(min).max(max);

/** A rate in bytes per second: a number, or text such as 1gbit, 100mbit, 125MB/s (0 or 'unlimited': no limit). */
const rate = z.union([z.number().min(0), z.string()]).transform((v, ctx) => {
  if (v === 0 || v === '0' || v === 'unlimited') return 0;
  try {
    return parseBandwidth(String(v));
  } catch (error) {
    ctx.addIssue({ code: 'custom', message: (error as Error).message });
    return z.NEVER;
  }
});

const identities = z.array(z.string().min(1)).max(1000);

/** The qemu driver's section (driver: qemu): what every guest boots, and how its QEMU runs. */
const qemuSchema = z.strictObject({
  /** The QEMU executable: a name looked up on PATH, or a path. */
  binary: z.string().min(1).max(4096).default(QEMU_DRIVER_DEFAULTS.binary),
  /** A kernel to boot (with initrd and append), or else a disk image (disk): exactly one. */
  kernel: z.string().min(1).max(4096).optional(),
  initrd: z.string().min(1).max(4096).optional(),
  /** The kernel's command line; the driver reads the guest's console on the first serial port. */
  append: z.string().max(4096).default('console=ttyS0'),
  disk: z.string().min(1).max(4096).optional(),
  diskFormat: z.enum(['raw', 'qcow2']).default('raw'),
  /** vCPUs of each guest. */
  vcpus: int(1, 256).default(QEMU_DRIVER_DEFAULTS.vcpusPerGuest),
  /** auto: KVM where /dev/kvm is usable, TCG (emulation) elsewhere. */
  accel: z.enum(['auto', 'kvm', 'tcg']).default(QEMU_DRIVER_DEFAULTS.accel),
  /**
   * Where each QEMU's private runtime directory (vmm-qemu-XXXXXX: its QMP and incoming sockets) is
   * made, and removed once that QEMU exited. Unset: the system's temporary directory. Short, as a
   * unix socket path holds at most 107 bytes (this directory, the runtime directory and the socket).
   */
  stateDir: z.string().min(1).max(40).optional(),
  /** Bytes of each guest's serial console the agent keeps. */
  serialTailBytes: int(1024, 16 * 2 ** 20).default(QEMU_DRIVER_DEFAULTS.serialTailBytes),
  /** How long a guest's QEMU has to exit after quit before it is killed. */
  stopGraceMs: int(100, 600_000).default(QEMU_DRIVER_DEFAULTS.stopGraceMs),
  /** Bound on each QMP command's answer, and on QEMU opening its QMP socket. */
  qmpTimeoutMs: int(100, 600_000).default(10_000),
});

export type QemuConfig = z.output<typeof qemuSchema>;

export const agentConfigSchema = z.strictObject({
  /** The hypervisor driver: sim (the built-in deterministic guest) or qemu (QEMU processes, section qemu). */
  driver: z.enum(['sim', 'qemu']).default('sim'),
  qemu: qemuSchema.optional(),
  listen: hostPort.default('127.0.0.1:7400'),
  /** Prometheus metrics over HTTP (plain: keep it on loopback or a management network). */
  metricsListen: hostPort.optional(),
  tls: z
    .strictObject({
      ca: z.string().min(1).optional(),
      cert: z.string().min(1).optional(),
      key: z.string().min(1).optional(),
      /** No TLS at all: refused unless listen is a loopback address. */
      plaintext: z.boolean().default(false),
    })
    .default({ plaintext: false }),
  allow: z
    .strictObject({
      peers: identities.default([]),
      control: identities.default([]),
    })
    .default({ peers: [], control: [] }),
  host: z
    .strictObject({
      memoryMib: int(1, 64 * 1024 * 1024).default(16384),
      vcpus: int(1, 4096).default(16),
      unitMs: int(UNIT_MS_MIN, UNIT_MS_MAX).default(UNIT_MS_DEFAULT),
      /** Where a sim guest's vCPU executes: a thread of its own, or the agent's event loop (inline). */
      vcpu: z.enum(['thread', 'inline']).default('thread'),
      /**
       * A guest's log buffer: sealed units kept for the standby or target that has not taken them
       * (a protection resumes within it after a link loss; past it, the guest would stall, and a
       * protection resyncs instead by the pages that differ). Also bounded at 64 MiB.
       */
      logBufferUnits: int(16, 1_000_000).default(10_000),
    })
    .default({ memoryMib: 16384, vcpus: 16, unitMs: UNIT_MS_DEFAULT, vcpu: 'thread', logBufferUnits: 10_000 }),
  migration: z
    .strictObject({
      downtimeLimitMs: int(1, 600_000).default(300),
      maxBandwidth: rate.default(0),
      maxDurationMs: int(100, 24 * 3600_000).default(600_000),
      nonConvergencePolicy: z.enum(NON_CONVERGENCE_POLICIES).default('abort'),
    })
    .default({ downtimeLimitMs: 300, maxBandwidth: 0, maxDurationMs: 600_000, nonConvergencePolicy: 'abort' }),
  limits: z
    .strictObject({
      jobsMax: int(1, 1_000_000).default(1000),
      chunkWindow: int(1, 1024).default(WINDOW_DEFAULTS.chunks),
      unitWindow: int(1, 1_000_000).default(WINDOW_DEFAULTS.units),
      unitWindowMib: int(1, 4096).default(WINDOW_DEFAULTS.unitBytes / 2 ** 20),
      reservationTimeoutMs: int(1000, 3600_000).default(15_000),
      /**
       * A transfer whose stream broke (link cut or stall) before the commit: how long a source
       * tries to resume it on a new stream, and a target keeps it for that (0: never).
       */
      resumeWindowMs: int(0, 600_000).default(10_000),
      /** After a matched commit, how long the source waits for the activation's confirmation before it asks the target instead (the guest is the target's either way). */
      activationTimeoutMs: int(1000, 3600_000).default(60_000),
      /** An incoming transfer that hears nothing from its source for this long (any stage before the commit) ends, its reservation freed. */
      transferIdleTimeoutMs: int(1000, 3600_000).default(30_000),
      /** Share of the host's memory one peer (certificate identity, or loopback address) may hold in reservations, percent. */
      peerMemoryPercent: int(1, 100).default(50),
      /** Reservations, and transfer streams, one peer may have at once. */
      peerTransfersMax: int(1, 64).default(16),
      /** Worker threads that compress outgoing checkpoint chunks (0: the event loop does). */
      compressionWorkers: int(0, POOL_WORKERS_MAX).default(defaultCompressionWorkers()),
    })
    .default({
      jobsMax: 1000,
      chunkWindow: WINDOW_DEFAULTS.chunks,
      unitWindow: WINDOW_DEFAULTS.units,
      unitWindowMib: WINDOW_DEFAULTS.unitBytes / 2 ** 20,
      reservationTimeoutMs: 15_000,
      resumeWindowMs: 10_000,
      activationTimeoutMs: 60_000,
      transferIdleTimeoutMs: 30_000,
      peerMemoryPercent: 50,
      peerTransfersMax: 16,
      compressionWorkers: defaultCompressionWorkers(),
    }),
  hooks: z
    .strictObject({
      activation: z.array(z.string().min(1)).max(64).default([]),
      timeoutMs: int(100, 3600_000).default(10_000),
    })
    .default({ activation: [], timeoutMs: 10_000 }),
  log: z
    .strictObject({
      level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
    })
    .default({ level: 'info' }),
  /**
   * Where the agent keeps its decision journal (commit decisions, for in-doubt resolution across
   * restarts). Unset: in memory only, and the agent warns at start that decisions do not survive it.
   */
  stateDir: z.string().min(1).max(4096).optional(),
  /**
   * SIGTERM (systemctl stop) while guests live in this agent: the sim driver's guests are part of
   * the agent's process and die with it. refuse: log it, keep running, and stop once no guest is
   * left (migrated away or stopped); drop: stop at once, destroying them (logged, guest by guest).
   */
  onStopWithGuests: z.enum(['refuse', 'drop']).default('refuse'),
  /**
   * Who may run a protected guest: a per-guest lease and epoch on etcd (kind: etcd), so that a
   * standby goes live only once the primary's lease ended, and a primary cut off fences itself.
   * Default kind: none (failover is manual). See shared/arbiter/index.ts and docs/deploy.md.
   */
  arbiter: arbiterConfigSchema,
  /** Honour fault injection in StartMigration requests (tests only). */
  allowFaultInjection: z.boolean().default(false),
});

export type AgentConfig = z.output<typeof agentConfigSchema>;

/** An invalid configuration: `field` is the dotted path of the first bad field. */
export class ConfigError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
    this.name = 'ConfigError';
  }
}

/**
 * Validates a configuration object (from the file, with flag values laid over it). `flagOf` maps
 * a dotted field to the flag that set it, so the message can name the flag too.
 */
export function validateConfig(raw: unknown, source: string, flagOf: Record<string, string> = {}): AgentConfig {
  const result = agentConfigSchema.safeParse(raw ?? {});
  if (!result.success) {
    const issue = result.error.issues[0]!;
    let field = issue.path.join('.');
    let message = issue.message;
    if (issue.code === 'unrecognized_keys') {
      const keys = (issue as { keys: string[] }).keys;
      field = [...issue.path, keys[0]].join('.');
      message = `unknown field${keys.length > 1 ? 's' : ''} ${keys.map((k) => `'${k}'`).join(', ')} (see deploy/agent.example.yaml for the fields)`;
    }
    const flag = flagOf[field] ? ` (set by ${flagOf[field]})` : '';
    throw new ConfigError(field || '(top level)', `invalid configuration in ${source}: ${field || 'the document'}${flag}: ${message}`);
  }
  const config = result.data;
  checkTransportSecurity(config, source);
  if (config.driver === 'qemu') checkQemu(config.qemu, source, flagOf);
  return config;
}

/**
 * The qemu section, as far as it can be checked before a guest starts: a kernel or a disk (one of
 * them), files that can be read, and a QEMU executable that can be run.
 */
function checkQemu(qemu: QemuConfig | undefined, source: string, flagOf: Record<string, string>): void {
  const fail = (field: string, message: string): never => {
    throw new ConfigError(field, `invalid configuration in ${source}: ${field}${flagOf[field] ? ` (set by ${flagOf[field]})` : ''}: ${message}`);
  };
  if (qemu === undefined) return fail('qemu', 'driver qemu needs a qemu section saying what guests boot (qemu.kernel, or qemu.disk; see deploy/agent.example.yaml)');
  if ((qemu.kernel === undefined) === (qemu.disk === undefined)) fail('qemu.kernel', 'set exactly one of qemu.kernel (with qemu.initrd and qemu.append) and qemu.disk');
  if (qemu.initrd !== undefined && qemu.kernel === undefined) fail('qemu.initrd', 'an initrd goes with qemu.kernel, and there is none');
  // QEMU reads these when a guest boots: each must be a regular file this agent can read (a
  // directory passes a plain access check, and QEMU then exits at once on it).
  for (const field of ['kernel', 'initrd', 'disk'] as const) {
    const path = qemu[field];
    if (path === undefined) continue;
    const fault = unreadableFile(path);
    if (fault !== null) fail(`qemu.${field}`, `${path} ${fault}: qemu.${field} names the file QEMU boots`);
  }
  if (findExecutable(qemu.binary) === null) fail('qemu.binary', `no executable ${qemu.binary}${qemu.binary.includes('/') ? '' : ' on PATH'} (Debian: apt-get install --no-install-recommends qemu-system-x86)`);
}

/** Why `path` is not a regular file this process can read ('is a directory', ...), or null when it is one. */
export function unreadableFile(path: string): string | null {
  let stats;
  try {
    stats = statSync(path);
    accessSync(path, constants.R_OK);
  } catch (error) {
    return `cannot be read (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`;
  }
  if (stats.isDirectory()) return 'is a directory, not a file';
  if (!stats.isFile()) return 'is not a regular file';
  return null;
}

/** TLS or explicit plaintext, and plaintext only on loopback. */
function checkTransportSecurity(config: AgentConfig, source: string): void {
  const { tls } = config;
  const fail = (field: string, message: string) => {
    throw new ConfigError(field, `invalid configuration in ${source}: ${field}: ${message}`);
  };
  if (tls.plaintext) {
    if (tls.ca || tls.cert || tls.key) fail('tls.plaintext', 'plaintext is set together with TLS files; choose one');
    if (!isLoopbackHost(hostOf(config.listen))) fail('tls.plaintext', `plaintext is allowed only on a loopback address, and listen is ${config.listen}; configure tls.ca, tls.cert and tls.key`);
    return;
  }
  for (const field of ['ca', 'cert', 'key'] as const) {
    if (!tls[field]) fail(`tls.${field}`, 'missing: mutual TLS needs tls.ca, tls.cert and tls.key (or tls.plaintext: true, loopback only; scripts/gen-test-certs.sh makes a test CA)');
  }
  if (config.allow.peers.length === 0) fail('allow.peers', "empty: list the identities (certificate CN or DNS/URI names) of the agents this one exchanges guests with, or '*' for any certificate tls.ca issued");
  if (config.allow.control.length === 0) fail('allow.control', "empty: list the identities of the Control API's clients (orchestrator, administrators), or '*' for any certificate tls.ca issued");
}

/** Reads and parses a YAML configuration file (not yet validated). */
export function readConfigFile(path: string): unknown {
  let text: string;
  try {
    const bytes = readFileSync(path);
    if (bytes.length > CONFIG_BYTES_MAX) throw new Error(`${bytes.length} bytes, more than ${CONFIG_BYTES_MAX}`);
    text = bytes.toString('utf8');
  } catch (error) {
    throw new ConfigError('(file)', `cannot read the configuration file ${path}: ${(error as Error).message}`);
  }
  try {
    return parseYaml(text, { maxAliasCount: 100 }) ?? {};
  } catch (error) {
    throw new ConfigError('(file)', `the configuration file ${path} is not valid YAML: ${(error as Error).message}`);
  }
}

/** Sets `value` at a dotted path in a plain object, creating the objects on the way. */
export function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.');
  let node = target;
  for (const part of parts.slice(0, -1)) {
    const next = node[part];
    if (next === undefined || next === null || typeof next !== 'object' || Array.isArray(next)) node[part] = {};
    node = node[part] as Record<string, unknown>;
  }
  node[parts.at(-1)!] = value;
}
