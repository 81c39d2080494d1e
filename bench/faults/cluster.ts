// The processes of one fault case: a source and a target agent as child processes, each with its
// own state dir (decision journal) and log file under the case's directory, and the link emulator
// in this process in front of the target, through which the source reaches it. An agent that was
// killed starts again on its state dir; a restarted target comes back behind the same link address
// (the link is retargeted), as a host that rebooted keeps its name.

import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { agentGlibcTunables } from '../../cli/agent-process.js';
import { controlServiceV2, grpc, makeClient, migrationService } from '../../shared/transport/grpc.js';
import { LinkEmulator, type LinkProfile } from '../../shared/transport/link.js';

export type AgentRole = 'source' | 'target';
export type Control = ReturnType<typeof makeClient<typeof controlServiceV2>>;

export interface AgentExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface AgentHandle {
  readonly role: AgentRole;
  readonly child: ChildProcess;
  readonly address: string;
  readonly exited: Promise<AgentExit>;
}

export interface ClusterOptions {
  /** The agents' --log-level (their logs go to <dir>/<role>.log). */
  logLevel: string;
}

/**
 * The link between the agents: 40 MB/s, so that the checkpoint of a 64 MiB guest lasts most of a
 * second, and a 10 ms round trip, so that the phases made of round trips last long enough to be hit.
 */
export const CLUSTER_LINK: LinkProfile = { bandwidthBytesPerSec: 40_000_000, rttMs: 10 };

/** A reservation no transfer opens is released after this (the agents' default is a minute). */
export const CLUSTER_RESERVATION_TIMEOUT_MS = 3_000;
/** After a matched commit, the wait for the activation's confirmation (default a minute). */
export const CLUSTER_ACTIVATION_TIMEOUT_MS = 2_000;
const AGENT_START_TIMEOUT_MS = 20_000;

/** Agent processes alive in this process's cases, SIGKILLed if this process exits first. */
const liveAgents = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of liveAgents) child.kill('SIGKILL');
});

/** SIGKILLs every agent a case started and has not stopped (an interrupt). */
export function killLiveAgents(): void {
  for (const child of liveAgents) child.kill('SIGKILL');
}

async function spawnAgent(role: AgentRole, dir: string, options: ClusterOptions): Promise<AgentHandle> {
  const main = fileURLToPath(new URL(`../../${role}-agent/main.js`, import.meta.url));
  const args = ['--enable-source-maps', main, '--listen', '127.0.0.1:0', '--insecure-plaintext', '--config', join(dir, 'agent.yaml')];
  args.push('--state-dir', join(dir, `${role}-state`), '--memory-mib', '1024', '--log-level', options.logLevel);
  args.push('--activation-timeout-ms', String(CLUSTER_ACTIVATION_TIMEOUT_MS));
  // SIGTERM is systemctl stop with the sim's guests let go (the default refuses while guests run here).
  args.push('--on-stop-with-guests', 'drop');
  const log = openSync(join(dir, `${role}.log`), 'a');
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', log], env: { ...process.env, GLIBC_TUNABLES: agentGlibcTunables() } });
  } finally {
    closeSync(log);
  }
  liveAgents.add(child);
  const exited = new Promise<AgentExit>((resolve) =>
    child.once('exit', (code, signal) => {
      liveAgents.delete(child);
      resolve({ code, signal });
    }),
  );
  const timer = setTimeout(() => child.kill('SIGKILL'), AGENT_START_TIMEOUT_MS);
  try {
    for await (const line of createInterface({ input: child.stdout! })) {
      const address = listeningAddress(line);
      if (address !== null) {
        child.stdout!.resume();
        return { role, child, address, exited };
      }
    }
  } finally {
    clearTimeout(timer);
  }
  const exit = await exited;
  throw new Error(`${role} agent exited before listening (code ${exit.code}, signal ${exit.signal}); its log: ${join(dir, `${role}.log`)}`);
}

function listeningAddress(line: string): string | null {
  try {
    return (JSON.parse(line) as { listening?: string }).listening ?? null;
  } catch {
    return null;
  }
}

export class FaultCluster {
  private readonly agents = new Map<AgentRole, AgentHandle>();
  private readonly controls = new Map<AgentRole, { address: string; client: Control }>();
  private linkEmulator: LinkEmulator | null = null;
  private viaLink: grpc.Client | null = null;
  /** Starts of each agent after the first. */
  readonly restarts: Record<AgentRole, number> = { source: 0, target: 0 };

  constructor(
    readonly dir: string,
    private readonly options: ClusterOptions,
  ) {}

  async start(): Promise<void> {
    writeFileSync(join(this.dir, 'agent.yaml'), `limits:\n  reservationTimeoutMs: ${CLUSTER_RESERVATION_TIMEOUT_MS}\n`);
    const [source, target] = await Promise.all([spawnAgent('source', this.dir, this.options), spawnAgent('target', this.dir, this.options)]);
    this.agents.set('source', source).set('target', target);
    this.linkEmulator = new LinkEmulator({ listen: '127.0.0.1:0', target: target.address, profile: CLUSTER_LINK });
    await this.linkEmulator.start();
  }

  get link(): LinkEmulator {
    if (this.linkEmulator === null) throw new Error('the cluster has not started');
    return this.linkEmulator;
  }

  /** Where the source dials the target: the link. */
  get targetAddress(): string {
    return this.link.address;
  }

  agent(role: AgentRole): AgentHandle {
    const a = this.agents.get(role);
    if (a === undefined) throw new Error('the cluster has not started');
    return a;
  }

  /** The Control v2 client of the agent now running as `role` (a new one after a restart). */
  control(role: AgentRole): Control {
    const address = this.agent(role).address;
    const known = this.controls.get(role);
    if (known?.address === address) return known.client;
    known?.client.close();
    const client = makeClient(controlServiceV2, 'Control', address, grpc.credentials.createInsecure());
    this.controls.set(role, { address, client });
    return client;
  }

  /** A Migration client through the link, as the source reaches the target. */
  migrationViaLink(): grpc.Client {
    this.viaLink ??= makeClient(migrationService, 'Migration', this.targetAddress, grpc.credentials.createInsecure());
    return this.viaLink;
  }

  /** Sends `signal` and waits for the exit, SIGKILL after `graceMs`; null if it had to be killed. */
  async stop(role: AgentRole, signal: NodeJS.Signals, graceMs: number): Promise<AgentExit | null> {
    const { child, exited } = this.agent(role);
    child.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), graceMs)));
    const exit = await Promise.race([exited, late]);
    clearTimeout(timer);
    if (exit === null) {
      child.kill('SIGKILL');
      await exited;
    }
    return exit;
  }

  /** Starts `role` again on its state dir; a target comes back behind the same link address. */
  async restart(role: AgentRole): Promise<void> {
    const agent = await spawnAgent(role, this.dir, this.options);
    this.agents.set(role, agent);
    this.restarts[role]++;
    if (role === 'target') this.link.retarget(agent.address);
  }

  /** Stops everything: clients, the link, the agents (SIGKILL: the case is over, nothing to save). */
  async close(): Promise<void> {
    for (const { client } of this.controls.values()) client.close();
    this.viaLink?.close();
    await this.linkEmulator?.close();
    await Promise.all(
      [...this.agents.values()].map(async (a) => {
        a.child.kill('SIGKILL');
        await a.exited;
      }),
    );
  }
}
