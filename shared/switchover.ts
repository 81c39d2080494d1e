// How long the switchover may take before the source gives up on it. The downtime limit is what
// the guest should see; a link that stalls or a target that hangs must not keep the guest
// suspended for as long as TCP or gRPC's keepalive take to notice. Two deadlines, both from the
// downtime the switchover was expected to cost:
//
//   stop-and-copy  suspend to the commit sent (the last units or pages and their replay). Past it,
//                  the commit was never sent: the source aborts and resumes the guest.
//   commitment     the commit sent to its answer. Past it, the outcome is in doubt: the source
//                  keeps the guest suspended and asks the target what it decided (never guesses).
//
// Each is a multiple of the expected cost, with a floor for the small costs of a busy host (a
// garbage collection, a slow fsync) and four round trips for the messages on the way.

/** The expected cost is multiplied by this (a switchover is allowed to take several times its estimate). */
export const SWITCHOVER_SLACK_FACTOR = 4;
/** Never less than this, whatever the limit (ms). */
export const SWITCHOVER_FLOOR_MS = 1_000;

export interface SwitchoverDeadlines {
  stopAndCopyMs: number;
  commitMs: number;
}

export interface SwitchoverDeadlineInputs {
  /** The migration's downtime limit. */
  downtimeLimitMs: number;
  /** The downtime expected when the guest was suspended (a forced stop may expect more than the limit). */
  expectedDowntimeMs: number;
  /** The round trip to the target (0 when not measured). */
  rttMs: number;
}

/** The switchover's two deadlines (see the header). */
export function switchoverDeadlines(inputs: SwitchoverDeadlineInputs): SwitchoverDeadlines {
  const rtt = Number.isFinite(inputs.rttMs) && inputs.rttMs > 0 ? inputs.rttMs : 0;
  const expected = Math.max(inputs.downtimeLimitMs, Number.isFinite(inputs.expectedDowntimeMs) ? inputs.expectedDowntimeMs : 0);
  return {
    stopAndCopyMs: Math.max(SWITCHOVER_FLOOR_MS, SWITCHOVER_SLACK_FACTOR * expected) + 4 * rtt,
    // The answer comes after the replay of the last units (an early commit) and a digest: half the slack.
    commitMs: Math.max(SWITCHOVER_FLOOR_MS, (SWITCHOVER_SLACK_FACTOR / 2) * expected) + 4 * rtt,
  };
}
