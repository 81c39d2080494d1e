// What the receivers of one transfer see of their session: its phase, the clock, its log, and the
// few things they may ask of it. Narrow on purpose, so that a receiver can be read (and tested)
// without the stream around it.

import type { Logger } from 'pino';
import type { Clock } from '../../shared/clock.js';
import { invalidField } from '../../shared/errors.js';
import type { pb } from '../../shared/transport/grpc.js';

/**
 * A transfer's phase on the target:
 * - open: waiting for the Open message;
 * - restoring: applying checkpoint chunks or page batches (units already queue);
 * - replaying: restored; units replayed as they come (pre-copy: complete, waiting for the commit);
 * - postcopy: the guest runs here already, pages still arriving (post-copy);
 * - committed: digests matched; the guest is ours from here on;
 * - activated: the guest runs here;
 * - ended: aborted or failed; the replica was discarded.
 */
export type TransferPhase = 'open' | 'restoring' | 'replaying' | 'postcopy' | 'committed' | 'activated' | 'ended';

/** A message the target sends on the Transfer stream: one body of TargetMessage. */
export type TargetMessageBody = Partial<Record<NonNullable<InstanceType<typeof pb.TargetMessage>['body']>, object>>;

/**
 * Refuses (INVALID_ARGUMENT) a chunk that says it covers more memory than the guest has: the
 * figure comes from the peer, and goes to the driver.
 */
export function checkCovered(chunk: Pick<InstanceType<typeof pb.CheckpointChunk>, 'index' | 'memoryBytesCovered'>, guestMemoryBytes: number): void {
  const covered = Number(chunk.memoryBytesCovered);
  if (Number.isSafeInteger(covered) && covered >= 0 && covered <= guestMemoryBytes) return;
  throw invalidField('memory_bytes_covered', `chunk ${chunk.index} covers ${covered} bytes of a guest of ${guestMemoryBytes}`, { memoryBytesCovered: String(chunk.memoryBytesCovered) });
}

export interface ReceiverContext {
  readonly clock: Clock;
  readonly log: Logger;
  phase(): TransferPhase;
  /** The replica is restored: the transfer moves to `replaying`. */
  restored(): void;
  /**
   * Post-copy: the guest is about to resume here, the point of no return: the decision is recorded
   * first (throws, and the guest stays unresumed, when it cannot be).
   */
  resuming(): void;
  /**
   * Post-copy: the guest resumed here at `resumedAtMs` (clock time), with pages still missing.
   * From here it is this host's; the session confirms the activation and runs the hooks.
   */
  resumedHere(resumedAtMs: number): void;
  /** Asks for a progress report: at once when `force`, otherwise when the interval allows. */
  progress(force: boolean): void;
  send(body: TargetMessageBody): void;
}
