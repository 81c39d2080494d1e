// A private etcd for tests and benchmarks: one member on 127.0.0.1 with free ports and a
// temporary data directory, fast elections (a 10 ms heartbeat, 100 ms election timeout) so that
// leases as short as 1 s are granted as asked, started and waited for until healthy. `stop` ends
// the process (SIGTERM, SIGKILL after 5 s) and removes the directory; every etcd started here is
// killed and its directory removed when this process exits, even after a failure.
// Needs Debian's etcd-server (the `etcd` executable); see debian.ts for the skip.

import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { get } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { findExecutable } from './debian.js';

export const ETCD_PACKAGE = 'etcd-server';
export const ETCD_EXECUTABLE = 'etcd';
/** Bound on an etcd start (it is healthy within a second on loopback). */
const START_TIMEOUT_MS = 15_000;
/** Bound on a stop by SIGTERM before SIGKILL. */
const STOP_TIMEOUT_MS = 5_000;
/** Bytes of etcd's stderr kept for an error message. */
const STDERR_BYTES_MAX = 8192;

export interface EtcdServer {
  /** The client URL, http://127.0.0.1:port. */
  readonly endpoint: string;
  readonly pid: number;
  /** SIGSTOP: etcd answers nothing (connections stay open) until `resume`. Its leases keep aging. */
  pause(): void;
  /** SIGCONT. */
  resume(): void;
  /** Ends etcd and removes its data directory. Idempotent. */
  stop(): Promise<void>;
}

const live = new Map<ChildProcess, string>();
let exitHookSet = false;

/** Kills every etcd still running and removes its directory: the process is ending. */
function killAllAtExit(): void {
  for (const [child, dir] of live) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
  live.clear();
}

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function healthy(endpoint: string): Promise<boolean> {
  return new Promise((resolve) => {
    const request = get(`${endpoint}/health`, { timeout: 1000 }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve(response.statusCode === 200 && body.includes('"health":"true"')));
    });
    request.on('error', () => resolve(false));
    request.on('timeout', () => request.destroy());
  });
}

/** Starts one etcd member; rejects (having stopped it) if it is not healthy within 15 s. */
export async function startEtcd(): Promise<EtcdServer> {
  const executable = findExecutable(ETCD_EXECUTABLE);
  if (executable === null) throw new Error(`no ${ETCD_EXECUTABLE} executable: apt-get install ${ETCD_PACKAGE}`);
  if (!exitHookSet) {
    process.on('exit', killAllAtExit);
    exitHookSet = true;
  }
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'vmm-etcd-'));
  const endpoint = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const args = [
    '--name', 'test', '--data-dir', dir,
    '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint,
    '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `test=${peer}`,
    '--heartbeat-interval', '10', '--election-timeout', '100',
    '--logger', 'zap', '--log-level', 'error',
  ];
  const env = { ...process.env, ...(process.arch === 'arm64' ? { ETCD_UNSUPPORTED_ARCH: 'arm64' } : {}) };
  const child = spawn(executable, args, { stdio: ['ignore', 'ignore', 'pipe'], env });
  live.set(child, dir);
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-STDERR_BYTES_MAX)));
  const exited = once(child, 'exit');
  let stopped: Promise<void> | null = null;
  const server: EtcdServer = {
    endpoint,
    pid: child.pid!,
    pause: () => void child.kill('SIGSTOP'),
    resume: () => void child.kill('SIGCONT'),
    stop: () => (stopped ??= stopChild(child, dir, exited)),
  };
  const startedAt = Date.now();
  while (!(await healthy(endpoint))) {
    if (child.exitCode !== null || child.signalCode !== null || Date.now() - startedAt > START_TIMEOUT_MS) {
      await server.stop();
      throw new Error(`etcd on ${endpoint} did not become healthy (exit ${child.exitCode ?? child.signalCode ?? 'none'}): ${stderr.trim().slice(-2000)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return server;
}

async function stopChild(child: ChildProcess, dir: string, exited: Promise<unknown>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGCONT'); // a paused etcd acts on SIGTERM only once continued
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
  }
  live.delete(child);
  rmSync(dir, { recursive: true, force: true });
}

/** Starts etcd for test `t` and stops it when `t` ends, whether it passed or not. */
export async function startEtcdFor(t: Test): Promise<EtcdServer> {
  const server = await startEtcd();
  t.teardown(() => server.stop());
  return server;
}
