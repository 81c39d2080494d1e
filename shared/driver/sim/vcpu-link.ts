// The agent's side of a `sim` guest's vCPU thread (vcpu-thread.ts): starts it over the guest's
// shared memory, parks it at a unit boundary (the agent's thread waits at most the rest of one
// unit), stops it (suspend) and starts it again, ends it; receives the units it seals, its page
// fetches (post-copy) and its failure; reads its counters.

import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from 'node:worker_threads';
import { InvalidStateError } from '../../errors.js';
import type { SimMachineConfig } from './config.js';
import type { CopyOnWrite } from './cow.js';
import type { SimGuestOptions } from './guest-options.js';
import type { GuestMemory } from './memory.js';
import { MachineState } from './machine-state.js';
import { COMMAND, CONTROL, epochNowMs, STATS, type VcpuCommand, type VcpuInit, type VcpuMessage, VCPU_STATE } from './vcpu-protocol.js';

/** How long park waits for the vCPU to reach a unit boundary before it gives up (a unit lasts milliseconds). */
const PARK_TIMEOUT_MS = 10_000;

/** What the vCPU thread needs of its guest on the agent's side. */
export interface VcpuHost {
  /** A unit sealed into recording `recording` (which may have ended since). */
  sealed(message: Extract<VcpuMessage, { kind: 'unit' }>): void;
  /** Post-copy: gets pages that have not arrived yet. */
  fetchPages(pages: Uint32Array): Promise<void>;
  /** A unit received packets: the guest's output device replies (OutputDevice.afterUnit). */
  output(message: Extract<VcpuMessage, { kind: 'output' }>): void;
  /** The vCPU thread failed: the guest no longer runs. */
  failed(error: Error): void;
}

export interface VcpuStart {
  guestId: string;
  config: SimMachineConfig;
  options: SimGuestOptions;
  memory: GuestMemory;
  state: MachineState;
  throttle: number;
  /** The checkpoint in progress, if any, and the recording units are sealed into (0: none). */
  cow: CopyOnWrite | null;
  recording: number;
  /** How long sealed units may wait on the vCPU's side to go together (ms; 0: each at once). */
  logBatchMs: number;
}

/**
 * Starts a vCPU thread that waits for its guest. Starting one takes a fifth of a second here (more
 * under load): a host starts the thread of an incoming guest at its reservation, so that the guest
 * runs as soon as it is activated.
 */
export function spawnVcpuThread(name: string): Worker {
  // Without the process's module hooks (a test runner's or a profiler's --import and --require):
  // the thread runs this package's compiled code only, and hooks made it start 10 times slower.
  const execArgv = process.execArgv.filter((arg, i, all) => !/^--(import|require|loader|experimental-loader)(=|$)/.test(arg) && !/^--(import|require|loader|experimental-loader)$/.test(all[i - 1] ?? '') && arg !== '-r' && all[i - 1] !== '-r');
  const worker = new Worker(new URL('./vcpu-thread.js', import.meta.url), { name: `vcpu ${name}`, execArgv });
  // Neither the thread nor its messages keep the agent's process alive: the guest is the agent's.
  worker.unref();
  return worker;
}

/**
 * vCPU threads started ahead: one is kept ready, so that a guest booted or reserved on this host
 * finds its thread already running its code (a thread takes a fifth of a second to start here,
 * more under load, and a post-copy guest runs right after its reservation).
 */
export class VcpuThreads {
  private spare: Worker | null = null;
  private refill: NodeJS.Timeout | null = null;

  constructor(private readonly enabled: boolean) {
    if (enabled) this.spare = spawnVcpuThread('spare');
  }

  /**
   * A started thread for a new guest (undefined when guests run inline). The next one is started a
   * little later (SPARE_DELAY_MS), not while the migration that took this one begins: starting a
   * thread costs a core for tens of milliseconds.
   */
  take(): Worker | undefined {
    if (!this.enabled) return undefined;
    const thread = this.spare ?? spawnVcpuThread('spare');
    this.spare = null;
    if (this.refill === null) {
      this.refill = setTimeout(() => {
        this.refill = null;
        this.spare ??= spawnVcpuThread('spare');
      }, SPARE_DELAY_MS);
      this.refill.unref();
    }
    return thread;
  }

  /** Ends the spare thread (the host shuts down). */
  close(): void {
    if (this.refill !== null) clearTimeout(this.refill);
    this.refill = null;
    void this.spare?.terminate();
    this.spare = null;
  }
}

/** How long after a thread was taken the next spare is started. */
const SPARE_DELAY_MS = 10_000;

export class VcpuLink {
  private readonly worker: Worker;
  private readonly control = new Int32Array(new SharedArrayBuffer(4 * CONTROL.words));
  private readonly stats = new Float64Array(new SharedArrayBuffer(8 * STATS.slots));
  private readonly state = new Uint8Array(new SharedArrayBuffer(MachineState.BYTES));
  private readonly port: MessagePort;
  private readonly commands: MessagePort;
  private stopped: (() => void) | null = null;
  /** The checkpoint the vCPU thread was last handed. */
  private cowSent: CopyOnWrite | null = null;
  readonly exited: Promise<void>;
  private fetchDone = 0;

  /** `worker`: a thread spawnVcpuThread started for this guest; without one, one is started now. */
  constructor(
    start: VcpuStart,
    private readonly host: VcpuHost,
    worker?: Worker,
  ) {
    this.state.set(start.state.serialize());
    this.stats[STATS.throttle] = start.throttle;
    this.stats[STATS.instructionsPerMs] = start.options.instructionsPerMs ?? 0;
    const messages = new MessageChannel();
    const commands = new MessageChannel();
    this.port = messages.port1;
    this.commands = commands.port1;
    const init: VcpuInit = {
      guestId: start.guestId,
      config: start.config,
      pacing: start.options.pacing === 'asap' ? 'asap' : 'realtime',
      lagMsMax: start.options.lagMsMax,
      instructionsPerMs: start.options.instructionsPerMs,
      logQueueBytesMax: start.options.logQueueBytesMax,
      logQueueUnitsMax: start.options.logQueueUnitsMax,
      environmentSeed: start.options.environmentSeed,
      memory: start.memory.shared(),
      control: this.control.buffer as SharedArrayBuffer,
      stats: this.stats.buffer as SharedArrayBuffer,
      state: this.state.buffer as SharedArrayBuffer,
      port: messages.port2,
      commands: commands.port2,
    };
    this.worker = worker ?? spawnVcpuThread(start.guestId);
    this.worker.postMessage(init, [messages.port2, commands.port2]);
    this.port.on('message', (message: VcpuMessage) => this.receive(message));
    this.port.unref();
    this.worker.on('error', (error) => {
      this.host.failed(error);
      this.stoppedNow();
    });
    // A suspend that waits for the thread does not outlive it.
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
    void this.exited.then(() => this.stoppedNow());
    this.setRecording(start.recording);
    this.setLogBatchMs(start.logBatchMs);
    this.sendCow(start.cow);
  }

  /** The runner's counters, as the vCPU thread last wrote them. */
  counter(slot: Exclude<keyof typeof STATS, 'throttle' | 'stoppedAtEpochMs' | 'slots'>): number {
    return this.stats[STATS[slot]];
  }

  setThrottle(factor: number): void {
    this.stats[STATS.throttle] = factor;
  }

  /** Starts sealing units into `recording` (0: stops). Takes effect at the next unit. */
  setRecording(recording: number): void {
    Atomics.store(this.control, CONTROL.recording, recording);
  }

  /** Lets sealed units wait up to `ms` on the vCPU's side to go together (0: each at once; vcpu-outbox.ts). */
  setLogBatchMs(ms: number): void {
    Atomics.store(this.control, CONTROL.logBatchMs, ms);
  }

  /** Units sealed and not yet taken by the agent's log stream went: `units` of them, `bytes` in all. */
  unitsTaken(units: number, bytes: number): void {
    if (units === 0) return;
    Atomics.sub(this.control, CONTROL.logUnits, units);
    Atomics.sub(this.control, CONTROL.logBytes, bytes);
    this.ring();
  }

  /**
   * Stops the vCPU at the next unit boundary and waits for it (this thread blocks: at most the rest
   * of one unit). Every unit it sealed has been handed to the host when this returns. Returns the
   * machine state at the boundary.
   */
  park(): MachineState {
    this.command(COMMAND.park);
    const deadline = performance.now() + PARK_TIMEOUT_MS;
    for (;;) {
      const state = Atomics.load(this.control, CONTROL.state);
      if (state === VCPU_STATE.parked) break;
      if (state === VCPU_STATE.exited || performance.now() > deadline) {
        throw new InvalidStateError(`the guest's vCPU thread did not stop at a unit boundary within ${PARK_TIMEOUT_MS} ms (it is ${state === VCPU_STATE.exited ? 'gone' : 'still running'})`);
      }
      Atomics.wait(this.control, CONTROL.state, state, 50);
    }
    this.drain();
    return MachineState.deserialize(this.state.slice());
  }

  /** Lets a parked vCPU go on, with the checkpoint in progress now (`cow`) if it changed. */
  unpark(cow: CopyOnWrite | null): void {
    this.sendCow(cow);
    this.command(COMMAND.run);
  }

  /**
   * Suspend: stops the vCPU at the next unit boundary; resolves once it has stopped and every unit
   * it sealed was handed over, with its state and how long it ran on after this call (the rest of
   * the unit in progress).
   */
  stop(): Promise<{ state: MachineState; ranMs: number; ranUnits: number }> {
    const stopped = new Promise<void>((resolve) => (this.stopped = resolve));
    const calledAtEpochMs = epochNowMs();
    const unitsBefore = this.stats[STATS.unitsRun];
    this.stats[STATS.stoppedAtEpochMs] = 0;
    // Until the vCPU says it stopped, its messages keep the process alive (the caller awaits them).
    this.port.ref();
    this.command(COMMAND.stop);
    return stopped.then(() => {
      this.port.unref();
      const stoppedAt = this.stats[STATS.stoppedAtEpochMs];
      const ranMs = stoppedAt > 0 ? Math.max(0, stoppedAt - calledAtEpochMs) : 0;
      return { state: MachineState.deserialize(this.state.slice()), ranMs, ranUnits: this.stats[STATS.unitsRun] - unitsBefore };
    });
  }

  /** Starts a stopped vCPU again from `state`, with the checkpoint in progress now (`cow`). */
  restart(state: MachineState, cow: CopyOnWrite | null): void {
    this.state.set(state.serialize());
    this.send({ kind: 'state' });
    this.sendCow(cow);
    this.command(COMMAND.run);
  }

  /** Ends the thread (a unit in progress is cut short: the guest is being discarded); `exited` resolves once it has. */
  exit(): void {
    this.command(COMMAND.exit);
    this.port.close();
    this.commands.close();
    void this.worker.terminate();
  }

  private stoppedNow(): void {
    this.stopped?.();
    this.stopped = null;
  }

  private command(command: number): void {
    Atomics.store(this.control, CONTROL.command, command);
    Atomics.notify(this.control, CONTROL.command);
    this.ring();
  }

  private ring(): void {
    Atomics.add(this.control, CONTROL.doorbell, 1);
    Atomics.notify(this.control, CONTROL.doorbell);
  }

  private send(command: VcpuCommand, transfer: MessagePort[] = []): void {
    this.commands.postMessage(command, transfer);
  }

  /** Hands the vCPU thread the checkpoint in progress (its copy-on-write state), if it changed. */
  private sendCow(cow: CopyOnWrite | null): void {
    if (cow === this.cowSent) return;
    this.cowSent = cow;
    if (cow === null) return this.send({ kind: 'cow', cow: null, overflow: null });
    // Pages the guest preserves past the pool's slots come through this channel.
    const overflow = new MessageChannel();
    cow.setOverflowPort(overflow.port1);
    this.send({ kind: 'cow', cow: cow.shared(), overflow: overflow.port2 }, [overflow.port2]);
  }

  /** Takes every message the vCPU sent and this thread has not received yet. */
  private drain(): void {
    for (let m = receiveMessageOnPort(this.port); m !== undefined; m = receiveMessageOnPort(this.port)) this.receive(m.message as VcpuMessage);
  }

  private receive(message: VcpuMessage): void {
    switch (message.kind) {
      case 'unit':
        this.host.sealed(message);
        break;
      case 'output':
        this.host.output(message);
        break;
      case 'fetch':
        // A failed fetch is not retried here: the guest waits, as a vCPU on this thread does, until suspended.
        this.host.fetchPages(message.pages).then(
          () => {
            this.fetchDone = Math.max(this.fetchDone, message.request);
            Atomics.store(this.control, CONTROL.fetchDone, this.fetchDone);
            this.ring();
          },
          () => {},
        );
        break;
      case 'stopped':
        this.stoppedNow();
        break;
      case 'failed': {
        const error = new Error(`the vCPU thread failed: ${message.message}`);
        error.stack = message.stack;
        this.host.failed(error);
        this.stoppedNow();
        break;
      }
    }
  }
}
