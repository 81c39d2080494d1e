// What a fault case saw (run-case.ts records it, invariants.ts judges it): where the fault landed,
// how the job ended on the source, what the target decided, and each host's guests and
// reservations once things settled.

import type { AgentExit } from './cluster.js';
import type { CaseChoices, FaultCase } from './cases.js';

export interface Injection {
  /** The phase the source was in when the fault struck (as its watch stream last said). */
  landedPhase: string;
  /** From StartMigration's answer. */
  atMs: number;
  /** What was done, in words (the stall's length, the byte flipped, how the agent exited). */
  detail: string;
  /** sigterm-* and kill9-*: how the agent exited (null: it did not exit within the grace and was SIGKILLed). */
  exit?: AgentExit | null;
  /** corrupt: whether a byte was flipped before the job ended (nothing may have crossed after it was armed). */
  fired: boolean;
}

/** Job states as Control v2 names them, lower case: running, cancelling, succeeded, failed, cancelled, in-doubt. */
export type JobStateName = string;

/** The source's view of the job at the end. */
export interface SourceJobView {
  state: JobStateName;
  phase: string;
  errorMessage: string;
  errorReason: string;
  /** The job was seen in doubt, or says it asked the target for the outcome. */
  inDoubtSeen: boolean;
  outcomeQueries: number;
  /** It ended (succeeded, failed or cancelled) within the bound. */
  ended: boolean;
}

/** The target's view of the same job (GetJob by the same id), if it knows it. */
export interface TargetJobView {
  state: JobStateName;
  committed: boolean;
  activated: boolean;
  /** Post-copy: pages its guest still lacks. */
  missingPages: number;
  errorMessage: string;
}

export interface GuestView {
  id: string;
  /** running, suspended, restoring, replica, discarded. */
  state: string;
  memoryBytes: number;
}

export interface HostView {
  guests: GuestView[];
  /** GetCapacity's memory reserved. */
  reservedBytes: number;
  /** Memory of the guests it holds (running or suspended). */
  heldBytes: number;
}

export interface CaseObservation {
  case: FaultCase;
  choices: CaseChoices;
  /** null: the job ended before the phase began, and no fault was injected. */
  injection: Injection | null;
  /** null: the source agent was killed or stopped, and its jobs went with it. */
  sourceJob: SourceJobView | null;
  targetJob: TargetJobView | null;
  /** The agent was stopped (kill -9 or SIGTERM) and started again: its sim guests died with it. */
  restarted: { source: boolean; target: boolean };
  /** The target answered through the link at the end. */
  targetReachable: boolean;
  hosts: { source: HostView; target: HostView };
  /** Both hosts' reservations matched their guests within the bound. */
  settled: boolean;
  durationMs: number;
  /** The harness itself failed (an agent would not start, a call failed): nothing else is meaningful. */
  harnessError: string | null;
}

/** How a case ended, for the table. */
export type CaseOutcome = 'completed' | 'failed-on-source' | 'in-doubt-resolved' | 'host-died' | 'unresolved';
export const CASE_OUTCOMES: readonly CaseOutcome[] = ['completed', 'failed-on-source', 'in-doubt-resolved', 'host-died', 'unresolved'];

export interface CaseVerdict {
  outcome: CaseOutcome;
  /** Broken invariants, each a sentence; empty when all hold. */
  violations: string[];
  /** Broken invariants that the known gap explains (counted apart). */
  explained: string[];
  /** Set when what happened is a gap the project already knows of (README; the notes). */
  knownGap: string | null;
}
