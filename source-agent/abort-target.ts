// A migration that failed before its commit tells its target so: the Abort on the stream, or, on
// a stream that broke, a Release of the migration's reservations (the target drops the replica).
// A protection's standby cut off from us is left as it is: it is what a failover resumes, and what
// the protection's resync sends only the pages that differ to (target-agent/base-image.ts).

import type { Logger } from 'pino';
import type { TransferChannel } from './channel.js';
import type { TargetPeer } from './peer.js';

export interface AbortAtTarget {
  channel: TransferChannel | null;
  peer: TargetPeer;
  jobId: string;
  /** '' until the Reserve answered. */
  reservationId: string;
  /** The phase the job failed in (a Reserve in flight may have reserved all the same). */
  inReservation: boolean;
  protection: boolean;
  cancelled: boolean;
  reason: string;
  log: Logger;
}

export async function abortAtTarget(o: AbortAtTarget): Promise<void> {
  const warn = (what: string) => (error: unknown) => o.log.warn({ err: String(error) }, what);
  if (o.channel !== null) {
    const broken = o.channel.error !== null;
    o.channel.abort(o.reason, o.cancelled);
    if (!broken) return;
    if (o.protection && !o.cancelled) return void o.log.warn('protection: the standby is unreachable and kept as it is');
    // The Abort cannot go on a broken stream: the target hears it by a call of its own.
    return o.peer.release('', o.reason, o.jobId).catch(warn('could not tell the target to drop its replica (it does on its own, at most its resume window later)'));
  }
  // A Reserve whose answer was lost may have reserved all the same: released by the migration's id.
  if (o.reservationId !== '' || o.inReservation) await o.peer.release(o.reservationId, o.reason, o.jobId).catch(warn('could not release the reservation (it expires on its own)'));
}
