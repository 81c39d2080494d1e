// HTTP/2 between two processes on this machine, the way the agents use it, without gRPC or the
// agents: the middle baseline of the data-plane benchmark, between raw TCP and the agents.
// `node dist/bench/raw-http2.js sink` serves node:http2 on loopback with the agents' 16 MiB
// flow-control windows (shared/transport/grpc.ts), prints {"listening":...}, reads one request
// body to its end and prints {"bytes":N,"ms":T,"cpuMs":C} (from its first byte to its end).
// `node dist/bench/raw-http2.js source <host:port> <bytes>` posts that many bytes (1 MiB writes of
// one random buffer, honouring backpressure). Both run with the agents' malloc settings
// (agentGlibcTunables() in cli/agent-process.ts).

import { randomFillSync } from 'node:crypto';
import * as http2 from 'node:http2';
import { fileURLToPath } from 'node:url';
import { agentGlibcTunables } from '../cli/agent-process.js';
import { FLOW_CONTROL_WINDOW_BYTES } from '../shared/transport/grpc.js';
import { measureBetweenProcesses, type RawTcpResult } from './raw-tcp.js';

/** Posts `bytes` from one child process to another over loopback HTTP/2; resolves with the sink's timing. */
export function measureRawHttp2(bytes: number, timeoutMs = 120_000): Promise<RawTcpResult> {
  return measureBetweenProcesses(fileURLToPath(import.meta.url), bytes, timeoutMs, { GLIBC_TUNABLES: agentGlibcTunables() });
}

function sinkMain(): void {
  const server = http2.createServer({ settings: { initialWindowSize: FLOW_CONTROL_WINDOW_BYTES } });
  server.on('session', (session) => session.once('localSettings', () => session.setLocalWindowSize(FLOW_CONTROL_WINDOW_BYTES)));
  server.on('stream', (stream) => {
    server.close();
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
      stream.respond({ ':status': 200 }, { endStream: true });
      process.stdout.write(`${JSON.stringify({ bytes, ms, cpuMs: (cpu.user + cpu.system) / 1000 })}\n`, () => process.exit(0));
    });
    stream.on('error', (e) => {
      console.error(`raw HTTP/2 sink: ${e.message}`);
      process.exit(1);
    });
  });
  server.listen(0, '127.0.0.1', () => {
    const a = server.address() as import('node:net').AddressInfo;
    process.stdout.write(`${JSON.stringify({ listening: `127.0.0.1:${a.port}` })}\n`);
  });
}

function sourceMain(address: string, total: number): void {
  const buffer = randomFillSync(Buffer.allocUnsafe(1024 * 1024));
  const session = http2.connect(`http://${address}`, { settings: { initialWindowSize: FLOW_CONTROL_WINDOW_BYTES } });
  session.on('error', (e) => {
    console.error(`raw HTTP/2 source: ${e.message}`);
    process.exit(1);
  });
  const request = session.request({ ':method': 'POST', ':path': '/' });
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const n = Math.min(buffer.length, total - sent);
      sent += n;
      if (!request.write(n === buffer.length ? buffer : buffer.subarray(0, n))) {
        request.once('drain', pump);
        return;
      }
    }
    request.end();
  };
  pump();
  request.resume();
  request.on('close', () => process.exit(0));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [role, address, bytes] = process.argv.slice(2);
  if (role === 'sink') sinkMain();
  else if (role === 'source' && address && Number(bytes) > 0) sourceMain(address, Number(bytes));
  else {
    console.error('usage: node raw-http2.js sink | source <host:port> <bytes>');
    process.exit(2);
  }
}
