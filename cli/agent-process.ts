// Starting and stopping agent daemons as child processes (the demo, benchmarks, tests).

import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export interface AgentProcess {
  readonly child: ChildProcess;
  readonly address: string;
  readonly pid: number;
}

/**
 * Starts `source-agent` or `target-agent` listening on an ephemeral loopback port, and resolves
 * with its address once it listens. `extraArgs` are agent flags; `nodeArgs` Node.js flags.
 */
export async function startAgentProcess(role: 'source' | 'target', extraArgs: string[] = [], nodeArgs: string[] = [], startTimeoutMs = 15_000): Promise<AgentProcess> {
  const main = fileURLToPath(new URL(`../${role}-agent/main.js`, import.meta.url));
  // On loopback, plaintext unless the caller brings TLS (a configuration file or TLS flags).
  const security = extraArgs.some((a) => a === '--config' || a.startsWith('--tls-')) ? [] : ['--insecure-plaintext'];
  const child = spawn(process.execPath, [...nodeArgs, '--enable-source-maps', main, '--listen', '127.0.0.1:0', ...security, ...extraArgs], { stdio: ['ignore', 'pipe', 'inherit'] });
  const timer = setTimeout(() => child.kill('SIGKILL'), startTimeoutMs);
  try {
    for await (const line of createInterface({ input: child.stdout! })) {
      let parsed: { listening?: string } = {};
      try {
        parsed = JSON.parse(line) as { listening?: string };
      } catch {
        continue;
      }
      if (parsed.listening) return { child, address: parsed.listening, pid: child.pid! };
    }
  } finally {
    clearTimeout(timer);
  }
  throw new Error(`${role} agent exited before listening (exit code ${child.exitCode}, signal ${child.signalCode})`);
}

/** SIGTERM (the agent aborts what it must and exits), SIGKILL after `graceMs`. */
export async function stopAgentProcess(agent: AgentProcess, graceMs = 10_000): Promise<void> {
  const child = agent.child;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}
