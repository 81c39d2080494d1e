// Raw TCP between two processes on this machine: the baseline of the data-plane benchmark.
// `node dist/bench/raw-tcp.js sink` listens on loopback, prints {"listening":...}, reads one
// connection to its end and prints {"bytes":N,"ms":T} (T from the connection's first byte to its
// end, on the sink's clock). `node dist/bench/raw-tcp.js source <host:port> <bytes>` connects and
// writes that many bytes (1 MiB writes of one random buffer, honouring backpressure), then ends.
// The sink also reports its CPU time over the same span (cpuMs).
// Both are child processes of the harness, so neither shares a core's event loop with it.

import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import * as net from 'node:net';
import { randomFillSync } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export interface RawTcpResult {
  bytes: number;
  ms: number;
  bytesPerSec: number;
  /** CPU time (user + system) of the receiving process over the same span. */
  sinkCpuMs?: number;
}

function jsonLines(child: ChildProcess, onLine: (value: Record<string, unknown>) => void): void {
  createInterface({ input: child.stdout! }).on('line', (line) => {
    try {
      onLine(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // Not ours.
    }
  });
}

/** Sends `bytes` from one child process to another over loopback TCP; resolves with the sink's timing. */
export function measureRawTcp(bytes: number, timeoutMs = 120_000): Promise<RawTcpResult> {
  return measureBetweenProcesses(fileURLToPath(import.meta.url), bytes, timeoutMs);
}

/**
 * Runs `node script sink` and, once it prints where it listens, `node script source <address>
 * <bytes>`; resolves with the sink's {"bytes","ms","cpuMs"} line. Both get `env` added to this
 * process's environment.
 */
export async function measureBetweenProcesses(script: string, bytes: number, timeoutMs: number, env: NodeJS.ProcessEnv = {}): Promise<RawTcpResult> {
  const childEnv = { ...process.env, ...env };
  const sink = spawn(process.execPath, [script, 'sink'], { stdio: ['ignore', 'pipe', 'inherit'], env: childEnv });
  let source: ChildProcess | null = null;
  const timer = setTimeout(() => {
    sink.kill('SIGKILL');
    source?.kill('SIGKILL');
  }, timeoutMs);
  try {
    const result = await new Promise<RawTcpResult>((resolve, reject) => {
      jsonLines(sink, (v) => {
        if (typeof v.listening === 'string') {
          source = spawn(process.execPath, [script, 'source', v.listening, String(bytes)], { stdio: ['ignore', 'ignore', 'inherit'], env: childEnv });
        } else if (typeof v.bytes === 'number' && typeof v.ms === 'number') {
          resolve({ bytes: v.bytes, ms: v.ms, bytesPerSec: v.bytes / (v.ms / 1000), sinkCpuMs: typeof v.cpuMs === 'number' ? v.cpuMs : undefined });
        }
      });
      sink.once('exit', (code, signal) => reject(new Error(`raw TCP sink exited without a result (code ${code}, signal ${signal})`)));
    });
    return result;
  } finally {
    clearTimeout(timer);
    const procs: ChildProcess[] = [sink as ChildProcess, source as ChildProcess | null].filter((p): p is ChildProcess => p !== null && p.exitCode === null && p.signalCode === null);
    await Promise.all(
      procs.map(async (p) => {
        const exited = once(p, 'exit');
        p.kill('SIGTERM');
        await exited;
      }),
    );
  }
}

function sinkMain(): void {
  const server = net.createServer((socket) => {
    server.close();
    let bytes = 0;
    let firstMs = 0;
    let firstCpu = process.cpuUsage();
    socket.on('data', (b: Buffer) => {
      if (bytes === 0) {
        firstMs = performance.now();
        firstCpu = process.cpuUsage();
      }
      bytes += b.length;
    });
    socket.on('end', () => {
      const ms = performance.now() - firstMs;
      const cpu = process.cpuUsage(firstCpu);
      process.stdout.write(`${JSON.stringify({ bytes, ms, cpuMs: (cpu.user + cpu.system) / 1000 })}\n`, () => process.exit(0));
    });
    socket.on('error', (e) => {
      console.error(`raw TCP sink: ${e.message}`);
      process.exit(1);
    });
  });
  server.listen(0, '127.0.0.1', () => {
    const a = server.address() as net.AddressInfo;
    process.stdout.write(`${JSON.stringify({ listening: `127.0.0.1:${a.port}` })}\n`);
  });
}

function sourceMain(address: string, total: number): void {
  const i = address.lastIndexOf(':');
  const buffer = randomFillSync(Buffer.allocUnsafe(1024 * 1024));
  const socket = net.connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)) }, () => {
    let sent = 0;
    const pump = () => {
      while (sent < total) {
        const n = Math.min(buffer.length, total - sent);
        sent += n;
        if (!socket.write(n === buffer.length ? buffer : buffer.subarray(0, n))) {
          socket.once('drain', pump);
          return;
        }
      }
      socket.end();
    };
    pump();
  });
  socket.on('error', (e) => {
    console.error(`raw TCP source: ${e.message}`);
    process.exit(1);
  });
  socket.on('close', () => process.exit(0));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [role, address, bytes] = process.argv.slice(2);
  if (role === 'sink') sinkMain();
  else if (role === 'source' && address && Number(bytes) > 0) sourceMain(address, Number(bytes));
  else {
    console.error('usage: node raw-tcp.js sink | source <host:port> <bytes>');
    process.exit(2);
  }
}
