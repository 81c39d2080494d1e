// The simulated network between the two agents: one link, a transmitter each way (messages
// serialize behind each other at the link's rate), a latency with jitter drawn from the seed, and
// lanes: a lane is one direction of one call (a Transfer stream, a unary call), and keeps its
// messages in order as HTTP/2 keeps a stream's. Messages of different lanes overtake each other
// freely (jitter, a message held back), which is the reordering a real connection allows. A stall
// holds every lane of a direction until it ends; what was in flight then arrives, in order.
//
// Everything happens on the simulation's ManualClock, and every random choice comes from the
// seed's Random: the same seed delivers the same messages at the same instants.

import type { ManualClock, Timer } from '../../../shared/clock.js';
import type { Random } from '../../../shared/random.js';

export type Direction = 'toTarget' | 'toSource';

export interface LinkModel {
  /** One-way latency, and the jitter added to it (uniform in [0, jitterMs)). */
  latencyMs: number;
  jitterMs: number;
  /** The link's rate each way. */
  bytesPerMs: number;
}

interface InFlight {
  dueMs: number;
  bytes: number;
  deliver: () => void;
}

/** One direction of one call: its messages in order, and the one timer armed for the first. */
class Lane {
  readonly queue: InFlight[] = [];
  timer: Timer | null = null;
  bytes = 0;
  /** Called when the bytes in flight fall to the low mark (a writer waits for 'drain'). */
  onDrained: (() => void) | null = null;

  constructor(readonly direction: Direction) {}
}

export class SimNetwork {
  private readonly lanes = new Map<string, Lane>();
  private readonly txFreeAtMs: Record<Direction, number> = { toTarget: 0, toSource: 0 };
  private readonly stalledUntilMs: Record<Direction, number> = { toTarget: 0, toSource: 0 };

  constructor(
    private readonly clock: ManualClock,
    private readonly random: Random,
    readonly link: LinkModel,
  ) {}

  /** A one-way delay as a message of the link sees it (an error's detection, a refused connect). */
  delayMs(): number {
    return this.link.latencyMs + this.random.nextFloat() * this.link.jitterMs;
  }

  /** Bytes sent on `laneId` and not yet delivered. */
  bytesInFlight(laneId: string): number {
    return this.lanes.get(laneId)?.bytes ?? 0;
  }

  /** Calls `onDrained` once the lane has delivered everything it holds now. */
  whenDrained(laneId: string, onDrained: () => void): void {
    const lane = this.lanes.get(laneId);
    if (lane === undefined || lane.bytes === 0) onDrained();
    else lane.onDrained = onDrained;
  }

  /**
   * Carries a message of `bytes` on lane `laneId`; `deliver` runs when it arrives, after every
   * message sent on the lane before it. `holdMs` holds it back longer (and the lane behind it).
   */
  carry(laneId: string, direction: Direction, bytes: number, deliver: () => void, holdMs = 0): void {
    const lane = this.lane(laneId, direction);
    const nowMs = this.clock.now();
    const txStartMs = Math.max(nowMs, this.txFreeAtMs[direction]);
    this.txFreeAtMs[direction] = txStartMs + bytes / this.link.bytesPerMs;
    const dueMs = this.txFreeAtMs[direction] + this.delayMs() + holdMs;
    lane.queue.push({ dueMs, bytes, deliver });
    lane.bytes += bytes;
    if (lane.queue.length === 1) this.arm(lane);
  }

  /** Drops whatever lane `laneId` still carries (its connection broke). */
  close(laneId: string): void {
    const lane = this.lanes.get(laneId);
    if (lane === undefined) return;
    lane.timer?.cancel();
    this.lanes.delete(laneId);
  }

  /** Holds everything going `direction` (or both ways) for `ms` from now. */
  stall(direction: Direction | 'both', ms: number): void {
    const untilMs = this.clock.now() + ms;
    for (const d of direction === 'both' ? (['toTarget', 'toSource'] as const) : [direction]) this.stalledUntilMs[d] = Math.max(this.stalledUntilMs[d], untilMs);
  }

  /** Whether `direction` is stalled now. */
  stalled(direction: Direction): boolean {
    return this.clock.now() < this.stalledUntilMs[direction];
  }

  private lane(laneId: string, direction: Direction): Lane {
    let lane = this.lanes.get(laneId);
    if (lane === undefined) {
      lane = new Lane(direction);
      this.lanes.set(laneId, lane);
    }
    return lane;
  }

  /** Arms the lane's timer for its first message (or the stall's end, if later). */
  private arm(lane: Lane): void {
    const head = lane.queue[0];
    if (head === undefined) {
      lane.timer = null;
      return;
    }
    const atMs = Math.max(head.dueMs, this.stalledUntilMs[lane.direction]);
    lane.timer = this.clock.timeout(Math.max(0, atMs - this.clock.now()), () => this.fire(lane));
  }

  private fire(lane: Lane): void {
    if (this.stalled(lane.direction)) return this.arm(lane);
    const message = lane.queue.shift()!;
    lane.bytes -= message.bytes;
    this.arm(lane);
    message.deliver();
    if (lane.bytes === 0 && lane.onDrained !== null) {
      const drained = lane.onDrained;
      lane.onDrained = null;
      drained();
    }
  }
}
