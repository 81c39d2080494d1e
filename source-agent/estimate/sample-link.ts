// Measuring the link to a target for a prediction, over the agents' own channel (the Migration
// service, with the migration's channel options and credentials):
// - the round trip: the median of a few GetCapacity calls after a first one that sets the
//   connection up (it also brings the target's capacity and capabilities);
// - the bandwidth: a probe (Migration.Probe) that streams a bounded number of random bytes with
//   backpressure and divides what the target received by the time it took, less one round trip.
// A target that predates the probe answers UNIMPLEMENTED, and one that refuses it (a limit) says
// why: the bandwidth is then not measured, and the caller takes it from the configuration. The
// probe stops sending after PROBE_SEND_MS_MAX whatever it was asked, so a slow link cannot hold
// the call.

import { randomBytes } from 'node:crypto';
import type { Clock } from '../../shared/clock.js';
import { AbortedError, echo, VmMigrateError } from '../../shared/errors.js';
import { deadline, fromServiceError, type grpc, makeClient, migrationService, pb, unary } from '../../shared/transport/grpc.js';

/** Round trips timed after the first call. */
export const RTT_SAMPLES = 5;
/** Bytes of one probe message. */
const PROBE_CHUNK_BYTES = 1024 * 1024;
/** The probe stops sending after this long, however many bytes it was asked to send. */
export const PROBE_SEND_MS_MAX = 10_000;

type Capacity = InstanceType<typeof pb.Capacity>;
type Client = ReturnType<typeof makeClient<typeof migrationService>>;

export interface LinkSample {
  capacity: Capacity;
  rttMs: number;
  rttSamples: number;
  /** Bytes the target received from the probe, how long they took, and the rate (0: not measured). */
  probeBytes: number;
  probeMs: number;
  measuredBytesPerSec: number;
  /** Why the bandwidth was not measured ('' when it was). */
  note: string;
}

export interface LinkSampleOptions {
  credentials: grpc.ChannelCredentials;
  callTimeoutMs: number;
  /** Bytes the probe sends (0: no probe). */
  probeBytes: number;
  clock: Clock;
  signal?: AbortSignal;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Measures the link to the target agent at `address` (see the head comment). */
export async function sampleLink(address: string, o: LinkSampleOptions): Promise<LinkSample> {
  const client: Client = makeClient(migrationService, 'Migration', address, o.credentials);
  try {
    const what = `capacity of the target ${echo(address)}`;
    const capacity = await unary(client, migrationService.getCapacity, pb.CapacityRequest.create(), o.callTimeoutMs, what);
    const rtts: number[] = [];
    for (let i = 0; i < RTT_SAMPLES; i++) {
      if (o.signal?.aborted) throw new AbortedError('the estimate was cancelled');
      const t0 = o.clock.now();
      await unary(client, migrationService.getCapacity, pb.CapacityRequest.create(), o.callTimeoutMs, what);
      rtts.push(o.clock.now() - t0);
    }
    const rttMs = median(rtts);
    const sample: LinkSample = { capacity, rttMs, rttSamples: rtts.length, probeBytes: 0, probeMs: 0, measuredBytesPerSec: 0, note: '' };
    if (o.probeBytes <= 0) return { ...sample, note: 'no probe asked for' };
    try {
      const { receivedBytes, elapsedMs } = await probe(client, address, o);
      // The answer comes back one round trip after the last byte left; the first byte took half
      // of one to arrive: the bytes took about elapsed - RTT.
      const transferMs = Math.max(elapsedMs / 2, elapsedMs - rttMs);
      return { ...sample, probeBytes: receivedBytes, probeMs: elapsedMs, measuredBytesPerSec: transferMs > 0 ? receivedBytes / (transferMs / 1000) : 0 };
    } catch (error) {
      if (!(error instanceof VmMigrateError) || error.code === 'UNAVAILABLE' || error.code === 'ABORTED') throw error;
      const why = error.code === 'UNIMPLEMENTED' ? 'the target does not offer the bandwidth probe (an older agent)' : `the target refused the bandwidth probe: ${error.message}`;
      return { ...sample, note: why };
    }
  } finally {
    client.close();
  }
}

/** Streams up to `o.probeBytes` random bytes with backpressure; the target's count and the time taken. */
async function probe(client: Client, address: string, o: LinkSampleOptions): Promise<{ receivedBytes: number; elapsedMs: number }> {
  const m = migrationService.probe;
  const chunk = randomBytes(PROBE_CHUNK_BYTES);
  const start = o.clock.now();
  let call: grpc.ClientWritableStream<InstanceType<typeof pb.ProbeData>> | null = null;
  const answer = new Promise<InstanceType<typeof pb.ProbeResult>>((resolve, reject) => {
    call = client.makeClientStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, { deadline: deadline(PROBE_SEND_MS_MAX + o.callTimeoutMs) }, (error, result) => {
      if (error) reject(fromServiceError(error, `bandwidth probe of the target ${echo(address)}`));
      else resolve(result as InstanceType<typeof pb.ProbeResult>);
    });
  });
  const settled = answer.then(
    () => undefined,
    () => undefined,
  );
  const stream = call as unknown as grpc.ClientWritableStream<InstanceType<typeof pb.ProbeData>>;
  const onAbort = () => stream.cancel();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    let sent = 0;
    let ended = false;
    void settled.then(() => (ended = true));
    while (sent < o.probeBytes && !ended && o.clock.now() - start < PROBE_SEND_MS_MAX) {
      const n = Math.min(PROBE_CHUNK_BYTES, o.probeBytes - sent);
      sent += n;
      if (!stream.write(pb.ProbeData.create({ data: chunk.subarray(0, n) }))) {
        await Promise.race([new Promise<void>((resolve) => stream.once('drain', () => resolve())), settled]);
      }
    }
    stream.end();
    const result = await answer;
    return { receivedBytes: Number(result.receivedBytes), elapsedMs: o.clock.now() - start };
  } catch (error) {
    if (o.signal?.aborted) throw new AbortedError('the estimate was cancelled', { cause: error });
    throw error;
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
  }
}
