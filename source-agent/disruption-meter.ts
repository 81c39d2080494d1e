// The guest-disruption figure of one migration (shared/disruption.ts), measured from the source:
// the guest's own counters here from the start of the migration to its suspend (or to the end, if
// it runs here again after an abort), the downtime, and, for post-copy, what the target reports
// of the guest running there until its last page arrived.

import type { Clock } from '../shared/clock.js';
import { type GuestRunnerStats, guestDisruption } from '../shared/disruption.js';
import type { SourceGuest } from '../shared/driver/types.js';
import type { MigrationStats } from '../shared/stats.js';

/** What the target said of the guest running there (post-copy), as in its last progress report. */
export interface TargetGuestProgress {
  /** Wall time from its resume to its last page (to now while pages are missing). */
  guestRunMs: number;
  guestUnitsRun: number;
  guestFetchWaitMs: number;
}

interface Counters {
  unitsRun: number | undefined;
  stallMs: number;
  throttledMs: number;
}

export class DisruptionMeter {
  private readonly base: Counters;
  /** The source's counters at the suspend; null while the guest runs here. */
  private atSuspend: Counters | null = null;
  private suspendedAtMs: number | null = null;

  constructor(
    private readonly guest: SourceGuest,
    private readonly clock: Clock,
    private readonly startMs: number,
  ) {
    this.base = this.read();
  }

  /**
   * Just before the suspend: the guest's share of the window here ends. A stall that the suspend
   * cuts short is not among the stalls (the runner counts a stall when it ends); the units it kept
   * from running are in the lost schedule.
   */
  suspending(): void {
    this.atSuspend = this.read();
    this.suspendedAtMs = this.clock.now();
  }

  /**
   * Suspends the guest, its share of the window here ending with it. A vCPU on a thread of its own
   * finishes the unit in progress first (runnerStats' suspendRanMs): the share then ends when it
   * stopped, with that unit. Returns how long after the call that was.
   */
  async suspend(): Promise<number> {
    this.suspending();
    const calledAtMs = this.clock.now();
    await this.guest.suspend();
    const runner = this.guest.runnerStats?.();
    const ranMs = Math.max(0, Math.min(runner?.suspendRanMs ?? 0, this.clock.now() - calledAtMs));
    const at = this.atSuspend;
    if (ranMs > 0 && at !== null && this.suspendedAtMs !== null) {
      this.atSuspend = { ...at, unitsRun: at.unitsRun === undefined ? undefined : at.unitsRun + (runner?.suspendRanUnits ?? 0) };
      this.suspendedAtMs += ranMs;
    }
    return ranMs;
  }

  /** The guest runs here again (a migration aborted after the suspend): its share runs on. */
  resumedHere(): void {
    this.atSuspend = null;
    this.suspendedAtMs = null;
  }

  /** Writes the figure and its terms into `s`; reads the guest only while it runs here. */
  refresh(s: MigrationStats, target: TargetGuestProgress | null): void {
    const nowMs = this.clock.now();
    const here = this.atSuspend ?? this.read();
    const sinceStart = {
      unitsRun: here.unitsRun === undefined || this.base.unitsRun === undefined ? undefined : here.unitsRun - this.base.unitsRun,
      stallMs: Math.max(0, here.stallMs - this.base.stallMs),
      throttledMs: Math.max(0, here.throttledMs - this.base.throttledMs),
    };
    let windowMs = nowMs - this.startMs;
    let downtimeMs = 0;
    let there = { runMs: 0, unitsRun: 0, stallMs: 0 };
    if (this.suspendedAtMs !== null && s.downtimeMs > 0) {
      // Resumed on the target: the window closes there, or at its last page (post-copy).
      there = { runMs: Math.max(0, target?.guestRunMs ?? 0), unitsRun: target?.guestUnitsRun ?? 0, stallMs: Math.max(0, target?.guestFetchWaitMs ?? 0) };
      downtimeMs = s.downtimeMs;
      windowMs = this.suspendedAtMs - this.startMs + downtimeMs + there.runMs;
    } else if (this.suspendedAtMs !== null) {
      // Suspended and not yet resumed anywhere: the downtime so far.
      downtimeMs = nowMs - this.suspendedAtMs;
    }
    const unitsRun = sinceStart.unitsRun === undefined ? undefined : sinceStart.unitsRun + there.unitsRun;
    const d = guestDisruption({
      unitMs: s.unitMs,
      windowMs: Math.max(0, windowMs),
      downtimeMs: Math.max(0, downtimeMs),
      stallMs: sinceStart.stallMs + there.stallMs,
      throttledMs: sinceStart.throttledMs,
      unitsRun,
    });
    s.stallMs = sinceStart.stallMs;
    s.targetStallMs = there.stallMs;
    s.throttledMs = sinceStart.throttledMs;
    s.unitsRun = unitsRun ?? 0;
    s.unitsDue = d.unitsDue;
    s.lostScheduleMs = d.lostScheduleMs;
    s.disruptionMs = d.disruptionMs;
    s.disruptionWindowMs = Math.max(0, windowMs);
  }

  /** The guest's counters now; a driver without runner counters gives its recorder's stall time only. */
  private read(): Counters {
    const runner: GuestRunnerStats | undefined = this.guest.runnerStats?.();
    if (runner !== undefined) return { unitsRun: runner.unitsRun, stallMs: runner.stallMs, throttledMs: runner.throttledMs };
    return { unitsRun: undefined, stallMs: this.guest.recorder?.recordingStats().stallMs ?? 0, throttledMs: 0 };
  }
}
