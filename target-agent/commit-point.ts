// The commit point of an incoming migration (phase 6), for a session whose replica is complete:
// the replica's digest against the source's; on a match the decision is recorded in the journal
// (the single point of truth a source that lost our answer asks), answered, and the guest resumes
// here (phase 7: activation hooks, then the confirmation with the resume instant). Post-copy's
// guest runs here already: its pages as received are checked instead.

import type { Logger } from 'pino';
import type { Clock } from '../shared/clock.js';
import type { PostcopyTarget } from '../shared/driver/types.js';
import { bounded, InvalidStateError, MESSAGE_CHARS_MAX } from '../shared/errors.js';
import type { MigrationMethod } from '../shared/stats.js';
import type { pb } from '../shared/transport/grpc.js';
import type { HookResult } from './hooks.js';
import type { MethodTransfer, OpenTransfer } from './methods.js';
import type { TargetMessageBody, TransferPhase } from './receivers/context.js';
import type { Reservation } from './reservation.js';
import type { SessionHost } from './session-host.js';

type Commit = InstanceType<typeof pb.Commit>;

/** What the commit point may do to its session. */
export interface CommitPort {
  readonly host: SessionHost;
  readonly clock: Clock;
  readonly log: Logger;
  setPhase(phase: TransferPhase): void;
  send(body: TargetMessageBody): void;
  /** Ends the transfer before the commit: the replica is discarded. */
  end(reason: string): void;
  /** Ends the session, whose guest is not discarded by it (post-copy's, already handled). */
  endedAs(reason: string): void;
  finish(): void;
  runHooks(r: Reservation): Promise<HookResult[]>;
}

/** The final unit is here and its replay not done yet: an early commit waits for it. */
export function earlyCommitToHold(phase: TransferPhase, receivers: MethodTransfer): boolean {
  return phase === 'replaying' && receivers.counters().finalReplayed !== true && receivers.finalReceived?.() === true;
}

/** A commit the session does not hold: checked against the transfer's state, then carried out. */
export function receiveCommit(port: CommitPort, phase: TransferPhase, transfer: OpenTransfer, commit: Commit): void {
  const { reservation: r, method, receivers } = transfer;
  const running = receivers.running?.() ?? null;
  if (running !== null) return commitRunningGuest(port, method.name, running, commit, r);
  const { finalReplayed = false, remainingUnits = 0 } = receivers.counters();
  if (phase !== 'replaying' || !finalReplayed || remainingUnits > 0) {
    throw new InvalidStateError(`commit received before the final unit was replayed (${remainingUnits} units queued, state ${phase})`, { reason: 'PROTOCOL_VIOLATION', metadata: { remainingUnits } });
  }
  commitReplica(port, r, method.name, commit);
}

/** The replica is complete: compare, record, answer, resume here, confirm. */
function commitReplica(port: CommitPort, r: Reservation, method: MigrationMethod, commit: Commit): void {
  const { clock, log, host } = port;
  const commitStartMs = clock.now();
  const targetDigest = r.replica.digest();
  const digestMs = clock.now() - commitStartMs;
  if (targetDigest !== commit.digest) {
    log.error({ sourceDigest: commit.digest, targetDigest }, 'commit refused: digests differ');
    port.send({ commitResult: { matched: false, targetDigest } });
    port.end(`digest mismatch: source ${commit.digest}, replica ${targetDigest}`);
    return;
  }
  // The commit point: recorded first, then the guest is this host's. It resumes here even if the
  // stream breaks now; the source never resumes its copy after sending the commit, unless we say
  // (to its outcome query) that we did not commit.
  if (!recordCommit(port, r, targetDigest)) return;
  port.setPhase('committed');
  host.metrics?.incomingEnded(method, 'committed');
  port.send({ commitResult: { matched: true, targetDigest } });
  const resumedAtMs = clock.now();
  r.replica.activate();
  host.decisions?.resumed(r.migrationId, resumedAtMs);
  host.forget(r.id);
  port.setPhase('activated');
  log.info({ digest: targetDigest, digestMs, commitToResumeMs: clock.now() - commitStartMs }, 'committed and resumed the guest here');
  void port.runHooks(r).then((hooks) => {
    port.send({ activated: { resumeToReplyMs: clock.now() - resumedAtMs, resumedAtMs, commitToResumeMs: resumedAtMs - commitStartMs, hooks } });
    port.finish();
  });
}

/** Records the commit; when the journal cannot, refuses it (matched=false with the reason: the source resumes). */
function recordCommit(port: CommitPort, r: Reservation, targetDigest: string): boolean {
  try {
    port.host.decisions?.committed(r.migrationId, r.replica.id);
    return true;
  } catch (error) {
    const message = bounded((error as Error).message, MESSAGE_CHARS_MAX);
    port.log.error({ err: message }, 'commit refused: the decision could not be recorded');
    port.send({ commitResult: { matched: false, targetDigest, refusedReason: message } });
    port.end(message);
    return false;
  }
}

/** Post-copy: the guest runs here already; its pages as received must match the source's state. */
function commitRunningGuest(port: CommitPort, method: MigrationMethod, running: PostcopyTarget, commit: Commit, r: Reservation): void {
  const { host, log } = port;
  if (running.missingPages > 0) throw new InvalidStateError(`post-copy commit received with ${running.missingPages} pages still missing`, { reason: 'PROTOCOL_VIOLATION', metadata: { missingPages: running.missingPages } });
  const targetDigest = running.receivedDigest();
  if (targetDigest !== commit.digest) {
    // The guest running here started from a state the source never had: drop it, so that the
    // source (told so by matched=false) can resume its suspended copy.
    log.error({ sourceDigest: commit.digest, targetDigest }, 'post-copy commit refused: digests differ; discarding the guest here');
    host.discardGuest(r.replica.id);
    host.decisions?.dropped(r.migrationId, r.replica.id, true, 'post-copy commit refused: digests differ');
    host.metrics?.incomingEnded(method, 'discarded');
    port.send({ commitResult: { matched: false, targetDigest } });
    port.endedAs(`post-copy commit refused: the pages received hash to ${targetDigest}, the source had ${commit.digest}`);
    return;
  }
  host.metrics?.incomingEnded(method, 'committed');
  port.send({ commitResult: { matched: true, targetDigest } });
  port.setPhase('activated');
  log.info({ digest: targetDigest }, 'post-copy complete: every page here, digests match');
  port.finish();
}
