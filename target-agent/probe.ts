// The target's end of a bandwidth probe (Migration.Probe): it counts the bytes a source streams,
// writes them into fresh memory as a restore writes a checkpoint into the replica's (so that the
// probe pays the first touch of new pages, as a migration does), and answers with the count and
// how long they took to arrive; nothing is kept. Bounded in bytes per probe and in probes at once:
// a probe holds at most PROBE_BYTES_MAX of memory while it runs.

import { type Clock, systemClock } from '../shared/clock.js';
import { DeadlineExceededError, LimitExceededError } from '../shared/errors.js';
import { PROBE_BYTES_MAX } from '../shared/protocol.js';
import { type grpc, pb, toServiceError } from '../shared/transport/grpc.js';

/** Probes at once on one agent. */
export const PROBES_MAX = 4;
/** A probe that has not ended this long after it began is ended (its slot and memory freed). */
export const PROBE_DURATION_MAX_MS = 30_000;

type ProbeCall = grpc.ServerReadableStream<InstanceType<typeof pb.ProbeData>, InstanceType<typeof pb.ProbeResult>>;
type ProbeCallback = grpc.sendUnaryData<InstanceType<typeof pb.ProbeResult>>;

export class ProbeReceiver {
  private active = 0;

  constructor(private readonly clock: Clock = systemClock) {}

  /** The Probe handler. */
  handle(call: ProbeCall, callback: ProbeCallback): void {
    if (this.active >= PROBES_MAX) {
      callback(toServiceError(new LimitExceededError(`${this.active} bandwidth probes in progress, the limit is ${PROBES_MAX}; try again shortly`, { metadata: { limit: PROBES_MAX } })));
      return;
    }
    this.active++;
    let received = 0;
    let firstMs = -1;
    let done = false;
    // Allocated whole, touched only as bytes arrive: the pages are new when they are written.
    let sink: Uint8Array | null = null;
    const deadline = this.clock.timeout(PROBE_DURATION_MAX_MS, () =>
      finish(toServiceError(new DeadlineExceededError(`bandwidth probe still open after ${PROBE_DURATION_MAX_MS} ms`, { metadata: { limitMs: PROBE_DURATION_MAX_MS } }))),
    );
    const finish = (error: ReturnType<typeof toServiceError> | null) => {
      if (done) return;
      done = true;
      deadline.cancel();
      sink = null;
      this.active--;
      if (error !== null) callback(error);
      else callback(null, pb.ProbeResult.create({ receivedBytes: received, firstToLastMs: firstMs < 0 ? 0 : this.clock.now() - firstMs }));
    };
    call.on('data', (message: InstanceType<typeof pb.ProbeData>) => {
      if (done) return;
      if (firstMs < 0) firstMs = this.clock.now();
      const data = message.data ?? new Uint8Array(0);
      if (received + data.length <= PROBE_BYTES_MAX) {
        sink ??= new Uint8Array(PROBE_BYTES_MAX);
        sink.set(data, received);
      }
      received += data.length;
      if (received > PROBE_BYTES_MAX) {
        // The status ends the call; whatever the source still sends is not read.
        finish(toServiceError(new LimitExceededError(`bandwidth probe of more than ${PROBE_BYTES_MAX} bytes (${received} so far)`, { metadata: { limit: PROBE_BYTES_MAX } })));
      }
    });
    call.on('end', () => finish(null));
    call.on('error', () => finish(null));
    call.on('cancelled', () => finish(null));
  }
}
