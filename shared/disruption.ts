// Guest disruption: what a migration cost the guest against its nominal schedule, one unit every
// unitMs of wall time. Downtime alone flatters post-copy (its guest then stalls on every page it
// has not received) and hides CR/TR's copy-on-write and log-queue stalls; this figure counts them.
//
// The window runs from the start of the migration to the target's resume (CR/TR, pre-copy), or
// to the arrival of the target guest's last page (post-copy). Over it:
//
//   disruptionMs = downtimeMs + stallMs + throttledMs + lostScheduleMs
//
// - downtimeMs: the source suspend to the target resume;
// - stallMs: wall time the guest's vCPU was blocked when it should have run: on the source on a
//   full log queue or copy-on-write pool, on the target (post-copy) waiting for pages;
// - throttledMs: work given up to throttling, as time: a unit run at throttle f does f of its
//   nominal work, so (1 - f) x unitMs of it is lost (as QEMU's auto-converge sleeps the vCPU for
//   that share of the time);
// - lostScheduleMs: units due by the schedule minus units run, x unitMs, less what the downtime
//   and the stalls already explain. A guest that falls behind (a host too busy to run it on time,
//   a stall it never caught up) loses this; one that catches up after a stall, in its idle time,
//   loses only the stall. So no lost millisecond counts twice, and the figure is at least the
//   downtime plus the stalls, and at least the schedule deficit.
//
// unitsDue counts whole units (floor of windowMs / unitMs): the runner runs a unit at the start
// of its slot, so the units run may exceed it by one, never the other way round on time.

import { assert } from './assert.js';

/**
 * What a guest's vCPU did against its nominal schedule (one unit every unitMs of wall time), counted
 * since it started on this host (a driver's SourceGuest.runnerStats); the migration's figure
 * takes the difference over its window.
 */
export interface GuestRunnerStats {
  /** Units executed. */
  readonly unitsRun: number;
  /**
   * Instructions those units executed (sim): the guest's work. A unit's budget follows the
   * host's speed, so a guest given less of a core keeps its schedule of units with less work done.
   */
  readonly instructionsRun?: number;
  /**
   * Wall time the vCPU was blocked when it should have run: a full log queue or copy-on-write
   * pool, pages that post-copy has not brought yet.
   */
  readonly stallMs: number;
  /** Work given up to throttling, as time: (1 - throttle factor) x unitMs, summed over the units run. */
  readonly throttledMs: number;
  /**
   * Wall time the guest still ran after its last suspend() was called: a vCPU on a thread of its
   * own finishes the unit in progress first. Its downtime starts when it stopped.
   */
  readonly suspendRanMs?: number;
  /** Units it completed meanwhile (not the final unit the suspend sealed). */
  readonly suspendRanUnits?: number;
}

export interface DisruptionInput {
  unitMs: number;
  /** From the start of the migration to the end of the window. */
  windowMs: number;
  downtimeMs: number;
  /** Blocked wall time, on either host, within the window. */
  stallMs: number;
  throttledMs: number;
  /** Units the guest ran within the window, on either host; undefined when the driver does not count them. */
  unitsRun: number | undefined;
}

export interface Disruption {
  disruptionMs: number;
  /** Units the schedule called for over the window (0 when the units run are not counted). */
  unitsDue: number;
  lostScheduleMs: number;
}

export function guestDisruption(input: DisruptionInput): Disruption {
  const { unitMs, windowMs, downtimeMs, stallMs, throttledMs, unitsRun } = input;
  assert(unitMs > 0, () => `unit length ${unitMs} ms is not positive`);
  for (const [name, value] of Object.entries({ windowMs, downtimeMs, stallMs, throttledMs, unitsRun: unitsRun ?? 0 })) {
    assert(Number.isFinite(value) && value >= 0, () => `${name} ${value} is not a finite number >= 0`);
  }
  const blockedMs = downtimeMs + stallMs;
  if (unitsRun === undefined) return { disruptionMs: blockedMs + throttledMs, unitsDue: 0, lostScheduleMs: 0 };
  const unitsDue = Math.floor(windowMs / unitMs);
  const behindMs = Math.max(0, unitsDue - unitsRun) * unitMs;
  const lostScheduleMs = Math.max(0, behindMs - blockedMs);
  return { disruptionMs: blockedMs + throttledMs + lostScheduleMs, unitsDue, lostScheduleMs };
}
