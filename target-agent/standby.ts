// A protection's standby on the disaster-recovery agent: the transfer of a CR/TR migration that
// does not end on its own. The checkpoint restores, then units replay as they come; the replica
// never runs. It ends in one of three ways:
//
//   unprotect            the source aborts the transfer: the replica is discarded (as any abort)
//   planned switchover   the source sends Switchover: the pipeline asks to stop as a migration's
//                        target does, and the transfer ends with the commit (commit-point.ts)
//   failover             an operator (or an arbiter) resumes the standby here: every unit
//                        received is replayed, the decision recorded (the journal's `committed`,
//                        so an outcome query from the old primary answers COMMITTED), the replica
//                        activated; the primary, if it still streams, is told (FAILED_OVER) and
//                        stops its copy.
//
// A failover is refused while the primary still streams to us (it is alive: two copies would run)
// unless forced; without an arbiter, a primary cut off from here is not stopped by anything, which
// is why a forced failover is an operator's decision.

import type { Clock } from '../shared/clock.js';
import type { ProtectionTerms } from '../shared/rpo.js';
import { FailedOverError, InvalidStateError } from '../shared/errors.js';
import type { Logger } from 'pino';
import type { TransferPhase } from './receivers/context.js';
import type { Reservation } from './reservation.js';
import type { SessionHost } from './session-host.js';

/** A primary heard from within this is alive (its pings come every second or so). */
export const PRIMARY_SILENCE_MS = 3_000;

/** What a failover needs of its session. */
export interface StandbyPort {
  readonly clock: Clock;
  readonly log: Logger;
  readonly host: Pick<SessionHost, 'forget' | 'decisions' | 'metrics'>;
  phase(): TransferPhase;
  /** A stream attached, and how long the source has been silent on it. */
  streamAttached(): boolean;
  silentMs(): number;
  /** Replays every unit received; returns how many were replayed. */
  drain(): number;
  /** Tells the primary (if attached) and drops the stream; the session no longer reads it. */
  dropStream(error: FailedOverError): void;
  setPhase(phase: TransferPhase): void;
  finish(reason: string): void;
}

export interface FailoverResult {
  unitsReplayed: number;
  failoverMs: number;
}

export class Standby {
  /** The source asked for a planned switchover: the pipeline asks to stop from here. */
  switchoverAsked = false;
  failedOver = false;
  readonly sinceMs: number;

  constructor(
    readonly terms: ProtectionTerms,
    clock: Clock,
  ) {
    this.sinceMs = clock.now();
  }

  /** Stop requests are held until a planned switchover. */
  get holdsStops(): boolean {
    return !this.switchoverAsked;
  }

  /** Resumes the standby here; refused while restoring, or while the primary streams unless `force`. */
  failover(port: StandbyPort, r: Reservation, force: boolean): FailoverResult {
    const startMs = port.clock.now();
    const phase = port.phase();
    if (phase !== 'replaying') {
      const why = phase === 'restoring' ? 'its checkpoint is still being restored' : `its transfer is ${phase}`;
      throw new InvalidStateError(`the standby of guest '${r.replica.id}' cannot take over: ${why}`, { reason: 'GUEST_NOT_RUNNING', metadata: { guestId: r.replica.id, phase } });
    }
    if (this.switchoverAsked) throw new InvalidStateError(`guest '${r.replica.id}' is switching over to this standby already`, { reason: 'GUEST_BUSY', metadata: { guestId: r.replica.id } });
    const silentMs = port.silentMs();
    if (!force && port.streamAttached() && silentMs < PRIMARY_SILENCE_MS) {
      throw new InvalidStateError(`the primary of guest '${r.replica.id}' still streams to this standby (heard ${Math.round(silentMs)} ms ago): fail over only when it is gone, or force it`, {
        reason: 'PRIMARY_ALIVE',
        metadata: { guestId: r.replica.id, silentMs: Math.round(silentMs) },
      });
    }
    // Every unit received replays first: a replay that fails leaves the standby as it was, the primary streaming.
    const unitsReplayed = port.drain();
    port.dropStream(new FailedOverError(`guest '${r.replica.id}' was failed over to its standby${force ? ' (forced)' : ''}: this copy must not run again`, { reason: 'FAILED_OVER', metadata: { guestId: r.replica.id } }));
    // The decision first: from here an outcome query from the old primary answers COMMITTED.
    port.host.decisions?.committed(r.migrationId, r.replica.id);
    port.setPhase('committed');
    r.replica.activate();
    port.host.decisions?.resumed(r.migrationId, port.clock.now());
    port.host.forget(r.id);
    port.host.metrics?.incomingEnded('crtr', 'committed');
    this.failedOver = true;
    port.setPhase('activated');
    const failoverMs = port.clock.now() - startMs;
    port.log.warn({ unitsReplayed, failoverMs, forced: force, primarySilentMs: Math.round(silentMs) }, 'failover: the standby runs the guest here');
    port.finish('failed over: the standby runs the guest');
    return { unitsReplayed, failoverMs };
  }
}
