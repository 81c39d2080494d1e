// The options of a running `sim` guest: how its units are paced, where its vCPU executes, and the
// bounds it stalls on.

import { COW_BYTES_MAX_DEFAULT } from './checkpoint.js';

/**
 * How the runner paces units: `realtime` as a VM runs (the agents' mode); `asap` back to back,
 * yielding to the event loop between units (tests, benchmarks); `manual` only when `step()` is
 * called (tests that interleave execution with other operations precisely).
 */
export type Pacing = 'realtime' | 'asap' | 'manual';

/**
 * Where the vCPU executes: `inline` on the agent's event loop, between its other work; `thread` on
 * a thread of its own (vcpu-thread.ts), as a hypervisor runs a vCPU beside its own work.
 */
export const VCPU_MODES = ['inline', 'thread'] as const;
export type VcpuMode = (typeof VCPU_MODES)[number];

export interface SimGuestOptions {
  pacing: Pacing;
  /** Where the vCPU executes (manual pacing is always inline). */
  vcpu: VcpuMode;
  /** Seed of the outside world (packets, disk data, hardware random). */
  environmentSeed: number;
  /** Fixed instructions per millisecond of busy time; unset: adapt to the host's speed. */
  instructionsPerMs?: number;
  /** Sealed units waiting for the agent, at most this many bytes / units before the guest stalls. */
  logQueueBytesMax: number;
  logQueueUnitsMax: number;
  /** Copy-on-write pool of a live checkpoint: pages preserved and not yet sent. */
  cowBytesMax: number;
  /** Real-time lag past which the runner gives up catching up and resets its schedule. */
  lagMsMax: number;
  /**
   * Told when the runner fails (a bug, or a state no unit runs from): the guest is then suspended
   * and the host goes on, rather than the process ending with an unhandled rejection.
   */
  onRunnerFailure?: (guestId: string, error: unknown) => void;
}

export const SIM_GUEST_DEFAULTS: Readonly<Omit<SimGuestOptions, 'environmentSeed'>> = {
  pacing: 'realtime',
  vcpu: 'inline',
  logQueueBytesMax: 64 * 1024 * 1024,
  logQueueUnitsMax: 10_000,
  cowBytesMax: COW_BYTES_MAX_DEFAULT,
  lagMsMax: 1000,
};
