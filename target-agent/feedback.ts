// The target's feedback to the source (phase 4): progress reports, at most one every
// progressIntervalMs unless a report is due at once (a phase ended, the queue drained), with what
// the receivers and the replay pipeline counted, and the units the downtime limit allows at the
// measured replay rate. The replay pipeline adds its stop request after a report (see
// replay-pipeline.ts).

import type { Clock, Timer } from '../shared/clock.js';
import { remainingUnitsAllowed } from '../shared/convergence.js';

/** A progress report: the fields of the Progress message (migration.proto). */
export interface ProgressReport {
  chunksApplied: number;
  checkpointRestored: boolean;
  unitsReceived: number;
  unitsReplayed: number;
  /** Received and not yet replayed. */
  remainingUnits: number;
  remainingUnitBytes: number;
  /** Guest seconds replayed per wall second (0: not measured). */
  replayRate: number;
  /** Units the target may still hold within the downtime limit at its replay rate. */
  remainingUnitsAllowed: number;
  bytesReceived: number;
  /** The replica is complete: the final unit was replayed, or the machine state restored. */
  finalReplayed: boolean;
  pageBatchesApplied: number;
  /** Post-copy: page batches that failed their check and were dropped (their pages asked for again). */
  pageBatchesDropped: number;
  /** Post-copy: pages the running guest still lacks. */
  missingPages: number;
  /** CR/TR: units dropped because a delta superseded them (counted in unitsReplayed too). */
  unitsSuperseded: number;
  /** CR/TR: the last delta generation applied (0: none). */
  deltaGenerationApplied: number;
  /** CR/TR: the replay rate of the units replayed since the stop was granted (0: none yet). */
  stopReplayRate: number;
  /**
   * Post-copy: the guest running here, from its resume until its last page arrived (until now
   * while pages are missing): wall time, units run, and wall time it waited for pages.
   */
  guestRunMs: number;
  guestUnitsRun: number;
  guestFetchWaitMs: number;
  /** Messages of the transfer received (the source keeps what it sent until counted here). */
  messagesReceived: number;
}

/** What the receivers and the pipeline count; Feedback derives the rest. */
export type ProgressCounters = Partial<Omit<ProgressReport, 'remainingUnitsAllowed'>>;

const NOTHING_COUNTED: Omit<ProgressReport, 'remainingUnitsAllowed'> = {
  chunksApplied: 0,
  checkpointRestored: false,
  unitsReceived: 0,
  unitsReplayed: 0,
  remainingUnits: 0,
  remainingUnitBytes: 0,
  replayRate: 0,
  bytesReceived: 0,
  finalReplayed: false,
  pageBatchesApplied: 0,
  pageBatchesDropped: 0,
  missingPages: 0,
  unitsSuperseded: 0,
  deltaGenerationApplied: 0,
  stopReplayRate: 0,
  guestRunMs: 0,
  guestUnitsRun: 0,
  guestFetchWaitMs: 0,
  messagesReceived: 0,
};

/** Where a report's content comes from, and where it goes. */
export interface FeedbackPort {
  /** Whether the transfer reports at all now (not before Open, not once ended). */
  reportable(): boolean;
  counters(): ProgressCounters;
  send(report: ProgressReport): void;
  /** Called after each report sent, at `nowMs` (the replay pipeline's stop request). */
  afterReport?(nowMs: number, report: ProgressReport): void;
}

export interface FeedbackOptions {
  /** Minimum interval between progress reports that are not forced. */
  progressIntervalMs: number;
  /** The reservation's: together with the replay rate they give remainingUnitsAllowed. */
  downtimeLimitMs: number;
  unitMs: number;
}

export class Feedback {
  private lastReportMs = Number.NEGATIVE_INFINITY;
  /** A report held back by the interval, sent when it has passed. */
  private timer: Timer | null = null;

  constructor(
    private readonly options: FeedbackOptions,
    private readonly port: FeedbackPort,
    private readonly clock: Clock,
  ) {}

  /** Sends a report: at once when `force`, otherwise at most every progressIntervalMs. */
  progress(force: boolean): void {
    if (!this.port.reportable()) return;
    const nowMs = this.clock.now();
    const intervalMs = this.options.progressIntervalMs;
    if (!force && nowMs - this.lastReportMs < intervalMs) {
      this.timer ??= this.clock.timeout(intervalMs, () => {
        this.timer = null;
        this.progress(true);
      });
      return;
    }
    this.lastReportMs = nowMs;
    const counters = { ...NOTHING_COUNTED, ...this.port.counters() };
    const { downtimeLimitMs, unitMs } = this.options;
    // Until a rate is measured, replay is taken to keep pace with the guest (rate 1).
    const report: ProgressReport = { ...counters, remainingUnitsAllowed: remainingUnitsAllowed(downtimeLimitMs, unitMs, counters.replayRate || 1) };
    this.port.send(report);
    this.port.afterReport?.(nowMs, report);
  }

  /** Drops a report held back (the transfer ended). */
  close(): void {
    this.timer?.cancel();
    this.timer = null;
  }
}
