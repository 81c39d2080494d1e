// What a `sim` guest's vCPU thread sends its agent, batched. Every message wakes the agent's event
// loop, and on a busy host the woken loop takes the core from the vCPU that woke it: a unit sealed
// every 10 ms cost the guest the agent's whole handling of it, about 4% of its speed on two cores.
// A protection lets its sealed units wait on the vCPU's side for up to `batchMs` of wall time and
// go together (as Remus ships an epoch at once), at that much more lag at the standby; a unit that
// produced output goes at once with everything before it, so that a sync-mode output waits no
// longer for its standby's receipt. Messages keep their order; nothing waits across a park, a
// stop or a wait for the agent (the vCPU thread flushes first).

import type { VcpuMessage } from './vcpu-protocol.js';

interface Queued {
  readonly message: VcpuMessage;
  readonly transfer: ArrayBuffer[];
}

export class VcpuOutbox {
  private queued: Queued[] = [];
  /** When the oldest message queued was added (performance.now()). */
  private since = 0;
  /** A message queued that must not wait (an output). */
  private urgent = false;
  private units = 0;

  constructor(
    private readonly send: (message: VcpuMessage, transfer: ArrayBuffer[]) => void,
    /** Told the sealed units queued whenever their number changes. */
    private readonly unitsQueued: (units: number) => void = () => {},
  ) {}

  get size(): number {
    return this.queued.length;
  }

  /** Queues `message` (sent by the next flush that finds it due); `urgent`: due at once. */
  add(message: VcpuMessage, transfer: ArrayBuffer[], urgent: boolean, now: number): void {
    if (this.queued.length === 0) this.since = now;
    this.queued.push({ message, transfer });
    this.urgent ||= urgent;
    if (message.kind === 'unit') this.unitsQueued(++this.units);
  }

  /** When what is queued must go, for batches of `batchMs` (Infinity: nothing queued). */
  dueAt(batchMs: number): number {
    if (this.queued.length === 0) return Number.POSITIVE_INFINITY;
    return this.urgent ? this.since : this.since + batchMs;
  }

  /** Sends what is queued if it is due at `now`. */
  flushIfDue(now: number, batchMs: number): void {
    if (now >= this.dueAt(batchMs)) this.flush();
  }

  /** Sends everything queued, in order. */
  flush(): void {
    if (this.queued.length === 0) return;
    const queued = this.queued;
    this.queued = [];
    this.urgent = false;
    for (const q of queued) this.send(q.message, q.transfer);
    if (this.units > 0) this.unitsQueued((this.units = 0));
  }
}
