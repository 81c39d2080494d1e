// A `sim` guest's vCPU on a thread of its own (a worker thread), as a hypervisor runs each vCPU on
// a host thread beside its own work: the agent's event loop moves data while the guest computes.
// This thread runs units in real time and nothing else: it has no event loop of its own to serve
// (it sleeps and waits with Atomics.wait), it writes guest memory in shared buffers (memory.ts,
// cow.ts), sends each unit it seals while recording to the agent, and stops between two units when
// the agent asks (vcpu-protocol.ts). What it sends goes through its outbox, in batches while the
// agent asks for them (vcpu-outbox.ts).

import { parentPort, receiveMessageOnPort } from 'node:worker_threads';
import { CopyOnWrite } from './cow.js';
import { MachineState, SimMachine } from './machine.js';
import { GuestMemory } from './memory.js';
import { OutputDevice } from './output.js';
import { type UnitPlan, VcpuCore } from './vcpu-core.js';
import { VcpuOutbox } from './vcpu-outbox.js';
import { COMMAND, CONTROL, epochNowMs, STATS, type VcpuCommand, type VcpuInit, type VcpuMessage, VCPU_STATE } from './vcpu-protocol.js';

/** The guest's output device is the agent's (it gates what leaves the host): a unit's replies are made there. */
class RelayedOutput extends OutputDevice {
  constructor(private readonly relay: (message: VcpuMessage) => void) {
    super();
  }

  override afterUnit(unit: number, rxBefore: number, rxAfter: number, stateHash: number): void {
    if (rxAfter !== rxBefore) this.relay({ kind: 'output', unit, rxBefore, rxAfter, stateHash, producedAtEpochMs: epochNowMs() });
  }
}

/** Longest single wait: every wait checks the command again at least this often. */
const WAIT_SLICE_MS = 50;

class VcpuThread {
  private readonly control: Int32Array;
  private readonly stats: Float64Array;
  private readonly state: Uint8Array;
  private readonly machine: SimMachine;
  private readonly core: VcpuCore;
  /** A unit planned but not run yet, because the vCPU parked while it waited for room or pages. */
  private pending: UnitPlan | null = null;
  private fetchRequest = 0;
  private readonly unitWrites: number[] = [];
  private readonly outbox: VcpuOutbox;

  constructor(private readonly init: VcpuInit) {
    this.control = new Int32Array(init.control);
    this.stats = new Float64Array(init.stats);
    this.state = new Uint8Array(init.state);
    this.outbox = new VcpuOutbox(
      (message, transfer) => init.port.postMessage(message, transfer),
      (units) => (this.stats[STATS.unitsUnsent] = units),
    );
    const output = new RelayedOutput((message) => this.post(message));
    this.machine = new SimMachine(init.config.memoryBytes, init.config.rates, GuestMemory.fromShared(init.memory), output);
    this.machine.state = MachineState.deserialize(this.state.slice());
    this.core = new VcpuCore(this.machine, init.config, init.environmentSeed, init.instructionsPerMs);
  }

  run(): void {
    this.takeCommands();
    const unitMs = this.init.config.unitMs;
    let next = performance.now();
    for (;;) {
      const command = Atomics.load(this.control, CONTROL.command);
      if (command === COMMAND.exit) break;
      if (command !== COMMAND.run) {
        this.hold(command);
        next = performance.now();
        continue;
      }
      if (!this.runUnit()) continue;
      this.outbox.flushIfDue(performance.now(), this.batchMs());
      if (this.init.pacing === 'asap') continue;
      next += unitMs;
      const now = performance.now();
      if (now - next > this.init.lagMsMax) {
        next = now;
        this.stats[STATS.lagResets]++;
      }
      // A batch that falls due while the vCPU idles goes then, not with the next unit.
      const due = this.outbox.dueAt(this.batchMs());
      if (due < next) {
        this.sleepUntil(due);
        this.outbox.flush();
      }
      this.sleepUntil(next);
    }
    this.outbox.flush();
    Atomics.store(this.control, CONTROL.state, VCPU_STATE.exited);
  }

  /** Parked or stopped between units: publishes the state, waits for the next command, takes the agent's commands. */
  private hold(command: number): void {
    // Everything sealed so far reaches the agent before the vCPU says it parked or stopped.
    this.outbox.flush();
    this.state.set(this.machine.state.serialize());
    if (command === COMMAND.stop) {
      // A suspend drops the unit that waited: its events never arrived, as for a guest on this thread.
      this.pending = null;
      this.stats[STATS.stoppedAtEpochMs] = epochNowMs();
      this.post({ kind: 'stopped' });
    }
    Atomics.store(this.control, CONTROL.state, command === COMMAND.park ? VCPU_STATE.parked : VCPU_STATE.stopped);
    Atomics.notify(this.control, CONTROL.state);
    while (Atomics.load(this.control, CONTROL.command) === command) Atomics.wait(this.control, CONTROL.command, command, WAIT_SLICE_MS);
    Atomics.store(this.control, CONTROL.state, VCPU_STATE.running);
    this.takeCommands();
  }

  private takeCommands(): void {
    for (let m = receiveMessageOnPort(this.init.commands); m !== undefined; m = receiveMessageOnPort(this.init.commands)) this.apply(m.message as VcpuCommand);
  }

  private apply(command: VcpuCommand): void {
    const memory = this.machine.memory;
    if (command.kind === 'state') {
      this.machine.state = MachineState.deserialize(this.state.slice());
    } else if (command.cow === null) {
      memory.cow?.detach();
      memory.cow = null;
    } else {
      memory.cow?.detach();
      memory.cow = new CopyOnWrite(command.cow.pageCount, command.cow.preservedBytesMax, undefined, command.cow);
      if (command.overflow !== null) memory.cow.setOverflowPort(command.overflow);
    }
  }

  /**
   * Waits for room in the log queue and the copy-on-write pool, and for pages post-copy has not
   * fetched, then runs one unit. Returns false, running nothing, when the agent asked for something
   * else meanwhile (the unit is kept for after a park).
   */
  private runUnit(): boolean {
    this.core.throttle = this.stats[STATS.throttle];
    const plan = (this.pending ??= this.core.plan());
    const stallStart = performance.now();
    let stalled = false;
    for (;;) {
      if (Atomics.load(this.control, CONTROL.command) !== COMMAND.run) return this.stalledFor(stalled, stallStart, false);
      const recording = Atomics.load(this.control, CONTROL.recording) !== 0;
      const cow = this.machine.memory.cow;
      if (cow !== null && cow.released) {
        cow.detach();
        this.machine.memory.cow = null;
      }
      if (recording && this.logFull()) {
        stalled = true;
        // The agent can only make room by taking what waits here.
        this.outbox.flush();
        this.waitForDoorbell(WAIT_SLICE_MS);
      } else if (cow !== null && !cow.released && cow.preservedBytes > 0 && !cow.hasRoomFor(plan.pageWritesBound)) {
        stalled = true;
        this.outbox.flush();
        cow.waitForRoomSync(cow.roomSeen, 1);
      } else {
        const missing = this.core.missingPages(plan);
        if (missing.length === 0) break;
        stalled = true;
        this.fetch(missing);
      }
    }
    this.stalledFor(stalled, stallStart, true);
    this.pending = null;
    const recording = Atomics.load(this.control, CONTROL.recording);
    this.unitWrites.length = 0;
    this.machine.memory.unitWrites = this.unitWrites;
    const unit = this.core.run(plan, recording !== 0);
    this.machine.memory.unitWrites = null;
    this.machine.memory.markWrittenAgain(this.unitWrites);
    if (unit !== null) {
      Atomics.add(this.control, CONTROL.logUnits, 1);
      Atomics.add(this.control, CONTROL.logBytes, unit.bytes.length);
      this.post({ kind: 'unit', recording, sequence: unit.sequence, bytes: unit.bytes, guestNs: unit.guestNs, eventCount: unit.eventCount }, [unit.bytes.buffer as ArrayBuffer]);
    }
    this.stats[STATS.unitsRun] = this.core.unitsRun;
    this.stats[STATS.instructionsRun] = this.core.instructionsRun;
    this.stats[STATS.throttledMs] = this.core.throttledMs;
    this.stats[STATS.instructionsPerMs] = this.core.instructionsPerMs;
    return true;
  }

  private stalledFor(stalled: boolean, since: number, result: boolean): boolean {
    if (stalled) this.stats[STATS.stallMs] += performance.now() - since;
    return result;
  }

  private logFull(): boolean {
    return Atomics.load(this.control, CONTROL.logUnits) >= this.init.logQueueUnitsMax || Atomics.load(this.control, CONTROL.logBytes) >= this.init.logQueueBytesMax;
  }

  /** Asks the agent for missing pages and waits until it has them (or is asked for something else). */
  private fetch(pages: Uint32Array): void {
    const request = ++this.fetchRequest;
    this.stats[STATS.pagesFetched] += pages.length;
    this.post({ kind: 'fetch', request, pages });
    while (Atomics.load(this.control, CONTROL.fetchDone) < request && Atomics.load(this.control, CONTROL.command) === COMMAND.run) this.waitForDoorbell(WAIT_SLICE_MS);
  }

  private waitForDoorbell(timeoutMs: number): void {
    Atomics.wait(this.control, CONTROL.doorbell, Atomics.load(this.control, CONTROL.doorbell), timeoutMs);
  }

  /** Sleeps until `atMs` (performance.now()), or until the agent asks for something. */
  private sleepUntil(atMs: number): void {
    for (let now = performance.now(); now < atMs && Atomics.load(this.control, CONTROL.command) === COMMAND.run; now = performance.now()) {
      Atomics.wait(this.control, CONTROL.command, COMMAND.run, Math.min(WAIT_SLICE_MS, atMs - now));
    }
  }

  private batchMs(): number {
    return Atomics.load(this.control, CONTROL.logBatchMs);
  }

  /** Units and outputs through the outbox (an output due at once); anything else at once, after them. */
  private post(message: VcpuMessage, transfer: ArrayBuffer[] = []): void {
    if (message.kind === 'unit' || message.kind === 'output') {
      this.outbox.add(message, transfer, message.kind === 'output', performance.now());
      return;
    }
    this.outbox.flush();
    this.init.port.postMessage(message, transfer);
  }
}

// The thread may start before its guest exists (at a reservation, so that an activation finds it
// ready): it waits for the guest, then runs it until told to exit.
parentPort!.once('message', (init: VcpuInit) => {
  try {
    new VcpuThread(init).run();
  } catch (error) {
    const e = error instanceof Error ? error : new Error(String(error));
    init.port.postMessage({ kind: 'failed', message: e.message, stack: e.stack } satisfies VcpuMessage);
    Atomics.store(new Int32Array(init.control), CONTROL.state, VCPU_STATE.exited);
    Atomics.notify(new Int32Array(init.control), CONTROL.state);
  }
});
