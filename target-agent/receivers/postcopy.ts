// A post-copy transfer: the machine state resumes the guest here at once with no page yet; from
// then on each unit it runs first fetches the pages it will touch (page requests to the source,
// answered by page batches), while the source pushes the rest.
//
// The guest's disruption after its resume is measured here, where it runs: how long it has run,
// the units it ran, and how long it waited for pages, until its last page arrived (then the
// figures stay as they were). Progress reports carry them to the source.

import type { PostcopyResumeTarget, PostcopyTarget, SourceGuest } from '../../shared/driver/types.js';
import { CorruptDataError, InvalidStateError, LimitExceededError } from '../../shared/errors.js';
import { unpackPayload } from '../../shared/protocol.js';
import type { pb } from '../../shared/transport/grpc.js';
import type { ProgressCounters } from '../feedback.js';
import type { ReceiverContext } from './context.js';

/** Pages asked for in one PageRequest message. */
const PAGE_REQUEST_PAGES_MAX = 4096;
/**
 * Page batches that fail their check (a byte changed on the way) are dropped and their pages asked
 * for again, at most this many in a transfer: past it the link is too damaged to go on with, and
 * the stream is dropped for the source to resume on a new connection.
 */
export const POSTCOPY_DROPPED_BATCHES_MAX = 16;

export class PostcopyReceiver {
  /** Set once the guest runs here. */
  private target: PostcopyTarget | null = null;
  private batchesApplied = 0;
  private batchesDropped = 0;
  /** Fetches waiting for pages, each resolved once all its pages are here. */
  private readonly pageWaiters: Array<{ pages: Uint32Array; resolve: () => void }> = [];
  /** The guest running here, and when it resumed (clock time). */
  private guest: SourceGuest | null = null;
  private resumedAtMs = 0;
  /** Wall time some fetch was waiting, closed intervals; and when the open one began (null: none). */
  private fetchWaitMs = 0;
  private waitingSinceMs: number | null = null;
  /** The guest's figures when its last page arrived. */
  private final: Pick<ProgressCounters, 'guestRunMs' | 'guestUnitsRun' | 'guestFetchWaitMs'> | null = null;

  constructor(
    private readonly context: ReceiverContext,
    /** The replica's postcopy-resume capability. */
    private readonly resume: PostcopyResumeTarget,
  ) {}

  /** The guest's receiving end once it runs here, else null. */
  get running(): PostcopyTarget | null {
    return this.target;
  }

  counters(): ProgressCounters {
    return { pageBatchesApplied: this.batchesApplied, pageBatchesDropped: this.batchesDropped, missingPages: this.target?.missingPages ?? 0, ...(this.final ?? this.guestProgress()) };
  }

  /**
   * The running guest's figures so far. A driver that does not count its units reports no run
   * time either, so that the source counts no schedule it cannot compare with.
   */
  private guestProgress(): Pick<ProgressCounters, 'guestRunMs' | 'guestUnitsRun' | 'guestFetchWaitMs'> {
    if (this.guest === null) return {};
    const nowMs = this.context.clock.now();
    const runner = this.guest.runnerStats?.();
    const waitMs = this.fetchWaitMs + (this.waitingSinceMs === null ? 0 : nowMs - this.waitingSinceMs);
    return { guestRunMs: runner === undefined ? 0 : nowMs - this.resumedAtMs, guestUnitsRun: runner?.unitsRun ?? 0, guestFetchWaitMs: waitMs };
  }

  /**
   * Resumes the guest here. From this point it is this host's (the source stays suspended); the
   * commitment at the end checks the pages as received against the source.
   */
  receiveMachineState(message: InstanceType<typeof pb.MachineState>): void {
    const { context } = this;
    if (context.phase() !== 'restoring') throw new InvalidStateError(`machine state received while ${context.phase()}`, { reason: 'PROTOCOL_VIOLATION' });
    const state = unpackPayload(message.payload, 'machine state');
    context.resuming();
    const resumedAtMs = context.clock.now();
    const { guest, postcopy } = this.resume.activatePostcopy(state, (pages: Uint32Array) => this.fetchPages(pages));
    this.target = postcopy;
    this.guest = guest;
    this.resumedAtMs = resumedAtMs;
    context.log.info({ missingPages: postcopy.missingPages }, 'post-copy: resumed the guest here; fetching its pages');
    context.resumedHere(resumedAtMs);
  }

  receivePages(batch: InstanceType<typeof pb.PageBatch>): void {
    const target = this.target;
    if (target === null) throw new InvalidStateError(`page batch received in a postcopy transfer that is ${this.context.phase()}`, { reason: 'PROTOCOL_VIOLATION' });
    let bytes: Uint8Array;
    try {
      bytes = unpackPayload(batch.payload, `page batch ${this.batchesApplied + this.batchesDropped}`);
    } catch (error) {
      if (!(error instanceof CorruptDataError || error instanceof LimitExceededError)) throw error;
      return this.dropBatch(target, error);
    }
    target.receivePages(bytes);
    this.batchesApplied++;
    for (let i = this.pageWaiters.length - 1; i >= 0; i--) {
      const waiter = this.pageWaiters[i];
      if (target.present(waiter.pages)) {
        this.pageWaiters.splice(i, 1);
        waiter.resolve();
      }
    }
    if (this.pageWaiters.length === 0 && this.waitingSinceMs !== null) {
      this.fetchWaitMs += this.context.clock.now() - this.waitingSinceMs;
      this.waitingSinceMs = null;
    }
    if (target.missingPages === 0) this.final ??= this.guestProgress();
    this.context.progress(target.missingPages === 0);
  }

  /**
   * The guest runs here: a batch that fails its check cannot end the transfer (the guest would
   * wait for its pages forever). It is dropped, and every page still missing is asked for again;
   * the source sends again those it had sent (the others come with its push), so what is sent
   * twice is at most what was in flight. Past the limit, the error goes up: the stream is dropped
   * and resumed on a new connection.
   */
  private dropBatch(target: PostcopyTarget, error: CorruptDataError | LimitExceededError): void {
    this.batchesDropped++;
    if (this.batchesDropped > POSTCOPY_DROPPED_BATCHES_MAX) throw error;
    const missing = target.missingPageList();
    this.context.log.warn({ err: error.message, dropped: this.batchesDropped, missingPages: missing.length }, 'post-copy: dropped a page batch that failed its check; asking for the missing pages again');
    for (let i = 0; i < missing.length; i += PAGE_REQUEST_PAGES_MAX) this.context.send({ pageRequest: { pages: Array.from(missing.subarray(i, i + PAGE_REQUEST_PAGES_MAX)), resend: true } });
    this.context.progress(true);
  }

  /**
   * The transfer was resumed on a new stream: what the old one carried may be lost. The guest's
   * resume is confirmed again (the source waits for it before its push), and the pages waited
   * for are asked for again.
   */
  askAgain(): void {
    const target = this.target;
    if (target === null) return;
    this.context.send({ activated: { resumeToReplyMs: this.context.clock.now() - this.resumedAtMs, resumedAtMs: this.resumedAtMs, hooks: [] } });
    for (const waiter of this.pageWaiters) {
      const missing = Array.from(waiter.pages).filter((p) => !target.present(Uint32Array.of(p)));
      for (let i = 0; i < missing.length; i += PAGE_REQUEST_PAGES_MAX) this.context.send({ pageRequest: { pages: missing.slice(i, i + PAGE_REQUEST_PAGES_MAX) } });
    }
  }

  /** Asks the source for `pages` and resolves once they are all here. */
  private fetchPages(pages: Uint32Array): Promise<void> {
    if (this.target === null || this.target.present(pages)) return Promise.resolve();
    for (let i = 0; i < pages.length; i += PAGE_REQUEST_PAGES_MAX) {
      this.context.send({ pageRequest: { pages: Array.from(pages.subarray(i, i + PAGE_REQUEST_PAGES_MAX)) } });
    }
    this.waitingSinceMs ??= this.context.clock.now();
    return new Promise((resolve) => this.pageWaiters.push({ pages, resolve }));
  }
}
