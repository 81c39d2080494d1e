// The processes of one bench run (a migration, or a cell's estimate): fresh source and target
// agent processes, the link emulator between them (none for 'direct'), a Control v2 client of the
// source; all stopped together, and SIGKILLed on an interrupt (killLiveChildren).

import { type ChildProcess, execFileSync } from 'node:child_process';
import { type AgentProcess, startAgentProcess, stopAgentProcess } from '../cli/agent-process.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';
import type { LinkStats } from '../shared/transport/link.js';
import { type LinkHandle, startLinkInProcess, startLinkProcess } from './link-process.js';
import type { RunSpec } from './run-record.js';

/** Agent flags of every run: quiet logs (they share stderr with the progress bar), room for 4 GiB guests. */
export const AGENT_ARGS = ['--log-level', 'error', '--memory-mib', '16384'];

/**
 * BENCH_AGENT_NODE_ARGS: extra Node.js flags for the agents of every run, `{role}` replaced by
 * `source` or `target` (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof/{role}" to profile each side).
 */
export function agentNodeArgs(role: 'source' | 'target'): string[] {
  return envWords('BENCH_AGENT_NODE_ARGS', role);
}

/** AGENT_ARGS, then BENCH_AGENT_ARGS (agent flags, `{role}` replaced; e.g. "--log-level debug --chunk-window 64"). */
export function agentArgs(role: 'source' | 'target'): string[] {
  return [...AGENT_ARGS, ...envWords('BENCH_AGENT_ARGS', role)];
}

function envWords(name: string, role: string): string[] {
  return (process.env[name] ?? '')
    .split(' ')
    .filter((a) => a !== '')
    .map((a) => a.replaceAll('{role}', role));
}

/** Child processes of the runs in progress, for killLiveChildren on an interrupt. */
const liveChildren = new Set<ChildProcess>();

/** SIGKILLs every agent and link process a run has started and not yet stopped. */
export function killLiveChildren(): void {
  for (const c of liveChildren) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  liveChildren.clear();
}

export type Control = ReturnType<typeof makeClient<typeof controlServiceV2>>;

/** util-linux's taskset, which pin() runs (present on every Debian). */
export const TASKSET = '/usr/bin/taskset';

/** What a started run talks to: its source agent, the target's address as the source dials it, the source's Control client. */
export interface StartedRun {
  source: AgentProcess;
  target: AgentProcess;
  targetAddress: string;
  control: Control;
}

export class RunProcesses {
  private readonly agents: AgentProcess[] = [];
  private link: LinkHandle | null = null;
  private control: Control | null = null;

  /** Starts both agents, the link for `spec` and the Control client; what started is stopped by stop(), even if this fails. */
  async start(spec: RunSpec, extraArgs: string[] = []): Promise<StartedRun> {
    const [source, target] = await Promise.all([
      startAgentProcess('source', [...agentArgs('source'), ...extraArgs], agentNodeArgs('source')),
      startAgentProcess('target', [...agentArgs('target'), ...extraArgs], agentNodeArgs('target')),
    ]);
    this.agents.push(source, target);
    liveChildren.add(source.child).add(target.child);
    this.link = spec.link === 'direct' ? null : spec.linkMode === 'child' ? await startLinkProcess(target.address, spec.link) : await startLinkInProcess(target.address, spec.link);
    if (this.link?.child) liveChildren.add(this.link.child);
    this.control = makeClient(controlServiceV2, 'Control', source.address, grpc.credentials.createInsecure());
    return { source, target, targetAddress: this.link?.address ?? target.address, control: this.control };
  }

  /**
   * Keeps a process of the run, every thread of it and the threads it makes later, on `cpus` (a
   * taskset list such as '0' or '1-3'): two agents on cores of their own stand for two hosts. The
   * harness is this process, which asks the agents.
   */
  pin(which: 'source' | 'target' | 'link' | 'harness', cpus: string): void {
    const pids = { source: this.agents[0]?.child.pid, target: this.agents[1]?.child.pid, link: this.link?.child?.pid, harness: process.pid };
    const pid = pids[which];
    if (pid === undefined) throw new Error(`no ${which} process to pin`);
    execFileSync(TASKSET, ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' });
  }

  /** SIGKILLs one agent (a crash); stop() then finds it gone. */
  kill(role: 'source' | 'target'): void {
    this.agents[role === 'source' ? 0 : 1]?.child.kill('SIGKILL');
  }

  /** Stops everything started; returns the link's statistics (null without a link, or if it failed to say). */
  async stop(): Promise<LinkStats | null> {
    this.control?.close();
    const link = this.link;
    const linkStats = link === null ? null : await link.close().catch(() => null);
    // The guests first: an agent stopped with a guest running says so at level error, by design.
    await Promise.all(this.agents.map((a) => stopGuests(a)));
    await Promise.all(this.agents.map((a) => stopAgentProcess(a)));
    for (const a of this.agents) liveChildren.delete(a.child);
    if (link?.child) liveChildren.delete(link.child);
    return linkStats;
  }
}

/** Stops every guest of a live agent, best effort (a crashed agent, or a guest gone meanwhile, is no error here). */
async function stopGuests(agent: AgentProcess): Promise<void> {
  if (agent.child.exitCode !== null || agent.child.signalCode !== null) return;
  const client = makeClient(controlServiceV2, 'Control', agent.address, grpc.credentials.createInsecure());
  try {
    const { guests } = await unary(client, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 5_000, 'listing the guests');
    await Promise.all((guests ?? []).map((g) => unary(client, controlServiceV2.stopGuest, pb2.StopGuestRequest.create({ id: g.id }), 10_000, `stopping guest ${g.id}`).catch(() => {})));
  } catch {
    // The agent stops anyway.
  } finally {
    client.close();
  }
}
