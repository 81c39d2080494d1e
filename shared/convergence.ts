// The convergence controller: pure functions of measured rates and limits, no I/O, so each
// decision is unit-tested on its own. Thresholds derive from the downtime limit (as QEMU's
// `downtime-limit`):
// - the target may start wait-and-ack when its remaining replay units fit in the limit at its
//   measured replay rate;
// - the source agrees to stop-and-copy when its unsent log fits in the limit at the measured
//   throughput, less one round trip.
// Transfer of the last log and its replay are pipelined (each unit is replayed as it arrives), so
// each threshold may use the whole limit.

export type NonConvergencePolicy = 'abort' | 'force' | 'throttle';
export const NON_CONVERGENCE_POLICIES: readonly NonConvergencePolicy[] = ['abort', 'force', 'throttle'];

/**
 * Share of the downtime limit the replay of the remaining units may take: the rest is left for
 * the commit round trip, the final digests and the resume, and for replay running slower than
 * measured once the target also receives the last units.
 */
export const REPLAY_SHARE_OF_DOWNTIME = 0.6;

/** Units the target may still have to replay at wait-and-ack: at least 1. */
export function remainingUnitsAllowed(downtimeLimitMs: number, unitMs: number, replayRate: number): number {
  if (!(replayRate > 0) || !(unitMs > 0)) return 1;
  return Math.max(1, Math.floor((downtimeLimitMs * REPLAY_SHARE_OF_DOWNTIME * replayRate) / unitMs));
}

/** Unsent log bytes the source may still have at stop-and-copy. */
export function unsentLogBytesAllowed(downtimeLimitMs: number, throughputBytesPerSec: number, rttMs: number): number {
  if (!(throughputBytesPerSec > 0)) return 0;
  return Math.max(0, Math.floor(((downtimeLimitMs - rttMs) / 1000) * throughputBytesPerSec));
}

export interface StopInputs {
  unsentLogBytes: number;
  /** Units recorded and not yet replayed (sent or not), and what the target allows. */
  unitsNotReplayed: number;
  unitsAllowed: number;
  downtimeLimitMs: number;
  throughputBytesPerSec: number;
  rttMs: number;
  /**
   * The fewest units not yet replayed a steady stream has (stopUnitsFloor), and whether the source
   * may still wait for them: when more are in flight than that (a burst), waiting for the next
   * request stops the guest with fewer to replay. Undefined: no such wait.
   */
  unitsFloor?: number;
  mayWaitForFloor?: boolean;
}

/**
 * Units a steady log has not yet replayed at any moment: the one the target replays, the one the
 * guest is sealing, and those on the way (one-way latency's worth).
 */
export function stopUnitsFloor(rttMs: number, unitMs: number): number {
  return 2 + Math.ceil(Math.max(0, rttMs) / 2 / Math.max(1, unitMs));
}

/** The source's answer to the target's stop request. */
export function decideStop(input: StopInputs): { granted: boolean; allowedBytes: number; reason: string; waitForFloor?: boolean } {
  const allowedBytes = unsentLogBytesAllowed(input.downtimeLimitMs, input.throughputBytesPerSec, input.rttMs);
  if (input.unitsNotReplayed > input.unitsAllowed) {
    return { granted: false, allowedBytes, reason: `${input.unitsNotReplayed} units not yet replayed (some still in flight), over the ${input.unitsAllowed} the target allows` };
  }
  if (input.mayWaitForFloor === true && input.unitsFloor !== undefined && input.unitsNotReplayed > input.unitsFloor) {
    return {
      granted: false,
      allowedBytes,
      waitForFloor: true,
      reason: `${input.unitsNotReplayed} units not yet replayed (in flight included), more than the ${input.unitsFloor} a steady log has: waiting for fewer`,
    };
  }
  if (input.unsentLogBytes <= allowedBytes) {
    return { granted: true, allowedBytes, reason: `unsent log ${input.unsentLogBytes} B within ${allowedBytes} B` };
  }
  return {
    granted: false,
    allowedBytes,
    reason: `unsent log ${input.unsentLogBytes} B over the ${allowedBytes} B that ${input.throughputBytesPerSec.toFixed(0)} B/s carries in ${input.downtimeLimitMs} ms less a ${input.rttMs.toFixed(1)} ms round trip`,
  };
}

export interface DowntimeInputs {
  unsentLogBytes: number;
  /** Units not yet replayed on the target, sent or not. */
  unitsToReplay: number;
  unitMs: number;
  replayRate: number;
  throughputBytesPerSec: number;
  rttMs: number;
}

/** Expected downtime if stop-and-copy began now: last transfer and replay (pipelined), plus the commit round trip. */
export function expectedDowntimeMs(input: DowntimeInputs): number {
  const transferMs = input.throughputBytesPerSec > 0 ? (input.unsentLogBytes / input.throughputBytesPerSec) * 1000 : 0;
  const replayMs = input.replayRate > 0 ? (input.unitsToReplay * input.unitMs) / input.replayRate : 0;
  return Math.max(transferMs, replayMs) + 2 * input.rttMs;
}

/** One observation of the backlog: units recorded and not yet replayed, at a time. */
export interface BacklogSample {
  atMs: number;
  backlogUnits: number;
}

export interface ConvergenceVerdict {
  converging: boolean;
  reason: string;
}

/**
 * Whether the backlog is shrinking: compares the newest sample with the oldest one at least
 * `windowMs` older. A backlog within the allowance counts as converging whatever its trend.
 * Undecided (too little history) counts as converging.
 */
export function judgeConvergence(samples: readonly BacklogSample[], windowMs: number, allowedUnits: number): ConvergenceVerdict {
  const last = samples[samples.length - 1];
  if (last === undefined) return { converging: true, reason: 'no samples yet' };
  if (last.backlogUnits <= allowedUnits) return { converging: true, reason: `backlog ${last.backlogUnits} within ${allowedUnits} units` };
  let base: BacklogSample | undefined;
  for (let i = samples.length - 1; i >= 0; i--) {
    if (last.atMs - samples[i].atMs >= windowMs) {
      base = samples[i];
      break;
    }
  }
  if (base === undefined) return { converging: true, reason: 'less than one window of history' };
  const drained = base.backlogUnits - last.backlogUnits;
  const spanMs = (last.atMs - base.atMs).toFixed(0);
  if (drained > 0) return { converging: true, reason: `backlog fell from ${base.backlogUnits} to ${last.backlogUnits} units in ${spanMs} ms` };
  if (drained === 0) {
    return { converging: false, reason: `backlog did not shrink from ${last.backlogUnits} units in ${spanMs} ms (allowed ${allowedUnits}): the log grows as fast as it drains` };
  }
  return {
    converging: false,
    reason: `backlog grew from ${base.backlogUnits} to ${last.backlogUnits} units in ${spanMs} ms (allowed ${allowedUnits}): the log grows faster than it drains`,
  };
}

/** The next throttle factor under the `throttle` policy: each step removes 30% of the guest's speed, down to 5%. */
export function nextThrottle(current: number): number {
  return Math.max(0.05, Math.round(current * 0.7 * 1000) / 1000);
}

export interface NonConvergenceDecision {
  action: 'continue' | 'abort' | 'force' | 'throttle';
  /** What the action answers: the backlog's verdict, or the maximum duration running out. */
  trigger: 'backlog' | 'max-duration';
  reason: string;
}

/** What to do when the migration does not converge, or runs out of time. */
export function nonConvergenceAction(policy: NonConvergencePolicy, verdict: ConvergenceVerdict, elapsedMs: number, maxDurationMs: number, throttle: number): NonConvergenceDecision {
  if (elapsedMs >= maxDurationMs) {
    const reason = `migration ran ${elapsedMs.toFixed(0)} ms, its maximum is ${maxDurationMs} ms`;
    return { action: policy === 'force' ? 'force' : 'abort', trigger: 'max-duration', reason };
  }
  const trigger = 'backlog';
  if (verdict.converging) return { action: 'continue', trigger, reason: verdict.reason };
  if (policy === 'abort') return { action: 'abort', trigger, reason: `did not converge: ${verdict.reason}` };
  if (policy === 'force') return { action: 'force', trigger, reason: `did not converge: ${verdict.reason}` };
  if (throttle <= 0.05) return { action: 'continue', trigger, reason: `throttled to the floor; ${verdict.reason}` };
  return { action: 'throttle', trigger, reason: verdict.reason };
}

// --- when to switch over -------------------------------------------------------------------

/**
 * The switchover rule (the target's stop request). The downtime limit is a cap, not a target:
 * the remaining replay must fit it, and within it the switchover waits until the backlog is as
 * small as it will get:
 * - only the unit in progress is left (SWITCHOVER_UNITS_FLOOR queued or fewer), or
 * - the backlog stopped shrinking: its mean over the last half of the window is not below its
 *   mean over the first half (means, so that units arriving in bursts do not look like a trend);
 * - or the maximum duration nears: then fitting the cap is enough.
 */
export const SWITCHOVER_UNITS_FLOOR = 1;
/** The window over which the backlog must keep shrinking for the switchover to wait. */
export const SWITCHOVER_WINDOW_MS = 2_000;
/** Share of the maximum duration after which fitting the cap is enough. */
export const SWITCHOVER_DEADLINE_SHARE = 0.9;

export interface SwitchoverInputs {
  /** Units received and not yet replayed. */
  remainingUnits: number;
  /** The cap: units the downtime limit covers at the replay rate. */
  remainingUnitsAllowed: number;
  /** Recent backlog samples, oldest first (at least the last window of them). */
  backlog: readonly BacklogSample[];
  nowMs: number;
  windowMs: number;
  /** The maximum duration nears. */
  deadlineNear: boolean;
}

export function switchoverDue(input: SwitchoverInputs): { due: boolean; reason: string } {
  const { remainingUnits, remainingUnitsAllowed: cap } = input;
  if (remainingUnits > cap) return { due: false, reason: `${remainingUnits} units to replay, over the ${cap} the downtime limit covers` };
  if (remainingUnits <= SWITCHOVER_UNITS_FLOOR) return { due: true, reason: `${remainingUnits} unit(s) to replay: only the unit in progress` };
  if (input.deadlineNear) return { due: true, reason: `the maximum duration nears; ${remainingUnits} units fit the limit` };
  const start = input.nowMs - input.windowMs;
  const middle = input.nowMs - input.windowMs / 2;
  if (input.backlog.length === 0 || input.backlog[0].atMs > start) return { due: false, reason: 'less than one window of history' };
  const mean = (from: number, to: number) => {
    let sum = 0;
    let count = 0;
    for (const s of input.backlog) {
      if (s.atMs > from && s.atMs <= to) {
        sum += s.backlogUnits;
        count++;
      }
    }
    return count === 0 ? Number.NaN : sum / count;
  };
  const earlier = mean(start, middle);
  const recent = mean(middle, input.nowMs);
  if (!(recent >= earlier)) return { due: false, reason: `still shrinking: ${earlier.toFixed(1)} then ${recent.toFixed(1)} units` };
  return { due: true, reason: `the backlog stopped shrinking (${earlier.toFixed(1)} then ${recent.toFixed(1)} units over ${input.windowMs} ms)` };
}
