// Raw TCP between two processes on this machine: the baseline of the data-plane benchmark.
// `node dist/bench/raw-tcp.js sink` listens on loopback, prints {"listening":...}, reads one
// connection to its end and prints {"bytes":N,"ms":T} (T from the connection's first byte to its
// end, on the sink's clock). `node dist/bench/raw-tcp.js source <host:port> <bytes>` connects and
// writes that many bytes (1 MiB writes of one random buffer, honouring backpressure), then ends.
// The sink also reports its CPU time over the same span (cpuMs).
// Both are child processes of the harness, so neither shares a core's event loop with it.

import { type ChildProcess, spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { type EventEmitter, once } from 'node:events';
import * as net from 'node:net';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { MIB_BYTES } from './format.js';

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

// ---------------------------------------------------------------------------------------------
// The two roles, shared with raw-http2.ts: a sink that counts what it reads, a source that writes.

/** Bytes the source writes at a time: one random buffer, written over and over. */
export const SOURCE_WRITE_BYTES = MIB_BYTES;

/**
 * Counts the bytes `stream` delivers from its first byte to its end, then prints the sink's line
 * {"bytes","ms","cpuMs"} (CPU time of this process over the same span) and exits. `beforePrint`
 * runs at the end, before the line (HTTP/2 answers the request there).
 */
export function countToEndAndPrint(stream: Readable, beforePrint: () => void = () => undefined): void {
  let bytes = 0;
  let firstMs = 0;
  let firstCpu = process.cpuUsage();
  stream.on('data', (b: Buffer) => {
    if (bytes === 0) {
      firstMs = performance.now();
      firstCpu = process.cpuUsage();
    }
    bytes += b.length;
  });
  stream.on('end', () => {
    const ms = performance.now() - firstMs;
    const cpu = process.cpuUsage(firstCpu);
    beforePrint();
    process.stdout.write(`${JSON.stringify({ bytes, ms, cpuMs: (cpu.user + cpu.system) / 1000 })}\n`, () => process.exit(0));
  });
}

/** Prints the sink's first line, {"listening":"127.0.0.1:port"}. */
export function printListening(port: number): void {
  process.stdout.write(`${JSON.stringify({ listening: `127.0.0.1:${port}` })}\n`);
}

/** Writes `total` bytes of `buffer`, over and over, waiting for 'drain' when the stream is full; then ends it. */
export function writeRepeatedly(stream: Writable, buffer: Buffer, total: number): void {
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const n = Math.min(buffer.length, total - sent);
      sent += n;
      if (!stream.write(n === buffer.length ? buffer : buffer.subarray(0, n))) {
        stream.once('drain', pump);
        return;
      }
    }
    stream.end();
  };
  pump();
}

/** Exits with status 1 on an error of `emitter`, naming `what`. */
export function exitOnError(emitter: EventEmitter, what: string): void {
  emitter.on('error', (e: Error) => {
    console.error(`${what}: ${e.message}`);
    process.exit(1);
  });
}

/** `node <script> sink | source <host:port> <bytes>`: runs the role the command line names. */
export function runRole(script: string, sink: () => void, source: (address: string, bytes: number) => void): void {
  const [role, address, bytes] = process.argv.slice(2);
  if (role === 'sink') sink();
  else if (role === 'source' && address && Number(bytes) > 0) source(address, Number(bytes));
  else {
    console.error(`usage: node ${script} sink | source <host:port> <bytes>`);
    process.exit(2);
  }
}

function sinkMain(): void {
  const server = net.createServer((socket) => {
    server.close();
    countToEndAndPrint(socket);
    exitOnError(socket, 'raw TCP sink');
  });
  server.listen(0, '127.0.0.1', () => printListening((server.address() as net.AddressInfo).port));
}

function sourceMain(address: string, total: number): void {
  const i = address.lastIndexOf(':');
  const buffer = randomFillSync(Buffer.allocUnsafe(SOURCE_WRITE_BYTES));
  const socket = net.connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)) }, () => writeRepeatedly(socket, buffer, total));
  exitOnError(socket, 'raw TCP source');
  socket.on('close', () => process.exit(0));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) runRole('raw-tcp.js', sinkMain, sourceMain);
