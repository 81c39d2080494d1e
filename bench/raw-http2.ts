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
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { agentGlibcTunables } from '../cli/agent-process.js';
import { FLOW_CONTROL_WINDOW_BYTES } from '../shared/transport/grpc.js';
import { countToEndAndPrint, exitOnError, measureBetweenProcesses, printListening, type RawTcpResult, runRole, SOURCE_WRITE_BYTES, writeRepeatedly } from './raw-tcp.js';

/** Posts `bytes` from one child process to another over loopback HTTP/2; resolves with the sink's timing. */
export function measureRawHttp2(bytes: number, timeoutMs = 120_000): Promise<RawTcpResult> {
  return measureBetweenProcesses(fileURLToPath(import.meta.url), bytes, timeoutMs, { GLIBC_TUNABLES: agentGlibcTunables() });
}

function sinkMain(): void {
  const server = http2.createServer({ settings: { initialWindowSize: FLOW_CONTROL_WINDOW_BYTES } });
  server.on('session', (session) => session.once('localSettings', () => session.setLocalWindowSize(FLOW_CONTROL_WINDOW_BYTES)));
  server.on('stream', (stream) => {
    server.close();
    countToEndAndPrint(stream, () => stream.respond({ ':status': 200 }, { endStream: true }));
    exitOnError(stream, 'raw HTTP/2 sink');
  });
  server.listen(0, '127.0.0.1', () => printListening((server.address() as AddressInfo).port));
}

function sourceMain(address: string, total: number): void {
  const buffer = randomFillSync(Buffer.allocUnsafe(SOURCE_WRITE_BYTES));
  const session = http2.connect(`http://${address}`, { settings: { initialWindowSize: FLOW_CONTROL_WINDOW_BYTES } });
  exitOnError(session, 'raw HTTP/2 source');
  const request = session.request({ ':method': 'POST', ':path': '/' });
  writeRepeatedly(request, buffer, total);
  request.resume();
  request.on('close', () => process.exit(0));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) runRole('raw-http2.js', sinkMain, sourceMain);
