// The outside world of a running `sim` guest: the host's timer, clients sending packets, a disk
// completing reads, the wall clock, a hardware random source. This is the only nondeterminism the
// guest sees, and all of it is recorded. The random source is injected (seeded) so that a test
// can replay the same outside world; the wall clock is read for real.

import { Random } from '../../random.js';
import { PAGE_BYTES } from '../types.js';
import { fillPayload } from './content.js';
import type { PayloadKind, WorkloadRates } from './profiles.js';
import { type AsyncEvent, EventType, PACKET_BYTES_MAX, type SyncEvent } from './unit-codec.js';

export class Environment {
  private readonly random: Random;
  private readonly bootWallNs: number;
  private diskBlockCursor = 0;

  constructor(
    private readonly rates: WorkloadRates,
    private readonly payloadKind: PayloadKind,
    seed: number,
    /** Guest time at which this environment starts (a guest resumed on a new host keeps its clock). */
    private readonly guestNsAtStart: number,
    private readonly nowNs: () => number = () => performance.now() * 1e6,
  ) {
    this.random = new Random(seed);
    this.bootWallNs = nowNs();
  }

  /**
   * The asynchronous events arriving during one unit of `guestNs`, at positions within its
   * `instructionCount` instructions. Arrivals are Poisson in time; an arrival during the busy
   * part lands at the proportional instruction, one during the idle part wakes the guest at the
   * end of its busy part.
   */
  eventsForUnit(guestNs: number, instructionCount: number, busyFraction: number): AsyncEvent[] {
    const r = this.rates;
    const seconds = guestNs / 1e9;
    const events: AsyncEvent[] = [];
    const position = () => {
      const t = this.random.nextFloat();
      return t < busyFraction ? Math.floor((t / busyFraction) * instructionCount) : instructionCount;
    };
    for (let n = this.random.nextPoisson(r.timerHz * seconds); n > 0; n--) events.push({ type: EventType.Timer, position: position() });
    for (let n = this.random.nextPoisson(r.packetsPerSec * seconds); n > 0; n--) {
      // Sizes spread uniformly over 0.5x..1.5x the mean, as a mix of requests and acks does.
      const length = Math.min(PACKET_BYTES_MAX, Math.max(1, Math.round(r.packetBytes * (0.5 + this.random.nextFloat()))));
      const payload = new Uint8Array(length);
      fillPayload(payload, this.payloadKind, this.random);
      events.push({ type: EventType.NetRx, position: position(), payload });
    }
    for (let n = this.random.nextPoisson(r.diskReadsPerSec * seconds); n > 0; n--) {
      const data = new Uint8Array(PAGE_BYTES);
      fillPayload(data, this.payloadKind, this.random);
      // Mostly sequential reads (readahead), sometimes a seek.
      this.diskBlockCursor = this.random.nextInt(8) === 0 ? this.random.nextU32() : this.diskBlockCursor + 1;
      events.push({ type: EventType.DiskRead, position: position(), block: this.diskBlockCursor >>> 0, data });
    }
    events.sort((a, b) => a.position - b.position);
    return events;
  }

  /** Answers a synchronous read: the guest's clock from the host's wall clock, or hardware random. */
  sync(type: EventType.Clock | EventType.Random, position: number): SyncEvent {
    if (type === EventType.Clock) {
      return { type, position, valueNs: Math.round(this.guestNsAtStart + this.nowNs() - this.bootWallNs) };
    }
    return { type, position, low: this.random.nextU32(), high: this.random.nextU32() };
  }
}
