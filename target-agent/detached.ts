// A transfer whose stream broke (a link cut, a stall the source gave up on) before the commit,
// waiting for the source to resume it on a new stream (Resume, Resumed): the replica, the
// receivers and what they counted are kept for the resume window; past it, the transfer ends as
// any broken one (its replica discarded). Post-copy's guest runs here on pages only the source
// has: it waits as long as it takes, saying so at every window.

import type { Logger } from 'pino';
import type { Clock, Timer } from '../shared/clock.js';
import { CorruptDataError, echo, InvalidStateError, LimitExceededError, NotFoundError } from '../shared/errors.js';
import type { TransferPhase } from './receivers/context.js';
import type { SessionHost, TransferStream } from './session-host.js';

export interface DetachedPort {
  phase(): TransferPhase;
  log(): Logger;
  missingPages(): number | null;
  /** A protection's standby: it waits for its primary, or a failover, however long. */
  standby(): boolean;
  /** The window passed: end the transfer with `reason`. */
  expired(reason: string): void;
}

/**
 * Damage in transit: a payload that failed its check, a size past a limit. Post-copy drops such a
 * stream (ABORTED) and waits for the source to resume the transfer on a new one, rather than end
 * a transfer whose guest runs here.
 */
export function damagedInTransit(error: unknown): boolean {
  return error instanceof CorruptDataError || error instanceof LimitExceededError;
}

/** A standby whose primary is gone says so this often. */
const STANDBY_REMINDER_MS = 60_000;

export class Detached {
  private timer: Timer | null = null;

  constructor(
    private readonly clock: Clock,
    /** 0: a broken stream ends the transfer at once. */
    private readonly windowMs: number,
    private readonly port: DetachedPort,
  ) {}

  /** The transfer a Resume on a stream in `phase` is for; NOT_FOUND when none waits for it. */
  static waitingFor(phase: TransferPhase, resume: { reservationId: string; migrationId: string; attempt?: number }, host: Pick<SessionHost, 'waitingForResume'>): { attach(call: TransferStream, attempt: number): void } {
    if (phase !== 'open') throw new InvalidStateError(`Resume received on a stream already in use (session is ${phase})`, { reason: 'PROTOCOL_VIOLATION' });
    const waiting = host.waitingForResume?.(resume.reservationId, resume.migrationId, resume.attempt ?? 0);
    if (waiting !== undefined) return waiting;
    throw new NotFoundError(`no transfer of reservation '${echo(resume.reservationId)}' waits to be resumed here (it ended, or its resume window passed)`, {
      reason: 'RESERVATION_NOT_FOUND',
      metadata: { reservationId: resume.reservationId },
    });
  }

  get waiting(): boolean {
    return this.timer !== null;
  }

  /** The stream broke for `reason`: waits for a resume if the transfer may wait; false if it may not (it ends now). */
  detach(reason: string, messagesReceived: number): boolean {
    const phase = this.port.phase();
    const standby = this.port.standby() && (phase === 'restoring' || phase === 'replaying');
    if ((this.windowMs <= 0 && !standby) || (phase !== 'restoring' && phase !== 'replaying' && phase !== 'postcopy')) return false;
    this.port.log().warn({ reason, resumeWindowMs: this.windowMs, messagesReceived, standby }, 'transfer stream broke: waiting for the source to resume it');
    const windowMs = this.windowMs > 0 ? this.windowMs : STANDBY_REMINDER_MS;
    const expire = () => {
      if (this.port.phase() === 'postcopy') {
        this.port.log().error({ reason, missingPages: this.port.missingPages() }, 'post-copy: the source has not resumed the transfer yet; the guest here waits for its pages');
        this.timer = this.clock.timeout(windowMs, expire);
        return;
      }
      if (standby) {
        this.port.log().warn({ reason }, 'standby: its primary has not come back; it waits for it, or for a failover or an unprotect here');
        this.timer = this.clock.timeout(Math.max(windowMs, STANDBY_REMINDER_MS), expire);
        return;
      }
      this.timer = null;
      this.port.expired(`${reason}; not resumed within ${windowMs} ms`);
    };
    this.timer = this.clock.timeout(windowMs, expire);
    return true;
  }

  /** A new stream took the transfer over. */
  resumed(): void {
    this.stop();
  }

  stop(): void {
    this.timer?.cancel();
    this.timer = null;
  }
}
