// The link emulator (shared/transport/link.ts) in a process of its own, for the bench harness's
// `--link-process child` mode: `node dist/bench/link-process.js <target host:port> <profile>`.
// Prints {"listening":"127.0.0.1:port"} on stdout once it listens; on SIGTERM (or when its stdin
// closes, so it never outlives the harness) prints {"stats":{...}} and exits.
//
// Why it exists: in the default mode the emulator shares the harness's event loop (and the
// harness's one core with the GetJob sampling and the progress bar); in a child process it gets a
// scheduler of its own. `startLinkProcess` below is what the harness calls.

import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { LINK_PROFILE_NAMES, LinkEmulator, type LinkProfileName, type LinkStats } from '../shared/transport/link.js';

export interface LinkHandle {
  /** Where the source agent dials (it relays to the target agent). */
  readonly address: string;
  /** Closes the link; resolves with its counters. */
  close(): Promise<LinkStats | null>;
  /** Its process, when it runs in one. */
  readonly child?: ChildProcess;
}

/** A LinkEmulator in this process. */
export async function startLinkInProcess(target: string, profile: LinkProfileName): Promise<LinkHandle> {
  const link = new LinkEmulator({ listen: '127.0.0.1:0', target, profile });
  const address = await link.start();
  return {
    address,
    close: async () => {
      const stats = link.stats();
      await link.close();
      return stats;
    },
  };
}

/** A LinkEmulator in a child process (this file run as a script). */
export async function startLinkProcess(target: string, profile: LinkProfileName, startTimeoutMs = 10_000): Promise<LinkHandle> {
  const script = fileURLToPath(import.meta.url);
  const child: ChildProcess = spawn(process.execPath, [script, target, profile], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  let resolveStats: (s: LinkStats | null) => void = () => undefined;
  const statsPromise = new Promise<LinkStats | null>((resolve) => (resolveStats = resolve));
  const address = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('link process did not start listening in time'));
    }, startTimeoutMs);
    lines.on('line', (line) => {
      let parsed: { listening?: string; stats?: LinkStats } = {};
      try {
        parsed = JSON.parse(line) as typeof parsed;
      } catch {
        return;
      }
      if (parsed.listening) {
        clearTimeout(timer);
        resolve(parsed.listening);
      }
      if (parsed.stats) resolveStats(parsed.stats);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolveStats(null);
      reject(new Error(`link process exited before listening (code ${code}, signal ${signal})`));
    });
  });
  return {
    address,
    child,
    close: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return null;
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      const stats = await Promise.race([statsPromise, exited.then(() => null)]);
      await exited;
      clearTimeout(killer);
      return stats;
    },
  };
}

async function main(): Promise<void> {
  const [target, profile] = process.argv.slice(2);
  if (!target || !(LINK_PROFILE_NAMES as string[]).includes(profile)) {
    console.error(`usage: node link-process.js <target host:port> <${LINK_PROFILE_NAMES.join('|')}>`);
    process.exit(2);
  }
  const link = new LinkEmulator({ listen: '127.0.0.1:0', target, profile: profile as LinkProfileName });
  const address = await link.start();
  process.stdout.write(`${JSON.stringify({ listening: address })}\n`);
  let closing = false;
  const stop = async () => {
    if (closing) return;
    closing = true;
    const stats = link.stats();
    await link.close();
    process.stdout.write(`${JSON.stringify({ stats })}\n`, () => process.exit(0));
  };
  process.on('SIGTERM', () => void stop());
  process.stdin.on('end', () => void stop());
  process.stdin.on('error', () => void stop());
  process.stdin.resume();
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
