// The operator CLI run as a child process (`node dist/cli/vmmigrate.js ...`) with a clean
// environment, bounded in time and killed when the test ends, and a gRPC server on 127.0.0.1:0
// standing in for an agent.

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { createServer, grpc } from '../../shared/transport/grpc.js';

const CLI = fileURLToPath(new URL('../../cli/vmmigrate.js', import.meta.url));
/** Bound on one CLI run; none of them should come near it. */
const RUN_TIMEOUT_MS = 60_000;

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI with `args` to its end, in an environment without the VMMIGRATE_* settings of whoever runs the tests. */
export function runCli(t: Test, args: string[]): Promise<CliRun> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('VMMIGRATE_')) env[k] = v;
  const child = spawn(process.execPath, ['--enable-source-maps', CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  t.teardown(() => void child.kill('SIGKILL'));
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), RUN_TIMEOUT_MS);
  return new Promise((resolve) =>
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    }),
  );
}

/** A gRPC server on 127.0.0.1:0 (plaintext) with `setup`'s services, shut down when `t` ends. */
export async function startServer(t: Test, setup: (server: grpc.Server) => void): Promise<string> {
  const server = createServer();
  setup(server);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, p) => (error ? reject(error) : resolve(p))));
  t.teardown(() => server.forceShutdown());
  return `127.0.0.1:${port}`;
}
