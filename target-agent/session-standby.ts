// A protection's standby as its transfer's session (session.ts) holds it: made at the Open of a
// protection, asked for a planned switchover, resumed here by a failover (standby.ts holds the
// rules), or superseded by its primary's resync, its replica handed over to the new reservation
// as a base image (base-image.ts).

import type { TargetReplica } from '../shared/driver/types.js';
import { InvalidStateError } from '../shared/errors.js';
import type { ProtectionTerms } from '../shared/rpo.js';
import type { TransferView } from './incoming-jobs.js';
import type { Reservation } from './reservation.js';
import { type FailoverResult, PRIMARY_SILENCE_MS, Standby, type StandbyPort } from './standby.js';

/** What the standby needs of its session besides what a failover does. */
export interface SessionStandbyPort extends StandbyPort {
  reservation(): Reservation | null;
  /** The stream broke and the transfer waits for the source to resume it. */
  detached(): boolean;
  /** Ends the transfer, its replica left whole for a new reservation that adopts it. */
  endKeepingReplica(reason: string): void;
  progress(): void;
}

export class SessionStandby {
  private standby: Standby | null = null;

  constructor(private readonly port: SessionStandbyPort) {}

  /** The transfer opened: a protection's has a standby from here. */
  open(terms: ProtectionTerms | undefined): void {
    if (terms !== undefined) this.standby = new Standby(terms, this.port.clock);
  }

  get active(): boolean {
    return this.standby !== null;
  }

  /** Stop requests are held until a planned switchover. */
  get holdsStops(): boolean {
    return this.standby?.holdsStops === true;
  }

  /** Sync mode: each unit's receipt is acknowledged as it arrives. */
  get acksReceipt(): boolean {
    return this.standby?.terms.mode === 'sync';
  }

  view(): TransferView['standby'] {
    const s = this.standby;
    return s === null ? undefined : { terms: s.terms, switchoverAsked: s.switchoverAsked, failedOver: s.failedOver, sinceMs: s.sinceMs, silentMs: this.port.silentMs() };
  }

  /**
   * A standby whose primary abandoned it (its stream broke, or the primary has been silent past
   * PRIMARY_SILENCE_MS) ends, its replica handed over to the primary's new reservation as a base
   * image; null, and nothing changes, when this transfer is not such a standby.
   */
  supersede(reason: string): TargetReplica | null {
    const { port } = this;
    const r = port.reservation();
    const phase = port.phase();
    const abandoned = port.detached() || port.silentMs() >= PRIMARY_SILENCE_MS;
    if (this.standby === null || this.standby.switchoverAsked || r === null || (phase !== 'restoring' && phase !== 'replaying') || !abandoned) return null;
    port.endKeepingReplica(reason);
    return r.replica;
  }

  /** The standby resumes here (standby.ts); FAILED_PRECONDITION when this transfer is not one that can. */
  failover(force: boolean): FailoverResult {
    const r = this.port.reservation();
    if (this.standby === null || r === null) throw new InvalidStateError('this transfer is not a protection', { reason: 'PROTECTION_NOT_FOUND' });
    return this.standby.failover(this.port, r, force);
  }

  /** The source's Switchover: from here the standby asks to stop as a migration's target does. */
  switchover(reason: string): void {
    if (this.standby === null) throw new InvalidStateError('Switchover in a transfer that is not a protection', { reason: 'PROTOCOL_VIOLATION' });
    this.standby.switchoverAsked = true;
    this.port.log.info({ reason }, 'protection: planned switchover asked: the standby asks to stop from here');
    this.port.progress();
  }
}
