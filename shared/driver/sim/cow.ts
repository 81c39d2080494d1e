// The copy-on-write state of a live checkpoint or a delta in progress: which pages the checkpoint
// has still to copy, and the old contents of pages the guest wrote before the checkpoint reached
// them. The guest (the writer) and the checkpoint (the reader) may run on two threads at once (the
// vCPU on its own thread, vcpu-thread.ts), so everything lives in shared memory and each page's
// state changes only by an atomic compare-and-swap:
//
//   PENDING -> READING -> DONE           the checkpoint copies the live page (a write waits meanwhile)
//   PENDING -> COPYING -> PRESERVED      the guest keeps the old contents first (the checkpoint waits)
//   PENDING -> PRESERVED_ZERO            the same for a page never written: nothing to keep
//   PRESERVED(_ZERO) -> DONE             the checkpoint takes the kept contents
// A write to a DONE or PRESERVED page needs no copy. Each wait lasts one 4 KiB copy of the other
// thread.
//
// Preserved pages go into slots of one shared buffer of `preservedBytesMax` (its memory is only
// committed as slots are first used); free slots circulate in a ring that the checkpoint fills and
// the guest empties (one producer, one consumer). The guest runner asks `hasRoomFor` before each
// unit and stalls while the pool is full, as a vCPU blocked on a write-protect fault would. A unit
// that finds the pool empty runs even if it writes more pages than the pool holds (as before the
// pool was shared): the pages past the slots go to the overflow, each in a buffer of its own, given
// to the checkpoint directly or, across threads, by a message it receives synchronously.

import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { assert } from '../../assert.js';
import { PAGE_BYTES } from '../types.js';

const PENDING = 0;
const DONE = 1;
const READING = 2;
const COPYING = 3;
const PRESERVED = 4;
const PRESERVED_ZERO = 5;

/** Words of the control array. */
const HEAD = 0; // slots taken by the guest, in all
const TAIL = 1; // slots given back by the checkpoint, in all (plus the initial ones)
const RELEASED = 2; // 1 once the checkpoint ended
const ROOM = 3; // bumped whenever room is made, for a guest thread waiting on it
const OVERFLOW = 4; // pages kept in the overflow and not yet taken
const CONTROL_WORDS = 5;

/** The shared buffers of a CopyOnWrite, as the vCPU thread receives them. */
export interface CopyOnWriteShared {
  pageCount: number;
  preservedBytesMax: number;
  state: SharedArrayBuffer;
  slotOf: SharedArrayBuffer;
  slots: SharedArrayBuffer;
  ring: SharedArrayBuffer;
  control: SharedArrayBuffer;
}

/** The live pages a checkpoint reads (GuestMemory's). */
export interface LiveMemory {
  /** A view of the page, or null for a page never written (zero). */
  pageBytesOrNull(page: number): Uint8Array | null;
}

/** Copies `bytes` (null: a zero page) into `out` at `at`; with `elideZero`, a zero page is not copied. Returns whether it was copied. */
function copyPage(bytes: Uint8Array | null, out: Uint8Array, at: number, elideZero: boolean): boolean {
  if (bytes === null || (elideZero && isZeroPage(bytes))) {
    if (!elideZero) out.fill(0, at, at + PAGE_BYTES);
    return !elideZero;
  }
  out.set(bytes, at);
  return true;
}

/** Whether a page is all zero; word at a time (a non-zero page almost always shows it in its first words). */
export function isZeroPage(bytes: Uint8Array): boolean {
  const words = new Int32Array(bytes.buffer, bytes.byteOffset, PAGE_BYTES / 4);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}

/** Waits a moment for the other thread to finish one page copy. */
function pause(spins: number): void {
  if (spins > 64) Atomics.wait(PAUSE, 0, 0, 0.05);
}
const PAUSE = new Int32Array(new SharedArrayBuffer(4));

export class CopyOnWrite {
  private readonly state: Uint8Array;
  private readonly slotOf: Int32Array;
  private readonly slots: Uint8Array;
  private readonly ring: Int32Array;
  private readonly control: Int32Array;
  private readonly slotCount: number;
  /** Overflow pages the checkpoint holds (received, or put here by a guest on this thread). */
  private readonly overflow = new Map<number, Uint8Array>();
  /** Across threads: the guest's side posts overflow pages here, the checkpoint's side receives them. */
  private overflowPort: MessagePort | null = null;
  private waiters: Array<() => void> = [];

  /**
   * `only`: the checkpoint covers just these pages (a delta): every other page counts as done, so
   * writes to it need no copy. `shared`: the buffers of an existing CopyOnWrite (the other thread's).
   */
  constructor(
    readonly pageCount: number,
    readonly preservedBytesMax: number,
    only?: Uint32Array,
    shared?: CopyOnWriteShared,
  ) {
    this.slotCount = Math.max(1, Math.floor(preservedBytesMax / PAGE_BYTES));
    const s = shared ?? {
      pageCount,
      preservedBytesMax,
      state: new SharedArrayBuffer(pageCount),
      slotOf: new SharedArrayBuffer(4 * pageCount),
      slots: new SharedArrayBuffer(this.slotCount * PAGE_BYTES),
      ring: new SharedArrayBuffer(4 * this.slotCount),
      control: new SharedArrayBuffer(4 * CONTROL_WORDS),
    };
    this.state = new Uint8Array(s.state);
    this.slotOf = new Int32Array(s.slotOf);
    this.slots = new Uint8Array(s.slots);
    this.ring = new Int32Array(s.ring);
    this.control = new Int32Array(s.control);
    if (shared !== undefined) return;
    for (let i = 0; i < this.slotCount; i++) this.ring[i] = i;
    this.control[TAIL] = this.slotCount;
    if (only !== undefined) {
      this.state.fill(DONE);
      for (const page of only) this.state[page] = PENDING;
    }
  }

  /** The buffers to hand to the vCPU thread, which builds its own CopyOnWrite over them. */
  shared(): CopyOnWriteShared {
    const buffer = (a: { buffer: ArrayBufferLike }) => a.buffer as SharedArrayBuffer;
    return { pageCount: this.pageCount, preservedBytesMax: this.preservedBytesMax, state: buffer(this.state), slotOf: buffer(this.slotOf), slots: buffer(this.slots), ring: buffer(this.ring), control: buffer(this.control) };
  }

  /** Across threads: where overflow pages go (the guest's side) or come from (the checkpoint's side). */
  setOverflowPort(port: MessagePort): void {
    this.overflowPort = port;
  }

  get released(): boolean {
    return Atomics.load(this.control, RELEASED) === 1;
  }

  private get freeSlots(): number {
    return Atomics.load(this.control, TAIL) - Atomics.load(this.control, HEAD);
  }

  get preservedBytes(): number {
    return (this.slotCount - this.freeSlots + Atomics.load(this.control, OVERFLOW)) * PAGE_BYTES;
  }

  hasRoomFor(pageWrites: number): boolean {
    return this.preservedBytes + pageWrites * PAGE_BYTES <= this.preservedBytesMax;
  }

  /** Resolves when preserved pages were released (or the checkpoint ended): a guest on this thread. */
  waitForRoom(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Blocks until room was made since `roomSeen` or `timeoutMs` passed: a guest on its own thread. */
  waitForRoomSync(roomSeen: number, timeoutMs: number): void {
    Atomics.wait(this.control, ROOM, roomSeen, timeoutMs);
  }

  /** The room counter now, for waitForRoomSync. */
  get roomSeen(): number {
    return Atomics.load(this.control, ROOM);
  }

  /** Whether a write to `page` must call beforeWrite first (the checkpoint has not copied it yet, or is copying it). */
  needsCopy(page: number): boolean {
    const state = Atomics.load(this.state, page);
    return (state === PENDING || state === READING) && !this.released;
  }

  /**
   * The guest is about to write `page`, whose live contents are `live` (`null`: never written,
   * zero): keeps them if the checkpoint has not copied the page yet. Called before every write.
   */
  beforeWrite(page: number, live: Uint8Array | null): void {
    for (let spins = 0; ; spins++) {
      const was = Atomics.compareExchange(this.state, page, PENDING, COPYING);
      if (was === PENDING) break;
      if (was !== READING) return;
      pause(spins);
    }
    if (live === null) {
      Atomics.store(this.state, page, PRESERVED_ZERO);
      return;
    }
    if (this.freeSlots > 0) {
      const head = Atomics.load(this.control, HEAD);
      const slot = this.ring[head % this.slotCount];
      this.slots.set(live, slot * PAGE_BYTES);
      this.slotOf[page] = slot;
      Atomics.store(this.control, HEAD, head + 1);
    } else {
      Atomics.add(this.control, OVERFLOW, 1);
      this.slotOf[page] = -1;
      if (this.overflowPort === null) this.overflow.set(page, live.slice());
      else this.overflowPort.postMessage({ page, bytes: live.slice() });
    }
    Atomics.store(this.state, page, PRESERVED);
  }

  /**
   * The checkpoint takes `page`: copies its contents as of the instant into `out` at `at` and
   * returns true. A page that was zero then is not copied with `elideZero` (returns false), and
   * written as zeros without. The page counts as done afterwards.
   */
  copyOut(page: number, memory: LiveMemory, out: Uint8Array, at: number, elideZero: boolean): boolean {
    for (let spins = 0; ; spins++) {
      const was = Atomics.compareExchange(this.state, page, PENDING, READING);
      if (was === PENDING || was === DONE) {
        // Not written since the instant (or outside this checkpoint): the live page is the instant's.
        const copied = copyPage(memory.pageBytesOrNull(page), out, at, elideZero);
        if (was === PENDING) Atomics.store(this.state, page, DONE);
        return copied;
      }
      if (was === PRESERVED_ZERO) {
        Atomics.store(this.state, page, DONE);
        return copyPage(null, out, at, elideZero);
      }
      if (was === PRESERVED) return this.takePreserved(page, out, at, elideZero);
      pause(spins);
    }
  }

  private takePreserved(page: number, out: Uint8Array, at: number, elideZero: boolean): boolean {
    const slot = this.slotOf[page];
    let copied: boolean;
    if (slot >= 0) {
      copied = copyPage(this.slots.subarray(slot * PAGE_BYTES, (slot + 1) * PAGE_BYTES), out, at, elideZero);
      const tail = Atomics.load(this.control, TAIL);
      this.ring[tail % this.slotCount] = slot;
      Atomics.store(this.control, TAIL, tail + 1);
    } else {
      copied = copyPage(this.overflowPage(page), out, at, elideZero);
      Atomics.sub(this.control, OVERFLOW, 1);
    }
    Atomics.store(this.state, page, DONE);
    this.wake();
    return copied;
  }

  /** An overflow page: posted before the page was marked preserved, so it is in the port by now. */
  private overflowPage(page: number): Uint8Array {
    for (;;) {
      const bytes = this.overflow.get(page);
      if (bytes !== undefined) {
        this.overflow.delete(page);
        return bytes;
      }
      const received = this.overflowPort === null ? undefined : receiveMessageOnPort(this.overflowPort);
      assert(received !== undefined, () => `page ${page} was preserved in the overflow, which does not hold it`);
      const message = received.message as { page: number; bytes: Uint8Array };
      this.overflow.set(message.page, message.bytes);
    }
  }

  /** The guest's side lets go of a checkpoint that ended: closes its overflow channel, changes nothing shared. */
  detach(): void {
    this.overflowPort?.close();
    this.overflowPort = null;
  }

  /** Ends the checkpoint: releases everything and lets a stalled guest go on. */
  release(): void {
    Atomics.store(this.control, RELEASED, 1);
    this.overflow.clear();
    this.overflowPort?.close();
    this.overflowPort = null;
    this.wake();
  }

  private wake(): void {
    Atomics.add(this.control, ROOM, 1);
    Atomics.notify(this.control, ROOM);
    const waiters = this.waiters;
    this.waiters = [];
    for (const resolve of waiters) resolve();
  }
}
