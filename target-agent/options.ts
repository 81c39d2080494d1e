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
  /** Minimum interval between progress reports. */
  progressIntervalMs: number;
  /** This agent's id for this run, reported in Capacity ('' : none). */
  agentInstanceId: string;
  /** Where the replay pipeline runs its next slice (default setImmediate; a simulation passes its clock's). */
  defer?: (fn: () => void) => void;
}

export const TARGET_DEFAULTS: TargetOptions = {
  chunkWindow: WINDOW_DEFAULTS.chunks,
  unitWindow: WINDOW_DEFAULTS.units,
  unitWindowBytes: WINDOW_DEFAULTS.unitBytes,
  reservationTimeoutMs: 60_000,
  activationHooks: [],
  hookTimeoutMs: 10_000,
  progressIntervalMs: 20,
  agentInstanceId: '',
};
