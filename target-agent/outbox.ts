// What the target sends on one Transfer stream, bounded for a source that does not read it. Each
// message is serialized here, so that the bytes waiting for the source are known (grpc-js buffers
// whatever it is given while the peer's HTTP/2 window is shut). Above a soft bound, what can wait
// waits: progress reports are coalesced into one, sent once the source drained what was queued,
// and pongs are dropped (the source measures its round trips by its own unary pings). Past a hard
// bound the source is not reading at all and the transfer fails: RESOURCE_EXHAUSTED
// (PEER_NOT_READING). Pongs are also rate-limited, and a source that keeps pinging far past the
// rate fails the transfer (RESOURCE_EXHAUSTED, LIMIT_EXCEEDED): a flood of pings costs the target
// the decoding of a few thousand, and its reservation is freed.

import type { Clock } from '../shared/clock.js';
import { LimitExceededError } from '../shared/errors.js';
import { pb, Preserialized } from '../shared/transport/grpc.js';
import type { TargetMessageBody } from './receivers/context.js';
import type { TransferStream } from './session-host.js';

export const OUTBOX = {
  /** Bytes waiting for the source above which progress reports are coalesced and pongs dropped. */
  softBytesMax: 256 * 1024,
  /** Bytes waiting for the source past which it is not reading: the transfer fails. */
  hardBytesMax: 8 * 1024 * 1024,
  /** Pings answered a second, on average, and in a burst (a source that pings on the stream does so every 500 ms). */
  pongsPerSec: 20,
  pongBurst: 20,
  /** Pings past the rate after which the source is flooding: the transfer fails. */
  pingsOverRateMax: 2_000,
} as const;

export interface OutboxEvents {
  /** The source floods the stream with pings, or does not read: the transfer fails with `error`. */
  overflow(error: LimitExceededError): void;
  /** A progress report was held back above the soft bound, and the source has since read what waited. */
  drained(): void;
}

export class Outbox {
  private bufferedBytes = 0;
  private progressHeld = false;
  private pongTokens: number = OUTBOX.pongBurst;
  private pongTokensAtMs: number;
  /** Pongs not sent: over the rate, or while the source was not reading. */
  pongsDropped = 0;
  private pingsOverRate = 0;

  constructor(
    private readonly stream: TransferStream,
    private readonly clock: Clock,
    private readonly events: OutboxEvents,
  ) {
    this.pongTokensAtMs = clock.now();
  }

  /** Bytes written and not yet taken by the transport. */
  get buffered(): number {
    return this.bufferedBytes;
  }

  send(body: TargetMessageBody): void {
    const kind = Object.keys(body)[0];
    if (kind === 'pong' && !this.takePong()) return this.pingOverRate();
    if (kind === 'pong' && this.bufferedBytes > OUTBOX.softBytesMax) {
      this.pongsDropped++;
      return;
    }
    if (kind === 'progress' && this.bufferedBytes > OUTBOX.softBytesMax) {
      this.progressHeld = true;
      return;
    }
    const bytes = Buffer.from(pb.TargetMessage.encode(pb.TargetMessage.create(body as never)).finish());
    this.bufferedBytes += bytes.length;
    this.stream.write(new Preserialized(bytes), () => this.written(bytes.length));
    if (this.bufferedBytes > OUTBOX.hardBytesMax) {
      this.events.overflow(
        new LimitExceededError(`the source does not read its transfer stream: ${this.bufferedBytes} bytes wait for it, the limit is ${OUTBOX.hardBytesMax}`, {
          reason: 'PEER_NOT_READING',
          metadata: { bufferedBytes: this.bufferedBytes, limit: OUTBOX.hardBytesMax },
        }),
      );
    }
  }

  private written(bytes: number): void {
    this.bufferedBytes -= bytes;
    if (this.progressHeld && this.bufferedBytes <= OUTBOX.softBytesMax / 2) {
      this.progressHeld = false;
      this.events.drained();
    }
  }

  private pingOverRate(): void {
    this.pongsDropped++;
    if (++this.pingsOverRate <= OUTBOX.pingsOverRateMax) return;
    this.events.overflow(
      new LimitExceededError(`the source pings far faster than ${OUTBOX.pongsPerSec} a second: ${this.pingsOverRate} pings past the rate`, {
        reason: 'LIMIT_EXCEEDED',
        metadata: { limit: 'pongsPerSec', pongsPerSec: OUTBOX.pongsPerSec, pingsOverRate: this.pingsOverRate },
      }),
    );
  }

  /** A token of the pong bucket, if one is left. */
  private takePong(): boolean {
    const nowMs = this.clock.now();
    this.pongTokens = Math.min(OUTBOX.pongBurst, this.pongTokens + ((nowMs - this.pongTokensAtMs) * OUTBOX.pongsPerSec) / 1000);
    this.pongTokensAtMs = nowMs;
    if (this.pongTokens < 1) return false;
    this.pongTokens--;
    return true;
  }
}
