// What the agent's thread and a `sim` guest's vCPU thread share (vcpu-link.ts on the agent's side,
// vcpu-thread.ts on the vCPU's): a control array of words changed atomically, an array of runner
// statistics, the machine state at the last unit boundary, and the messages between them.
//
// The agent stops the vCPU between two units in two ways: `park` (the agent's thread waits, at most
// the rest of one unit, and then works on the guest at a unit boundary: the instant of a checkpoint
// or a delta) and `stop` (suspend; the agent's thread does not wait: the vCPU says when it stopped).

import type { SimMachineConfig } from './config.js';
import type { CopyOnWriteShared } from './cow.js';
import type { Pacing } from './guest-options.js';
import type { GuestMemoryShared } from './memory.js';
import type { MessagePort } from 'node:worker_threads';

/** Now, in ms since the epoch (performance.timeOrigin + now()): comparable across threads, whose performance.now() are not. */
export function epochNowMs(): number {
  return performance.timeOrigin + performance.now();
}

/** Words of the control array (Int32Array). */
export const CONTROL = {
  /** What the agent asks of the vCPU (COMMAND). */
  command: 0,
  /** What the vCPU is doing (VCPU_STATE). */
  state: 1,
  /** Bumped (and notified) by the agent whenever something the vCPU may wait for happened. */
  doorbell: 2,
  /** The recording units are sealed into (0: none); set while the vCPU is parked or stopped, cleared any time. */
  recording: 3,
  /** Sealed units and their bytes sent to the agent and not yet taken by its log stream (the log queue's bounds). */
  logUnits: 4,
  logBytes: 5,
  /** The last page fetch (post-copy) that the agent completed. */
  fetchDone: 6,
  /**
   * Wall time (ms) the sealed units and outputs may wait on the vCPU's side to go to the agent
   * together (vcpu-outbox.ts); 0: each at once. Set by the agent any time.
   */
  logBatchMs: 7,
  words: 8,
} as const;

export const COMMAND = { run: 0, park: 1, stop: 2, exit: 3 } as const;
export const VCPU_STATE = { running: 0, parked: 1, stopped: 2, exited: 3 } as const;

/** Slots of the statistics array (Float64Array): the runner's counters, written by the vCPU; and the throttle, written by the agent. */
export const STATS = {
  unitsRun: 0,
  stallMs: 1,
  throttledMs: 2,
  lagResets: 3,
  instructionsPerMs: 4,
  pagesFetched: 5,
  throttle: 6,
  /** When the vCPU last stopped for a suspend (epochNowMs). */
  stoppedAtEpochMs: 7,
  /** Units sealed and waiting in the vCPU's outbox (a log batch), not yet sent to the agent. */
  unitsUnsent: 8,
  instructionsRun: 9,
  slots: 10,
} as const;

/** What the vCPU thread starts from (its first message). */
export interface VcpuInit {
  guestId: string;
  config: SimMachineConfig;
  pacing: Exclude<Pacing, 'manual'>;
  lagMsMax: number;
  instructionsPerMs: number | undefined;
  logQueueBytesMax: number;
  logQueueUnitsMax: number;
  environmentSeed: number;
  memory: GuestMemoryShared;
  control: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  /** The machine state: the agent's at the start, then the vCPU's at each park and stop. */
  state: SharedArrayBuffer;
  /** vCPU to agent: VcpuMessage. */
  port: MessagePort;
  /** Agent to vCPU: VcpuCommand, taken when it leaves a park or a stop. */
  commands: MessagePort;
}

/** From the vCPU thread to the agent. */
export type VcpuMessage =
  | { kind: 'unit'; recording: number; sequence: number; bytes: Uint8Array; guestNs: number; eventCount: number }
  | { kind: 'fetch'; request: number; pages: Uint32Array }
  /** A unit received packets: the guest's output device replies to them (OutputDevice.afterUnit's arguments), before the unit itself comes; and when (epochNowMs), for the outputs' delay. */
  | { kind: 'output'; unit: number; rxBefore: number; rxAfter: number; stateHash: number; producedAtEpochMs: number }
  | { kind: 'stopped' }
  | { kind: 'failed'; message: string; stack: string | undefined };

/** From the agent to the vCPU thread, while it is parked or stopped. */
export type VcpuCommand =
  /** The machine state to go on from (after the agent sealed the final unit at a suspend). */
  | { kind: 'state' }
  /** The checkpoint in progress (its copy-on-write state), or none. */
  | { kind: 'cow'; cow: CopyOnWriteShared | null; overflow: MessagePort | null };
