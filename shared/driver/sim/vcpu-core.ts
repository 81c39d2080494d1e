// The vCPU of a `sim` guest, wherever it executes (on the agent's event loop, guest.ts, or on a
// thread of its own, vcpu-thread.ts): what the next unit holds (its instruction budget, page writes
// and the outside world's events), the unit's execution on the machine with its synchronous events
// recorded, and the adaptation of the budget to the host's speed.

import type { SimMachineConfig } from './config.js';
import { Environment } from './environment.js';
import { SimMachine } from './machine.js';
import { mergeByPosition } from './recording.js';
import { type AsyncEvent, encodeUnit, type SyncEvent, type UnitHeader } from './unit-codec.js';

/** Instructions per busy millisecond assumed before the first measurement. */
export const INITIAL_INSTRUCTIONS_PER_MS = 20_000;

/** One unit to run: its budget, its page writes and the events that arrive during it. */
export interface UnitPlan {
  readonly instructionCount: number;
  readonly pageWriteCount: number;
  readonly events: AsyncEvent[];
  /** Upper bound of the pages it can write (the copy-on-write pool's admission check). */
  readonly pageWritesBound: number;
}

/** A unit executed while recording: what the log gets. */
export interface RecordedUnit {
  readonly sequence: number;
  readonly bytes: Uint8Array;
  readonly guestNs: number;
  readonly eventCount: number;
  readonly final: boolean;
}

export class VcpuCore {
  readonly environment: Environment;
  /** Share of each unit the guest may compute (1: not throttled). */
  throttle = 1;
  instructionsPerMs: number;
  private pageWriteCarry = 0;
  unitsRun = 0;
  instructionsRun = 0;
  throttledMs = 0;

  constructor(
    readonly machine: SimMachine,
    readonly config: SimMachineConfig,
    environmentSeed: number,
    /** Fixed instructions per busy millisecond; undefined: adapt to the host's speed. */
    private readonly fixedInstructionsPerMs: number | undefined,
  ) {
    this.instructionsPerMs = fixedInstructionsPerMs ?? INITIAL_INSTRUCTIONS_PER_MS;
    this.environment = new Environment(config.rates, config.payload, environmentSeed, machine.state.guestNs);
  }

  /** The next unit: its budget from the rates, the throttle and the host's speed, and its events. */
  plan(): UnitPlan {
    const rates = this.config.rates;
    const unitMs = this.config.unitMs;
    const busyFraction = rates.busyFraction * this.throttle;
    const instructionCount = Math.max(0, Math.min(0xffffffff, Math.round(busyFraction * unitMs * this.instructionsPerMs)));
    this.pageWriteCarry += (rates.pageWritesPerSec * unitMs * this.throttle) / 1000;
    const pageWriteCount = Math.floor(this.pageWriteCarry);
    this.pageWriteCarry -= pageWriteCount;
    const events = this.environment.eventsForUnit(unitMs * 1e6, instructionCount, busyFraction);
    return { instructionCount, pageWriteCount, events, pageWritesBound: SimMachine.pageWritesBound({ pageWriteCount }, events) };
  }

  /** Post-copy: the pages `plan` touches that have not arrived yet (empty when all are here). */
  missingPages(plan: UnitPlan): Uint32Array {
    const memory = this.machine.memory;
    if (memory.missingCount === 0) return new Uint32Array(0);
    return this.machine.pagesTouched(this.header(plan.instructionCount, plan.pageWriteCount, false), plan.events).filter((p) => memory.isMissing(p));
  }

  header(instructionCount: number, pageWriteCount: number, final: boolean): UnitHeader {
    const st = this.machine.state;
    return { sequence: st.unitSequence, final, startPosition: st.position, instructionCount, pageWriteCount, guestNs: final ? 0 : this.config.unitMs * 1e6 };
  }

  /**
   * Executes `plan` on the machine, and adapts the budget to the time it took. While `recording`,
   * returns the unit as the log gets it.
   */
  run(plan: UnitPlan, recording: boolean): RecordedUnit | null {
    this.throttledMs += (1 - this.throttle) * this.config.unitMs;
    const t0 = performance.now();
    const unit = this.execute(plan.instructionCount, plan.pageWriteCount, plan.events, false, recording);
    const busyMs = performance.now() - t0;
    if (this.fixedInstructionsPerMs === undefined && busyMs > 0.02 && plan.instructionCount >= 100) {
      // Exponentially weighted, so one slow unit (a GC pause) does not halve the next budget.
      const measured = plan.instructionCount / busyMs;
      this.instructionsPerMs = Math.max(100, 0.8 * this.instructionsPerMs + 0.2 * measured);
    }
    return unit;
  }

  /** The last unit, at suspend: it covers no more execution and tells the replica that the log ends. */
  runFinal(recording: boolean): RecordedUnit | null {
    return this.execute(0, 0, [], true, recording);
  }

  private execute(instructionCount: number, pageWriteCount: number, asyncEvents: AsyncEvent[], final: boolean, recording: boolean): RecordedUnit | null {
    const header = this.header(instructionCount, pageWriteCount, final);
    this.instructionsRun += instructionCount;
    if (!recording) {
      this.machine.executeUnit(header, asyncEvents, (type, position) => this.environment.sync(type, position));
      this.unitsRun++;
      return null;
    }
    const syncEvents: SyncEvent[] = [];
    this.machine.executeUnit(header, asyncEvents, (type, position) => {
      const event = this.environment.sync(type, position);
      syncEvents.push(event);
      return event;
    });
    this.unitsRun++;
    const bytes = encodeUnit(header, mergeByPosition(asyncEvents, syncEvents));
    return { sequence: header.sequence, bytes, guestNs: header.guestNs, eventCount: asyncEvents.length + syncEvents.length, final };
  }
}
