// A bound on how long an incoming transfer may wait for its source. Every stage that waits for
// the source (the Open, the checkpoint, the log, the commit) ends when nothing came from it for
// the idle timeout, and so does a transfer that outlived its deadline however busy its source
// keeps it: the reservation is then freed at once rather than held for a source that went away
// without closing its stream, or that keeps it open on purpose. While the target itself is busy
// (replaying queued units, running activation hooks) the source has nothing to say, and the
// wait does not count.

import type { Clock, Timer } from '../shared/clock.js';
import { DeadlineExceededError } from '../shared/errors.js';
import type { TransferPhase } from './receivers/context.js';
import type { Reservation } from './reservation.js';

/** How often the watchdog looks, as a share of the timeout, within these bounds. */
const CHECKS_PER_TIMEOUT = 4;
const CHECK_INTERVAL_MS_MIN = 10;
const CHECK_INTERVAL_MS_MAX = 1_000;
/**
 * How long a transfer may take before its commit, in the source's maximum durations, and a grace:
 * twice, since a switchover forced at the maximum duration (policy force) still drains what is
 * left after it.
 */
const DEADLINE_MAX_DURATIONS = 2;
const DEADLINE_GRACE_MS = 60_000;
/** The maximum duration of a transfer whose source did not say (Reserve's max_duration_ms 0, from sources that predate it). */
const MAX_DURATION_MS_UNSAID = 12 * 3600_000;

/** When a transfer of `reservation` in `phase` ends however active (Infinity: not opened yet, or past the commit). */
export function transferDeadlineMs(reservation: Pick<Reservation, 'reservedAtMs' | 'maxDurationMs' | 'protection'> | null, phase: TransferPhase): number {
  // A protection streams until it ends: its standby's silence is bounded, its duration is not.
  if (reservation === null || reservation.protection !== undefined || phase === 'committed' || phase === 'activated' || phase === 'postcopy') return Number.POSITIVE_INFINITY;
  // The source says its maximum duration; this host bounds it all the same, at what it assumes of a source that says none.
  return reservation.reservedAtMs + DEADLINE_MAX_DURATIONS * Math.min(reservation.maxDurationMs || MAX_DURATION_MS_UNSAID, MAX_DURATION_MS_UNSAID) + DEADLINE_GRACE_MS;
}

/**
 * Why a transfer in `phase` ended: nothing from its source for `idleMs`, or (with the reservation
 * whose deadline passed) its maximum duration.
 */
export function idleError(phase: TransferPhase, idleMs: number, timeoutMs: number, pastDeadline: Pick<Reservation, 'maxDurationMs'> | null): DeadlineExceededError {
  const maxDurationMs = pastDeadline === null ? 0 : pastDeadline.maxDurationMs || MAX_DURATION_MS_UNSAID;
  const waited = phase === 'open' ? `no Open within ${timeoutMs} ms of the transfer stream's start` : `nothing from the source for ${Math.round(idleMs)} ms while ${phase}`;
  const why =
    pastDeadline !== null
      ? `the transfer is not committed after ${DEADLINE_MAX_DURATIONS} times its maximum duration of ${maxDurationMs} ms and ${DEADLINE_GRACE_MS} ms`
      : `${waited} (idle timeout ${timeoutMs} ms)`;
  return new DeadlineExceededError(why, { reason: 'PEER_IDLE', metadata: { timeoutMs, phase } });
}

export interface IdleWatchdogPort {
  /** The target has work of its own for this transfer: the source's silence does not count. */
  busy(): boolean;
  /** Clock time past which the transfer ends however active (Infinity: none yet). */
  deadlineMs(): number;
  /** Nothing came from the source for `idleMs` (at least the timeout), or the deadline passed. */
  expired(idleMs: number, pastDeadline: boolean): void;
}

export class IdleWatchdog {
  private lastActiveMs: number;
  private lastHeardMs: number;
  private readonly timer: Timer;

  constructor(
    private readonly clock: Clock,
    readonly timeoutMs: number,
    port: IdleWatchdogPort,
  ) {
    this.lastActiveMs = clock.now();
    this.lastHeardMs = this.lastActiveMs;
    const checkMs = Math.min(CHECK_INTERVAL_MS_MAX, Math.max(CHECK_INTERVAL_MS_MIN, timeoutMs / CHECKS_PER_TIMEOUT));
    this.timer = clock.interval(checkMs, () => {
      const nowMs = clock.now();
      if (nowMs >= port.deadlineMs()) return port.expired(nowMs - this.lastActiveMs, true);
      if (port.busy()) this.lastActiveMs = nowMs;
      else if (nowMs - this.lastActiveMs >= timeoutMs) port.expired(nowMs - this.lastActiveMs, false);
    });
  }

  /** How long nothing came from the source (its silence, however busy the target is). */
  silentMs(): number {
    return this.clock.now() - this.lastHeardMs;
  }

  /** Something came from the source. */
  touch(): void {
    this.lastHeardMs = this.clock.now();
    this.lastActiveMs = this.clock.now();
  }

  stop(): void {
    this.timer.cancel();
  }
}
