// What one run of the bench harness is asked to do (RunSpec) and what it records (RunRecord):
// the types that bench/run.ts fills in and bench/curve.ts, the report and the plots read.

import type { LinkProfileName, LinkStats } from '../shared/transport/link.js';

/** `crtr-log`: CR/TR with the log-only catch-up (no delta checkpoints), for comparison with the hybrid default. */
export type Method = 'crtr' | 'crtr-log' | 'precopy' | 'postcopy';
export const ALL_METHODS: readonly Method[] = ['crtr', 'crtr-log', 'precopy', 'postcopy'];

/** Whether `method` is a CR/TR run (hybrid or log-only). */
export function isCrtr(method: string): boolean {
  return method === 'crtr' || method === 'crtr-log';
}
/** 'direct': no emulator, the source dials the target agent itself (data-plane benchmark). */
export type LinkName = LinkProfileName | 'direct';
export type LinkMode = 'in-process' | 'child';

export interface RunSpec {
  kind: 'matrix' | 'scaling' | 'dataplane';
  profile: string;
  method: Method;
  link: LinkName;
  memoryBytes: number;
  repeat: number;
  /** environment_seed of the guest: the same for every method of one repeat. */
  seed: number;
  downtimeLimitMs: number;
  /** Non-convergence policy: 'force' in the harness (every run ends with a migration). */
  policy: 'force' | 'abort' | 'throttle';
  maxDurationMs: number;
  warmupMs: number;
  sampleMs: number;
  disableCompression: boolean;
  linkMode: LinkMode;
  /** CR/TR without its final approach (harness --no-final-approach). */
  noFinalApproach?: boolean;
}

/** One GetJob sample. `tMs` is harness time since StartMigration was sent. */
export interface CurvePoint {
  tMs: number;
  /**
   * The job's state: running, cancelling, completed, failed or cancelled (results.json files made
   * before Control v2 have the old statuses here: setup, active, stop-and-copy, committing, ...).
   */
  status: string;
  phase: string;
  /** CR/TR: wait-and-ack rounds (stop requests answered); pre-copy: rounds done; post-copy: 0. */
  rounds: number;
  remainingUnits: number;
  remainingBytes: number;
  transferredBytes: number;
  checkpointMemoryBytesCovered: number;
  unitsRecorded: number;
  unitsReplayed: number;
  /**
   * What is left, in the run's curveMeasure (filled in after the run, bench/curve.ts): crtr
   * remainingUnits, precopy dirty pages left to send, postcopy pages not yet on the target.
   */
  remaining?: number;
}

export interface LowerBound {
  /** crtr.stopLogWireBytes / link bandwidth (0 on an unshaped link). */
  logTransferMs: number;
  /** The link's nominal round trip. */
  rttMs: number;
  /** crtr.stopUnitsToReplay × the guest's unitMs / crtr.replayRate. */
  replayMs: number;
  boundMs: number;
}

export interface RunRecord {
  kind: RunSpec['kind'];
  profile: string;
  method: Method;
  link: LinkName;
  linkMode: LinkMode;
  memoryBytes: number;
  repeat: number;
  seed: number;
  downtimeLimitMs: number;
  policy: RunSpec['policy'];
  disableCompression: boolean;
  /** completed | failed | cancelled (the job's), or 'error' (the harness could not run it), 'unavailable'. */
  status: string;
  error: string;
  downtimeMs: number;
  /**
   * The guest's lost progress against its schedule over the migration's window (README, "Guest
   * disruption"): downtime + stalls + throttled work + lost schedule; its terms in `disruption`.
   * NaN in results.json files made before it was measured.
   */
  disruptionMs: number;
  disruption: DisruptionTerms | null;
  totalTimeMs: number;
  transferredBytes: number;
  rounds: number;
  /** CR/TR: delta checkpoints the hybrid catch-up sent (absent in files made before it). */
  deltaRounds?: number;
  digestsMatch: boolean;
  forced: boolean;
  /** crtr only: the lower bound on downtime (DESIGN: log left at the suspend, one RTT, replay). */
  downtimeLowerBoundMs: number | null;
  lowerBound: LowerBound | null;
  /** downtimeMs / downtimeLowerBoundMs. */
  downtimeOverBound: number | null;
  /** Harness clock, ms since StartMigration: when each phase began (from WatchJob). */
  phases: Array<{ phase: string; tMs: number }>;
  /** Checkpoint phase (crtr) or round 0 (precopy), from the phase events and samples; ms. */
  checkpointPhaseMs: number | null;
  /**
   * crtr: CPU time and minor page faults of each agent process between the 'checkpoint' and
   * 'log-transfer' phase events (from /proc; null where /proc is not readable). Unlike the wire
   * rate, CPU per byte hardly depends on what else runs on the machine.
   */
  checkpointCost: { source: ProcessCost; target: ProcessCost } | null;
  /** Wall time of the whole run (agents up to agents down). */
  wallMs: number;
  bootMs: number;
  /** The job at the end, as Control v2 shows it (GetJob; enum values by name, cli/views.ts messageJson). */
  stats: Record<string, unknown>;
  curve: CurvePoint[];
  /** What `curve[].remaining` counts, and where it comes from (bench/curve.ts). */
  curveMeasure: string;
  curveSource: string;
  linkStats: LinkStats | null;
}

/** The terms of a run's guest disruption besides its downtime (Control v2's GuestDisruption). */
export interface DisruptionTerms {
  /** On the source: a full log queue or copy-on-write pool. */
  sourceStallMs: number;
  /** Post-copy, on the target: waits for pages. */
  targetStallMs: number;
  throttledMs: number;
  lostScheduleMs: number;
  unitsDue: number;
  unitsRun: number;
  windowMs: number;
}

/** CPU time (user + system) and minor page faults of a process. */
export interface ProcessCost {
  /** userMs + systemMs. */
  cpuMs: number;
  userMs: number;
  systemMs: number;
  minorFaults: number;
}
