// The stream a target session reads and writes: one Transfer stream at a time, replaced when the
// source resumes the transfer on a new one (detached.ts). Events of a stream no longer in use
// (handed over to the transfer it resumed, or broken and replaced) are ignored; what the session
// writes goes through a bounded outbox (outbox.ts) of the current stream, or nowhere while there
// is none.

import type { Clock } from '../shared/clock.js';
import type { LimitExceededError } from '../shared/errors.js';
import { endedByUndecodedRequest } from '../shared/transport/decode-status.js';
import { type pb, toServiceError } from '../shared/transport/grpc.js';
import { guarded } from './guarded-clock.js';
import { Outbox } from './outbox.js';
import type { TargetMessageBody } from './receivers/context.js';
import type { TransferStream } from './session-host.js';

type SourceMessage = InstanceType<typeof pb.SourceMessage>;

export interface SessionStreamEvents {
  message(message: SourceMessage): void;
  /** The stream ended for `reason`; `resumable`: it went away (a resume may follow), not ended here. */
  ended(reason: string, resumable: boolean): void;
  /** What the session schedules threw. */
  failed(error: unknown): void;
  overflow(error: LimitExceededError): void;
  drained(): void;
}

export class SessionStream {
  private call: TransferStream | null = null;
  private outbox: Outbox | null = null;
  private generation = 0;

  constructor(
    call: TransferStream,
    private readonly clock: Clock,
    private readonly events: SessionStreamEvents,
  ) {
    this.use(call);
  }

  /** Reads and writes `call` from now on; the events of any stream used before are ignored. */
  use(call: TransferStream): void {
    const generation = ++this.generation;
    const current = () => generation === this.generation;
    this.call = call;
    this.outbox = new Outbox(call, this.clock, { overflow: (error) => this.events.overflow(error), drained: () => this.events.drained() });
    const guard = guarded((error) => this.events.failed(error));
    const { events } = this;
    call.on('data', (message: SourceMessage) => current() && events.message(message));
    // A stream that went away mid-transfer (a source never closes one without an Abort first) may
    // be resumed; not one this agent ended itself because a message did not decode.
    call.on('end', guard(() => current() && events.ended('the source closed the stream', true)));
    call.on('cancelled', guard(() => current() && events.ended('the source cancelled the stream, or its connection was lost', !endedByUndecodedRequest(call))));
    call.on('error', guard((error: Error) => current() && events.ended(`stream error: ${error.message}`, true)));
  }

  /** There is a stream to write to. */
  get attached(): boolean {
    return this.call !== null;
  }

  send(body: TargetMessageBody): void {
    this.outbox?.send(body);
  }

  /** Stops using the stream (broken: a resume may bring another), or hands it over; returns it. */
  release(): TransferStream | null {
    const call = this.call;
    this.generation++;
    this.call = null;
    this.outbox = null;
    return call;
  }

  /** Ends the stream: OK, or with `failure`'s status. */
  end(failure: unknown): void {
    try {
      if (failure === null) this.call?.end();
      else this.call?.emit('error', toServiceError(failure));
    } catch {
      // Already closed.
    }
  }
}
