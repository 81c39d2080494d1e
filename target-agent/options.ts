// The target agent's options: windows it grants the source, timeouts, activation hooks, and the
// pace of its progress reports. Set once at start (cli/agent.ts lays the configuration over them).

import { WINDOW_DEFAULTS } from '../shared/protocol.js';

export interface TargetOptions {
  /** Checkpoint chunks the source may have outstanding (sent, not applied). */
  chunkWindow: number;
  /** Units the source may have outstanding (sent, not replayed), by count and by bytes. */
  unitWindow: number;
  unitWindowBytes: number;
  /** A reservation not opened by a Transfer within this time is released. */
  reservationTimeoutMs: number;
  /** Commands run after the guest resumes here (`sh -c`), each bounded by hookTimeoutMs. */
  activationHooks: string[];
  hookTimeoutMs: number;
  /**
   * An incoming transfer that hears nothing from its source for this long, at any stage before the
   * commit, ends (DEADLINE_EXCEEDED) and frees its reservation. Well above the source's 500 ms
   * between messages of a healthy transfer, however slow.
   */
  transferIdleTimeoutMs: number;
  /** Share of this host's memory one peer may hold in reservations, percent. */
  peerMemoryPercent: number;
  /** Incoming transfers (open streams and reservations not yet opened) one peer may have at once. */
  peerTransfersMax: number;
  /** Minimum interval between progress reports. */
  progressIntervalMs: number;
  /** This agent's id for this run, reported in Capacity ('' : none). */
  agentInstanceId: string;
  /** A transfer whose stream broke before the commit waits this long for the source to resume it (0: never). */
  resumeWindowMs: number;
  /** Where the replay pipeline runs its next slice (default setImmediate; a simulation passes its clock's). */
  defer?: (fn: () => void) => void;
}

export const TARGET_DEFAULTS: TargetOptions = {
  chunkWindow: WINDOW_DEFAULTS.chunks,
  unitWindow: WINDOW_DEFAULTS.units,
  unitWindowBytes: WINDOW_DEFAULTS.unitBytes,
  reservationTimeoutMs: 15_000,
  transferIdleTimeoutMs: 30_000,
  peerMemoryPercent: 50,
  peerTransfersMax: 16,
  activationHooks: [],
  hookTimeoutMs: 10_000,
  progressIntervalMs: 20,
  agentInstanceId: '',
  resumeWindowMs: 10_000,
};
