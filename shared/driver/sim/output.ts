// The `sim` guest's output device: it answers every network packet it receives with one packet
// of its own (a server's reply). A reply's sequence number is its request's, and its payload a
// hash of the guest's state at the end of the unit that received the request: the same on a
// replica that replays that unit, so a standby produces exactly the outputs its primary did.
//
// What leaves the host is gated: a guest protected in sync mode holds each output until the
// standby acknowledged receipt of the unit that produced it (VMware FT's output rule); unprotected
// or in async mode, outputs are released at once. Released outputs are kept in a bounded ring, so
// that what a client saw can be compared with what a standby reproduces.

import { hex64, xxh64 } from '../../hash.js';
import type { GuestOutput } from '../types.js';

export interface OutputPacket {
  /** The request's sequence number (the guest's received-packet count when it arrived). */
  readonly sequence: number;
  /** The unit that produced it. */
  readonly unit: number;
  /** 16 hex digits. */
  readonly payload: string;
  /** When it was produced, and released (performance.now(); 0: not released). */
  readonly producedAtMs: number;
  releasedAtMs: number;
}

/** Released outputs kept for GetOutputs; older ones are dropped (the ring says where it starts). */
export const OUTPUTS_KEPT = 65_536;
/** Outputs held at most; past it the gate opens (sync falls back to async) and says so. */
export const OUTPUTS_HELD_MAX = 262_144;
/** Release delays kept for their percentiles. */
const DELAYS_KEPT = 4_096;

export class OutputDevice implements GuestOutput {
  /** Produced, not yet released (sync mode), oldest first. */
  private held: OutputPacket[] = [];
  private heldRead = 0;
  private readonly ring: OutputPacket[] = [];
  private ringStart = 0;
  private gated = false;
  produced = 0;
  released = 0;
  /** The gate opened because too much was held (sync fell back to async). */
  overflowed = 0;
  private readonly delays: number[] = [];
  private delayCursor = 0;
  /**
   * Outputs leave only while this holds (a protection's primary term, with an arbiter): a primary
   * frozen past its lease and continued lets nothing out in the moment before it is fenced.
   */
  releaseWhile: (() => boolean) | null = null;
  /** Set by dropHeld: outputs are dropped as they are produced, and nothing opens the gate. */
  private fenced = false;
  /** Told when the gate opens because too much was held. */
  onOverflow: ((held: number) => void) | null = null;

  /** The unit `unit` received requests up to `rxAfter` (exclusive) from `rxBefore`: one reply each, produced at `producedAtMs` (performance.now() of this thread). */
  afterUnit(unit: number, rxBefore: number, rxAfter: number, stateHash: number, producedAtMs = performance.now()): void {
    const count = (rxAfter - rxBefore) >>> 0;
    if (count === 0) return;
    const now = performance.now();
    const produced = Math.min(producedAtMs, now);
    for (let i = 0; i < count; i++) {
      const sequence = (rxBefore + i) >>> 0;
      const payload = hex64(xxh64(new Uint8Array(Uint32Array.of(sequence, stateHash >>> 0, unit >>> 0).buffer)));
      const packet: OutputPacket = { sequence, unit, payload, producedAtMs: produced, releasedAtMs: 0 };
      this.produced++;
      if (this.fenced) continue;
      if (this.gated || this.releaseWhile?.() === false) this.held.push(packet);
      else this.release(packet, now);
    }
    if (this.heldCount <= OUTPUTS_HELD_MAX) return;
    this.overflowed++;
    if (!this.gated) {
      // Held only for want of the primary's term (releaseWhile): they may never leave. Past the
      // bound the oldest are dropped, not released (a copy without its term is about to be fenced).
      this.held = this.held.slice(this.heldRead + this.heldCount - OUTPUTS_HELD_MAX);
      this.heldRead = 0;
      return;
    }
    const held = this.heldCount;
    this.openGate();
    this.onOverflow?.(held);
  }

  /** From now on, outputs wait for releaseThrough (a sync protection). */
  hold(): void {
    if (this.fenced) return;
    this.gated = true;
  }

  /** Releases the held outputs of units up to `unit` (inclusive); returns how many. */
  releaseThrough(unit: number): number {
    if (this.releaseWhile?.() === false) return 0;
    const now = performance.now();
    let n = 0;
    while (this.heldRead < this.held.length && this.held[this.heldRead].unit <= unit) {
      this.release(this.held[this.heldRead++], now);
      n++;
    }
    if (this.heldRead > 4096 && this.heldRead * 2 > this.held.length) {
      this.held = this.held.slice(this.heldRead);
      this.heldRead = 0;
    }
    return n;
  }

  /**
   * Drops what is held (never released), and releases nothing from now on: a fenced copy, whose
   * vCPU may finish a unit or two before it is suspended, lets none of their outputs out. Returns
   * how many were dropped. (A guest is fenced for good: nothing opens the gate again.)
   */
  dropHeld(): number {
    const n = this.heldCount;
    this.held = [];
    this.heldRead = 0;
    this.gated = true;
    this.fenced = true;
    return n;
  }

  /** Releases everything held, and holds nothing more (a fenced copy's gate stays shut). */
  openGate(): void {
    if (this.fenced) return;
    this.gated = false;
    this.releaseThrough(Number.POSITIVE_INFINITY);
  }

  get holding(): boolean {
    return this.gated;
  }

  get heldCount(): number {
    return this.held.length - this.heldRead;
  }

  /** Released outputs with a sequence after `after` (-1: from the oldest kept), at most `max`. */
  releasedAfter(after: number, max: number): { packets: OutputPacket[]; firstKept: number } {
    // Released in the order produced, so sequences ascend along the ring: the first one after
    // `after` is found by bisection (clients poll this often; the ring holds 65,536).
    let lo = this.ringStart;
    let hi = this.ring.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ring[mid].sequence > after) hi = mid;
      else lo = mid + 1;
    }
    return { packets: this.ring.slice(lo, lo + max), firstKept: this.ring[this.ringStart]?.sequence ?? -1 };
  }

  /** Release delay percentiles over the last outputs released (ms). */
  delayPercentiles(): { p50: number; p99: number; samples: number } {
    const sorted = [...this.delays].sort((a, b) => a - b);
    const at = (q: number) => (sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]);
    return { p50: at(0.5), p99: at(0.99), samples: sorted.length };
  }

  private release(packet: OutputPacket, now: number): void {
    packet.releasedAtMs = now;
    this.released++;
    const delay = now - packet.producedAtMs;
    if (this.delays.length < DELAYS_KEPT) this.delays.push(delay);
    else this.delays[this.delayCursor++ % DELAYS_KEPT] = delay;
    this.ring.push(packet);
    if (this.ring.length - this.ringStart > OUTPUTS_KEPT) this.ringStart++;
    if (this.ringStart > OUTPUTS_KEPT) {
      this.ring.splice(0, this.ringStart);
      this.ringStart = 0;
    }
  }
}
