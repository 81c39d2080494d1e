// Faults of the emulated link (link.ts) other than a cut, for the fault matrix
// (test/fault-matrix.test.ts, bench/faults/):
//
//   stall    delivery stops both ways for a while and every connection stays open: a path that
//            forwards nothing without dropping anything (a congested or rerouting network before
//            TCP gives up). Bytes read meanwhile queue up to the link's buffer bound, after which
//            the senders' writes block as they would on a real link; when the stall ends, what
//            queued is delivered at once (the line rate is not applied again to it).
//   corrupt  one byte of one direction of the stream is flipped, once: a frame corrupted past the
//            TCP checksum (a faulty NIC, memory, a middlebox). Over TLS the record's MAC fails;
//            over plaintext gRPC the receiver sees a bad HTTP/2 frame, a bad gRPC prefix, a
//            protobuf that does not decode, or a payload whose own checksum fails.
//
// The state lives here; link.ts consults it where it delivers (Flow.pump) and schedules.

import { InvalidArgumentError } from '../errors.js';

/** Client → target is 'forward' (the source agent dials the target agent); back is 'reverse'. */
export type LinkDirection = 'forward' | 'reverse';

/** Longest stall one call may ask for: ten minutes, beyond any TCP or gRPC keepalive. */
export const LINK_STALL_MS_MAX = 600_000;

export interface LinkCorruptOptions {
  /** Which direction's byte is flipped. Default 'forward'. */
  direction?: LinkDirection;
  /** XORed into the byte: 1 to 255. Default 0xff (every bit). */
  mask?: number;
}

export interface LinkCorruptInfo {
  direction: LinkDirection;
  /** The flipped byte's offset, counted in bytes delivered in `direction` since the fault was armed. */
  offset: number;
  mask: number;
  /** The connection whose stream carried it. */
  connectionId: number;
  /** The byte as it was sent. */
  original: number;
  /**
   * Where it sat in the socket read that carried it: that read's bytes around it, in hex, the
   * flipped one (as sent) in brackets, and its position in the read. Enough to tell which frame it hit.
   */
  around: string;
  chunkOffset: number;
}

/** Bytes shown on each side of a flipped byte. */
const AROUND_BYTES = 16;

function hexAround(bytes: Buffer, at: number): string {
  const hex = (from: number, to: number) => bytes.subarray(from, to).toString('hex');
  return `${hex(Math.max(0, at - AROUND_BYTES), at)}[${hex(at, at + 1)}]${hex(at + 1, at + 1 + AROUND_BYTES)}`;
}

interface ArmedFlip {
  direction: LinkDirection;
  /** Bytes of `direction` still to be delivered before the flipped one. */
  remaining: number;
  offset: number;
  mask: number;
}

export class LinkFaults {
  /** Nothing is delivered before this instant (performance.now() ms); 0 when not stalled. */
  stalledUntilMs = 0;
  stalls = 0;
  corruptions = 0;
  private flip: ArmedFlip | null = null;

  /** Stops delivery until `nowMs + ms` (a stall already longer is kept). */
  stall(nowMs: number, ms: number): number {
    if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0 || ms > LINK_STALL_MS_MAX) {
      throw new InvalidArgumentError(`link stall ms=${String(ms)} is out of range [0, ${LINK_STALL_MS_MAX}]`);
    }
    this.stalledUntilMs = Math.max(this.stalledUntilMs, nowMs + ms);
    this.stalls++;
    return this.stalledUntilMs;
  }

  /** Ends a stall now. */
  unstall(): void {
    this.stalledUntilMs = 0;
  }

  /** Arms the flip of the byte `n` bytes into `direction`'s stream from now; replaces any armed flip. */
  armFlip(n: number, options: LinkCorruptOptions = {}): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError(`link corruptAfterBytes n=${String(n)}: expected an integer >= 0`);
    const direction = options.direction ?? 'forward';
    if (direction !== 'forward' && direction !== 'reverse') throw new InvalidArgumentError(`link corrupt direction '${String(direction)}': expected forward or reverse`);
    const mask = options.mask ?? 0xff;
    if (!Number.isInteger(mask) || mask < 1 || mask > 255) throw new InvalidArgumentError(`link corrupt mask=${String(mask)}: expected an integer in [1, 255]`);
    this.flip = { direction, remaining: n, offset: n, mask };
  }

  disarmFlip(): void {
    this.flip = null;
  }

  /** Whether a flip is armed and has not happened yet. */
  get flipArmed(): boolean {
    return this.flip !== null;
  }

  /**
   * `bytes` are about to be delivered in `direction`: returns them with the armed byte flipped (a
   * copy: the read buffer is left alone) and the flip's description, or as they are.
   */
  deliver(direction: LinkDirection, bytes: Buffer, connectionId: number): { bytes: Buffer; corrupted: LinkCorruptInfo | null } {
    const f = this.flip;
    if (f === null || f.direction !== direction) return { bytes, corrupted: null };
    if (f.remaining >= bytes.length) {
      f.remaining -= bytes.length;
      return { bytes, corrupted: null };
    }
    const at = f.remaining;
    const copy = Buffer.from(bytes);
    copy[at] ^= f.mask;
    this.flip = null;
    this.corruptions++;
    return { bytes: copy, corrupted: { direction, offset: f.offset, mask: f.mask, connectionId, original: bytes[at], around: hexAround(bytes, at), chunkOffset: at } };
  }
}
