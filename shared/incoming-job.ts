// An incoming migration as the target agent keeps it (target-agent/incoming-jobs.ts) and the
// Control API shows it (source-agent/control-v2/views.ts): one shape for both roles.

import type { MigrationMethod, MigrationPhase } from './stats.js';

/** What the target counts of an incoming transfer (the fields of its progress reports). */
export interface IncomingCounters {
  chunksApplied?: number;
  checkpointRestored?: boolean;
  unitsReceived?: number;
  unitsReplayed?: number;
  remainingUnits?: number;
  remainingUnitBytes?: number;
  replayRate?: number;
  bytesReceived?: number;
  finalReplayed?: boolean;
  pageBatchesApplied?: number;
  missingPages?: number;
}

/** A protection's standby, as the DR agent shows it (target-agent/standby.ts). */
export interface StandbyView {
  readonly terms: { readonly mode: 'sync' | 'async'; readonly rpoMsMax: number };
  /** The primary asked for a planned switchover. */
  readonly switchoverAsked: boolean;
  readonly failedOver: boolean;
  /** When the standby began (clock ms), and how long the primary has been silent. */
  readonly sinceMs: number;
  readonly silentMs: number;
}

/** An incoming migration on this agent, by the source's job id. */
export interface IncomingJob {
  readonly jobId: string;
  readonly guestId: string;
  readonly reservationId: string;
  readonly reservedMemoryBytes: number;
  /** From the reservation until the replica's memory was ready (allocated and mapped); 0 until it is. */
  readonly memoryReadyMs: number;
  readonly method: MigrationMethod | null;
  readonly phase: MigrationPhase;
  readonly phasesPassed: readonly MigrationPhase[];
  readonly state: 'running' | 'succeeded' | 'failed' | 'cancelled';
  readonly error: string;
  readonly startedAtMs: number;
  readonly endedAtMs: number;
  readonly committed: boolean;
  readonly activated: boolean;
  readonly counters: IncomingCounters;
  /** Set for a protection's standby. */
  readonly standby?: StandbyView;
  /** Who reserved it (the primary, for a standby). */
  readonly peer: string;
  /** The guest's unit length (ms). */
  readonly unitMs: number;
}

/** The incoming migrations a target keeps, as the Control services ask them (target-agent/incoming-jobs.ts). */
export interface IncomingJobs {
  get(jobId: string): IncomingJob | undefined;
  list(): IncomingJob[];
  /** The incoming job bringing `guestId` here now (not ended), if any. */
  activeFor(guestId: string): IncomingJob | undefined;
}
