// The deterministic core of the `sim` guest: memory, a vCPU and two devices (a network card with
// a receive ring, a disk), executing the workload's code one time unit at a time.
//
// Execution is a pure function of (memory, vCPU/device state, the unit's header, its events):
// the same inputs give the same state, bit for bit, on the source and on a replica. Nothing here
// reads a clock, a random source or anything outside the machine; all nondeterminism arrives as
// events:
// - asynchronous events (timer interrupt, packet received, disk read completed) are delivered
//   when the instruction count reaches their recorded position;
// - synchronous events (clock read, hardware random read) happen when the workload's code asks,
//   at a position that depends on memory contents; the value comes from a `SyncSource`: the
//   outside world while recording, the log while replaying.
//
// One instruction reads a word of guest memory from the working set and mixes it into an
// accumulator; page writes (evenly spaced over the unit) store accumulator-derived data. So the
// busy part of a unit is real CPU work on guest memory, and every later value depends on it.

import { assert } from '../../assert.js';
import { PAGE_BYTES } from '../types.js';
import { MachineState } from './machine-state.js';
import { GuestMemory, PAGE_WORDS, SEGMENT_MASK, SEGMENT_SHIFT } from './memory.js';
import type { WorkloadRates } from './profiles.js';
import { OutputDevice } from './output.js';
import { type AsyncEvent, EventType, type SyncEvent, type UnitHeader } from './unit-codec.js';

/** Where the guest's devices and workload live in its memory (all derived from size and rates). */
export interface MemoryLayout {
  /** Page holding the timer's tick log. */
  readonly timerPage: number;
  /** Page holding the network card's receive descriptors. */
  readonly rxDescriptorPage: number;
  /** Receive ring: packets are copied here, wrapping. */
  readonly rxRingFirstPage: number;
  readonly rxRingPages: number;
  /** Page cache: completed disk reads land here. */
  readonly pageCacheFirstPage: number;
  readonly pageCachePages: number;
  /** Working set of the workload's own reads and writes. */
  readonly workingSetFirstPage: number;
  readonly workingSetPages: number;
}

export function memoryLayout(pageCount: number, rates: WorkloadRates): MemoryLayout {
  assert(pageCount >= 1024, () => `guest of ${pageCount} pages is below the 1024-page minimum`);
  const rxRingFirstPage = 16;
  const rxRingPages = Math.min(512, Math.max(16, pageCount >>> 8));
  const workingSetFirstPage = rxRingFirstPage + rxRingPages;
  const usable = pageCount - workingSetFirstPage;
  const pageCachePages = Math.max(64, Math.floor(pageCount / 8));
  return {
    timerPage: 0,
    rxDescriptorPage: 1,
    rxRingFirstPage,
    rxRingPages,
    pageCacheFirstPage: pageCount - pageCachePages,
    pageCachePages,
    workingSetFirstPage,
    workingSetPages: Math.max(1, Math.floor(usable * rates.workingSetFraction)),
  };
}

export { MachineState } from './machine-state.js';

/** Supplies the value of a synchronous event the guest asks for at `position` (within the unit). */
export type SyncSource = (type: EventType.Clock | EventType.Random, position: number) => SyncEvent;

/** Mixes a 32-bit value into the accumulator (FNV-style multiply, then a rotate). */
function mix(acc: number, value: number): number {
  const x = Math.imul(acc ^ value, 0x01000193);
  return ((x << 13) | (x >>> 19)) >>> 0;
}

export class SimMachine {
  readonly memory: GuestMemory;
  readonly layout: MemoryLayout;
  state = new MachineState();
  /** Replies to the packets it receives (output.ts); it goes with the machine to a replica made a guest. */
  readonly output: OutputDevice;

  constructor(
    memoryBytes: number,
    readonly rates: WorkloadRates,
    /** Its memory, if it exists already (a vCPU thread's view of a guest's shared memory). */
    memory?: GuestMemory,
    /** Where its replies go (a vCPU thread relays them to the guest's device on the agent's thread). */
    output?: OutputDevice,
  ) {
    this.memory = memory ?? new GuestMemory(memoryBytes);
    this.output = output ?? new OutputDevice();
    this.layout = memoryLayout(this.memory.pageCount, rates);
  }

  /** Synchronous events expected in a unit of this header, per instruction, as a 32-bit threshold. */
  private syncThreshold(header: UnitHeader): number {
    if (header.instructionCount === 0) return 0;
    const expected = ((this.rates.clockReadsPerSec + this.rates.randomReadsPerSec) * header.guestNs) / 1e9;
    return Math.min(4294967295, Math.floor((expected / header.instructionCount) * 4294967296));
  }

  /** Position within the unit at which page write `k` (0-based) of `count` happens. */
  private static writePosition(k: number, count: number, instructionCount: number): number {
    return Math.floor(((k + 1) * instructionCount) / (count + 1));
  }

  /**
   * Executes one unit: the workload's instructions and page writes, with `asyncEvents` delivered
   * at their positions and synchronous events answered by `sync`. Advances the state to the next
   * unit boundary.
   */
  executeUnit(header: UnitHeader, asyncEvents: readonly AsyncEvent[], sync: SyncSource): void {
    const st = this.state;
    assert(header.startPosition === st.position, () => `unit ${header.sequence} starts at ${header.startPosition}, machine is at ${st.position}`);
    const rxBefore = st.rxPackets;
    const total = header.instructionCount;
    const writes = header.pageWriteCount;
    const threshold = this.syncThreshold(header);
    const clockShare = this.rates.clockReadsPerSec / Math.max(1e-9, this.rates.clockReadsPerSec + this.rates.randomReadsPerSec);
    const clockCut = Math.floor(clockShare * 65536);
    let pos = 0;
    let writeIndex = 0;
    let eventIndex = 0;
    for (;;) {
      while (eventIndex < asyncEvents.length && asyncEvents[eventIndex].position === pos) this.deliver(asyncEvents[eventIndex++]);
      while (writeIndex < writes && SimMachine.writePosition(writeIndex, writes, total) === pos) {
        this.pageWrite();
        writeIndex++;
      }
      if (pos >= total) break;
      let stop = total;
      if (eventIndex < asyncEvents.length) stop = Math.min(stop, asyncEvents[eventIndex].position);
      if (writeIndex < writes) stop = Math.min(stop, SimMachine.writePosition(writeIndex, writes, total));
      const ran = this.runInstructions(stop - pos, threshold);
      pos += Math.abs(ran);
      if (ran < 0) {
        // The last instruction read the clock or the random source.
        const type = (st.acc & 0xffff) < clockCut ? EventType.Clock : EventType.Random;
        const event = sync(type, pos);
        if (event.type === EventType.Clock) {
          st.clockReads++;
          st.lastClockNs = event.valueNs;
          st.acc = mix(mix(st.acc, event.valueNs % 4294967296), Math.floor(event.valueNs / 4294967296));
        } else {
          st.randomReads++;
          st.acc = mix(mix(st.acc, event.low), event.high);
        }
      }
    }
    assert(eventIndex === asyncEvents.length, () => `unit ${header.sequence}: ${asyncEvents.length - eventIndex} events past its end`);
    st.position += total;
    st.unitSequence = header.sequence + 1;
    st.guestNs += header.guestNs;
    this.output.afterUnit(header.sequence, rxBefore, st.rxPackets, st.acc);
  }

  /**
   * Runs up to `count` read instructions. Returns how many ran; negative when it stopped early
   * because the last one asked for a synchronous value (the caller supplies it).
   */
  private runInstructions(count: number, syncThreshold: number): number {
    const st = this.state;
    const segments = this.memory.segments;
    const first = this.layout.workingSetFirstPage;
    const span = this.layout.workingSetPages;
    let s = st.rng | 0;
    let acc = st.acc | 0;
    let i = 0;
    let synced = false;
    while (i < count) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      const u = s >>> 0;
      const page = first + Math.floor((u * span) / 4294967296);
      const seg = segments[page >>> SEGMENT_SHIFT];
      const word = seg === undefined ? 0 : seg[((page & SEGMENT_MASK) << 10) | (u & 1023)];
      const x = Math.imul(acc ^ word, 0x01000193) + (u >>> 11);
      acc = (x << 13) | (x >>> 19);
      i++;
      if (acc >>> 0 < syncThreshold) {
        synced = true;
        break;
      }
    }
    st.rng = s >>> 0;
    st.acc = acc >>> 0;
    return synced ? -i : i;
  }

  /** One page write of the workload's own code. */
  private pageWrite(): void {
    const st = this.state;
    const rates = this.rates;
    const { workingSetFirstPage, workingSetPages } = this.layout;
    st.rng = xorshift(st.rng);
    let page: number;
    if (st.rng / 4294967296 < rates.sequentialFraction) {
      page = workingSetFirstPage + (st.sweepCursor % workingSetPages);
      st.sweepCursor = (st.sweepCursor + 1) % workingSetPages;
    } else {
      st.rng = xorshift(st.rng);
      page = workingSetFirstPage + Math.floor((st.rng * workingSetPages) / 4294967296);
    }
    const words = Math.max(1, rates.bytesPerPageWrite >>> 2);
    st.rng = xorshift(st.rng);
    const offset = words >= PAGE_WORDS ? 0 : st.rng % (PAGE_WORDS - words + 1);
    const seg = this.memory.prepareWrite(page);
    const base = (page & SEGMENT_MASK) * PAGE_WORDS + offset;
    // Half the words high-entropy, half small counters: written data compresses partly, as
    // real heap and buffer contents do.
    const acc = st.acc;
    const tick = st.jiffies & 0xffff;
    for (let k = 0; k < words; k++) seg[base + k] = k & 1 ? (k + tick) & 0xffff : acc ^ Math.imul(k, 0x9e3779b1);
    st.pageWrites++;
    st.acc = mix(acc, page);
  }

  private deliver(event: AsyncEvent): void {
    const st = this.state;
    const memory = this.memory;
    const layout = this.layout;
    switch (event.type) {
      case EventType.Timer: {
        st.jiffies = (st.jiffies + 1) >>> 0;
        const seg = memory.prepareWrite(layout.timerPage);
        seg[(layout.timerPage & SEGMENT_MASK) * PAGE_WORDS + (st.jiffies & (PAGE_WORDS - 1))] = st.acc | 0;
        st.acc = mix(st.acc, st.jiffies);
        break;
      }
      case EventType.NetRx: {
        const payload = event.payload;
        const ringBytes = layout.rxRingPages * PAGE_BYTES;
        let head = st.rxHead % ringBytes;
        let copied = 0;
        while (copied < payload.length) {
          const page = layout.rxRingFirstPage + Math.floor(head / PAGE_BYTES);
          const inPage = head % PAGE_BYTES;
          const n = Math.min(payload.length - copied, PAGE_BYTES - inPage);
          const seg = memory.prepareWrite(page);
          const bytes = new Uint8Array(seg.buffer, seg.byteOffset + (page & SEGMENT_MASK) * PAGE_BYTES, PAGE_BYTES);
          bytes.set(payload.subarray(copied, copied + n), inPage);
          copied += n;
          head = (head + n) % ringBytes;
        }
        // Descriptors are 64-byte aligned, like a real NIC's.
        st.rxHead = (head + 63) & ~63 & 0x7fffffff;
        st.rxPackets = (st.rxPackets + 1) >>> 0;
        st.rxBytes += payload.length;
        const desc = memory.prepareWrite(layout.rxDescriptorPage);
        desc[(layout.rxDescriptorPage & SEGMENT_MASK) * PAGE_WORDS + (st.rxPackets & (PAGE_WORDS - 1))] = (payload.length | (st.acc << 16)) | 0;
        let sample = payload.length;
        if (payload.length >= 4) sample ^= payload[0] | (payload[1] << 8) | (payload[payload.length - 2] << 16) | (payload[payload.length - 1] << 24);
        st.acc = mix(st.acc, sample >>> 0);
        break;
      }
      case EventType.DiskRead: {
        const page = layout.pageCacheFirstPage + (event.block % layout.pageCachePages);
        const seg = memory.prepareWrite(page);
        new Uint8Array(seg.buffer, seg.byteOffset + (page & SEGMENT_MASK) * PAGE_BYTES, PAGE_BYTES).set(event.data);
        st.diskReads = (st.diskReads + 1) >>> 0;
        st.acc = mix(mix(st.acc, event.block), event.data[0] | (event.data[4095] << 8));
        break;
      }
    }
  }

  /**
   * Every page the next unit will touch (read or write), without touching any: a dry run of the
   * unit's address stream. Addresses depend only on the vCPU's random state, the sweep cursor,
   * the receive ring's head and the events, never on memory contents, so this is exact. Post-copy
   * uses it to fetch missing pages before the unit runs (a vCPU blocked on its faults).
   */
  pagesTouched(header: UnitHeader, asyncEvents: readonly AsyncEvent[]): Uint32Array {
    const st = this.state;
    const layout = this.layout;
    const rates = this.rates;
    const touched = new Set<number>();
    const first = layout.workingSetFirstPage;
    const span = layout.workingSetPages;
    const total = header.instructionCount;
    const writes = header.pageWriteCount;
    let s = st.rng | 0;
    let sweep = st.sweepCursor;
    let rxHead = st.rxHead;
    let pos = 0;
    let writeIndex = 0;
    let eventIndex = 0;
    for (;;) {
      while (eventIndex < asyncEvents.length && asyncEvents[eventIndex].position === pos) {
        const event = asyncEvents[eventIndex++];
        if (event.type === EventType.Timer) touched.add(layout.timerPage);
        else if (event.type === EventType.DiskRead) touched.add(layout.pageCacheFirstPage + (event.block % layout.pageCachePages));
        else {
          const ringBytes = layout.rxRingPages * PAGE_BYTES;
          let head = rxHead % ringBytes;
          let copied = 0;
          while (copied < event.payload.length) {
            touched.add(layout.rxRingFirstPage + Math.floor(head / PAGE_BYTES));
            const n = Math.min(event.payload.length - copied, PAGE_BYTES - (head % PAGE_BYTES));
            copied += n;
            head = (head + n) % ringBytes;
          }
          rxHead = (head + 63) & ~63 & 0x7fffffff;
          touched.add(layout.rxDescriptorPage);
        }
      }
      while (writeIndex < writes && SimMachine.writePosition(writeIndex, writes, total) === pos) {
        // As pageWrite: one draw for sequential-or-random, one more for a random page, one for the offset.
        s = xorshift(s);
        let page: number;
        if (s / 4294967296 < rates.sequentialFraction) {
          page = first + (sweep % span);
          sweep = (sweep + 1) % span;
        } else {
          s = xorshift(s);
          page = first + Math.floor((s * span) / 4294967296);
        }
        s = xorshift(s);
        touched.add(page);
        writeIndex++;
      }
      if (pos >= total) break;
      let stop = total;
      if (eventIndex < asyncEvents.length) stop = Math.min(stop, asyncEvents[eventIndex].position);
      if (writeIndex < writes) stop = Math.min(stop, SimMachine.writePosition(writeIndex, writes, total));
      for (; pos < stop; pos++) {
        s ^= s << 13;
        s ^= s >>> 17;
        s ^= s << 5;
        touched.add(first + Math.floor(((s >>> 0) * span) / 4294967296));
      }
    }
    return Uint32Array.from(touched).sort();
  }

  /** Upper bound of the pages one unit can write, for the copy-on-write pool's admission check. */
  static pageWritesBound(header: Pick<UnitHeader, 'pageWriteCount'>, asyncEvents: readonly AsyncEvent[]): number {
    let n = header.pageWriteCount;
    for (const e of asyncEvents) n += e.type === EventType.NetRx ? 2 + Math.ceil(e.payload.length / PAGE_BYTES) : 1;
    return n;
  }
}

function xorshift(x: number): number {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}
