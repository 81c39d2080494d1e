// Starting and stopping agent daemons as child processes (the demo, benchmarks, tests).

import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/**
 * glibc malloc settings of every agent process (the systemd units in deploy/ set the same; see
 * docs/deploy.md, "Memory allocator"). With glibc's defaults, memory freed at the top of the heap
 * goes back to the kernel at once and larger buffers get a mapping of their own, so nearly every
 * buffer of the data plane (each HTTP/2 frame Node reads, each gRPC message) lands on fresh
 * memory and pays a page fault per 4 KiB: 11-20 us each on the VM the benchmarks ran on, where a
 * bare node:http2 receiver spent 2.0-2.6 s of CPU per GiB with glibc's defaults and 0.5 s with
 * these settings. Buffers below 32 MiB (every message: MESSAGE_BYTES_MAX is 20 MiB) come from the
 * heap, and up to 64 MiB freed at its top is kept for reuse. Guest memory (64 MiB segments) keeps
 * mappings of its own, returned to the kernel when a guest is discarded. An explicit
 * GLIBC_TUNABLES in the environment wins (an empty one restores glibc's defaults).
 */
export const AGENT_GLIBC_TUNABLES = 'glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864';

/** GLIBC_TUNABLES the agents get: this process's, if set (even empty), else AGENT_GLIBC_TUNABLES. */
export function agentGlibcTunables(): string {
  return process.env.GLIBC_TUNABLES ?? AGENT_GLIBC_TUNABLES;
}

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
  // The demo and the benchmarks stop their agents with guests in them: on purpose.
  if (!extraArgs.includes('--on-stop-with-guests')) security.push('--on-stop-with-guests', 'drop');
  const env = { ...process.env, GLIBC_TUNABLES: agentGlibcTunables() };
  const child = spawn(process.execPath, [...nodeArgs, '--enable-source-maps', main, '--listen', '127.0.0.1:0', ...security, ...extraArgs], { stdio: ['ignore', 'pipe', 'inherit'], env });
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
