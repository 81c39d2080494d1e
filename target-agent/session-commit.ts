// A transfer's commit and activation (phases 6 and 7) as its session (session.ts) carries them: a
// Commit is carried out at once, or held until the final unit is replayed when it came early
// (ReserveResponse.early_commit) and answered matched=false if the transfer fails meanwhile; the
// commit point itself is commit-point.ts. Post-copy's guest resumes here before any commit.

import type { pb } from '../shared/transport/grpc.js';
import { type CommitPort, earlyCommitToHold, receiveCommit } from './commit-point.js';
import { type HookResult, runActivationHooks } from './hooks.js';
import type { OpenTransfer } from './methods.js';
import type { TransferPhase } from './receivers/context.js';
import type { Reservation } from './reservation.js';
import { InvalidStateError } from '../shared/errors.js';

type Commit = InstanceType<typeof pb.Commit>;

/** What the commit needs of its session, besides what the commit point does. */
export interface SessionCommitPort extends Omit<CommitPort, 'runHooks'> {
  transfer(): OpenTransfer | null;
  phase(): TransferPhase;
  fail(error: unknown): void;
}

export class SessionCommit {
  /** An early commit, held until the final unit is replayed. */
  private held: Commit | null = null;

  constructor(private readonly port: SessionCommitPort) {}

  get holding(): boolean {
    return this.held !== null;
  }

  /** The source's Commit: held if it came before the final unit's replay, else carried out. */
  receive(commit: Commit): void {
    const transfer = this.port.transfer();
    if (transfer === null) throw new InvalidStateError('commit before Open', { reason: 'PROTOCOL_VIOLATION' });
    if (transfer.receivers.running?.() == null) {
      if (this.held !== null) throw new InvalidStateError('commit received twice: the first one is held until the final unit is replayed');
      if (earlyCommitToHold(this.port.phase(), transfer.receivers)) {
        this.held = commit;
        return;
      }
    }
    const port = this.port;
    const commitPort: CommitPort = {
      host: port.host,
      clock: port.clock,
      get log() {
        return port.log;
      },
      setPhase: (phase) => port.setPhase(phase),
      send: (body) => port.send(body),
      end: (reason) => port.end(reason),
      endedAs: (reason) => port.endedAs(reason),
      finish: () => port.finish(),
      runHooks: (r) => this.runHooks(r),
    };
    receiveCommit(commitPort, port.phase(), transfer, commit);
  }

  /** The final unit was replayed: a commit held since it arrived early goes on now. */
  releaseHeld(): void {
    const commit = this.held;
    if (commit === null) return;
    this.held = null;
    try {
      this.receive(commit);
    } catch (error) {
      this.port.fail(error);
    }
  }

  /** The transfer failed: a source waiting for its early commit's answer hears nothing was committed. */
  refuseHeld(message: string): void {
    if (this.held === null) return;
    this.held = null;
    this.port.send({ commitResult: { matched: false, targetDigest: '', refusedReason: message } });
  }

  /** Post-copy: the guest resumed here; confirmed at once, since the source must serve page requests while the hooks run. */
  resumedHere(r: Reservation, resumedAtMs: number): void {
    const { host, clock } = this.port;
    host.decisions?.resumed(r.migrationId, resumedAtMs);
    host.forget(r.id);
    this.port.setPhase('postcopy');
    this.port.send({ activated: { resumeToReplyMs: clock.now() - resumedAtMs, resumedAtMs, hooks: [] } });
    void this.runHooks(r);
  }

  private runHooks(r: Reservation): Promise<HookResult[]> {
    const { activationHooks, hookTimeoutMs } = this.port.host.options;
    return runActivationHooks(activationHooks, hookTimeoutMs, { VMMIGRATE_GUEST_ID: r.replica.id, VMMIGRATE_MIGRATION_ID: r.migrationId }, this.port.clock, this.port.log);
  }
}
