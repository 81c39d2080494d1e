// What the source sent on a transfer and the target has not counted yet: kept so that, after a
// stream broke (a link cut or stall), a new stream can send it again from where the target's count
// stopped (Resume, Resumed). Every transfer message but Open, Resume and Ping is numbered, in the
// order written, on every stream of the transfer; the target counts them the same way
// (Progress.messages_received) and each count lets the messages up to it go.
//
// Bounded by the target's windows: it never lets the source have more chunks, units or page batches
// outstanding than those, and what it counted as received is a superset of what it applied.

import type { pb, Preserialized } from '../shared/transport/grpc.js';

type SourceMessage = InstanceType<typeof pb.SourceMessage>;

/** One message kept: its bytes as written (a payload message), or the message (a control one). */
export interface Retained {
  readonly seq: number;
  readonly message: Preserialized | SourceMessage;
  readonly bytes: number;
  /** Gives back the packer's buffer the bytes live in, once the target counted them. */
  readonly release?: () => void;
}

export class RetransmitLog {
  /** Messages numbered so far (the last one's number). */
  sent = 0;
  /** The target's count: every message up to it arrived. */
  acked = 0;
  /** Bytes kept. */
  bytes = 0;
  /** Bytes the target counted so far (for the throughput the stall detector allows for). */
  ackedBytes = 0;
  /** Bytes sent again after resumes, and messages. */
  resentBytes = 0;
  resentMessages = 0;
  private readonly kept: Retained[] = [];
  private head = 0;

  /** Numbers a message as written, and keeps it. */
  add(message: Preserialized | SourceMessage, bytes: number, release?: () => void): number {
    const seq = ++this.sent;
    this.kept.push({ seq, message, bytes, release });
    this.bytes += bytes;
    return seq;
  }

  /** The target counted `received` messages: those go. A count that goes back or beyond what was sent is ignored. */
  ack(received: number): void {
    if (!(received > this.acked) || received > this.sent) return;
    this.acked = received;
    while (this.head < this.kept.length && this.kept[this.head].seq <= received) {
      const entry = this.kept[this.head];
      this.kept[this.head++] = undefined as unknown as Retained;
      this.bytes -= entry.bytes;
      this.ackedBytes += entry.bytes;
      entry.release?.();
    }
    // Compact now and then, so that the array does not grow with the transfer.
    if (this.head > 1024 && this.head * 2 > this.kept.length) {
      this.kept.splice(0, this.head);
      this.head = 0;
    }
  }

  /** The messages after the target's count, in order, to send again (counted as resent). */
  after(received: number): Retained[] {
    const out = this.kept.slice(this.head).filter((e) => e.seq > received);
    for (const e of out) {
      this.resentBytes += e.bytes;
      this.resentMessages++;
    }
    return out;
  }

  /** Kept messages (sent, not yet counted by the target). */
  get pending(): number {
    return this.kept.length - this.head;
  }

  /** Gives every buffer back (the transfer ended). */
  clear(): void {
    for (let i = this.head; i < this.kept.length; i++) this.kept[i].release?.();
    this.kept.length = 0;
    this.head = 0;
    this.bytes = 0;
  }
}
