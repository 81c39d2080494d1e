// Automatic failover at the DR agent, with an arbiter (shared/arbiter/): a standby watches its
// guest's primary lease; once it is gone (the primary died, or is cut off from the arbiter and so
// has fenced itself: the timing argument is in shared/arbiter/index.ts), the standby goes live
// by compare-and-swap on the epoch it saw, and only then runs the guest. A record removed instead
// (the primary retired the protection: an unprotect, a switchover) drops the standby. Of two
// agents going live from one epoch exactly one wins; the other drops its standby.

import type { Logger } from 'pino';
import type { Arbiter, PrimaryTerm } from '../shared/arbiter/index.js';
import { VmMigrateError } from '../shared/errors.js';

/** After an arbiter error, the watch tries again this much later. */
const RETRY_MS = 1_000;

/** What the watch may do to one standby. */
export interface WatchedStandby {
  readonly guestId: string;
  readonly jobId: string;
  /** Whether it can take over now (restored, replaying). */
  usable(): boolean;
  /** Resumes it here (the arbiter said so: no check of the primary's stream). */
  failover(): { unitsReplayed: number; failoverMs: number };
  drop(reason: string): void;
  /** Resolves when the standby's transfer ends, however. */
  readonly ended: Promise<void>;
}

export class AutoFailover {
  /** The terms this agent won for guests it runs now (kept alive: it is their primary). */
  private readonly terms = new Map<string, PrimaryTerm>();
  private readonly watching = new Set<string>();

  constructor(
    private readonly arbiter: Arbiter,
    private readonly log: Logger,
    /** Stops the guest failed over here for good (fenced: another agent went live for it). */
    private readonly stopFenced: (guestId: string) => Promise<void> = async () => {},
  ) {}

  /** Starts watching `standby`'s primary (once per job). */
  watch(standby: WatchedStandby): void {
    if (this.watching.has(standby.jobId)) return;
    this.watching.add(standby.jobId);
    const stop = new AbortController();
    void standby.ended.then(() => stop.abort());
    void this.run(standby, stop.signal).finally(() => this.watching.delete(standby.jobId));
  }

  /**
   * An operator's failover with the arbiter: going live first (forced: the old primary's lease is
   * revoked and its TTL waited out, so it has stopped), then `resume`.
   */
  async goLive<T>(guestId: string, force: boolean, resume: () => T): Promise<T> {
    const view = await this.arbiter.read(guestId);
    const term = await this.arbiter.goLive(guestId, view.record?.epoch ?? 0, { force });
    return this.resumeUnder(guestId, term, resume);
  }

  private async run(standby: WatchedStandby, signal: AbortSignal): Promise<void> {
    const { guestId } = standby;
    const log = this.log.child({ guestId, jobId: standby.jobId });
    while (!signal.aborted) {
      try {
        const view = await this.arbiter.waitForVacancy(guestId, { signal });
        if (signal.aborted) return;
        if (view.record === null) {
          log.warn('auto failover: the primary retired the protection; the standby is dropped');
          return standby.drop('the primary retired the protection (arbiter)');
        }
        if (!standby.usable()) {
          log.error({ epoch: view.record.epoch }, 'auto failover: the primary is gone, but the standby is not usable yet (its checkpoint is not restored): nothing can run the guest');
          return;
        }
        log.warn({ epoch: view.record.epoch, holder: view.record.holder }, "auto failover: the primary's lease is gone; going live");
        const term = await this.arbiter.goLive(guestId, view.record.epoch);
        const result = this.resumeUnder(guestId, term, () => standby.failover());
        log.warn({ epoch: term.epoch, ...result }, 'auto failover: the standby runs the guest here');
        return;
      } catch (error) {
        if (signal.aborted) return;
        const reason = error instanceof VmMigrateError ? error.reason : '';
        if (reason === 'ARBITER_EPOCH_CONFLICT') {
          log.error({ err: String(error) }, 'auto failover: another agent went live first; the standby is dropped');
          return standby.drop('another agent went live (arbiter)');
        }
        // A new primary claimed meanwhile (ARBITER_PRIMARY_HELD), or the arbiter is unreachable: watch again.
        log.warn({ err: String(error) }, 'auto failover: watching the primary again');
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS).unref());
      }
    }
  }

  /** Runs `resume` under a term just won; a resume that fails lets the term go (nothing runs). */
  private resumeUnder<T>(guestId: string, term: PrimaryTerm, resume: () => T): T {
    try {
      const result = resume();
      this.terms.get(guestId)?.release().catch(() => {});
      this.terms.set(guestId, term);
      term.onFenced((event) => {
        this.log.error({ guestId, reason: event.reason, message: event.message }, 'the guest failed over here was fenced by the arbiter (another agent went live for it, or the lease can no longer be known alive): this copy stops');
        this.stopFenced(guestId).catch((error: unknown) => this.log.error({ guestId, err: String(error) }, 'could not stop the fenced copy'));
      });
      return result;
    } catch (error) {
      void term.release().catch(() => {});
      throw error;
    }
  }

  /** The terms this agent holds as the new primary (to hand to a protection from here). */
  termOf(guestId: string): PrimaryTerm | undefined {
    return this.terms.get(guestId);
  }
}
