// Page batches of a pre-copy transfer: each round's pages are applied to the replica as they come;
// the machine state, sent after the last round while the source is suspended, completes it.

import type { PageRestoreTarget } from '../../shared/driver/types.js';
import { InvalidStateError } from '../../shared/errors.js';
import { unpackPayload } from '../../shared/protocol.js';
import type { pb } from '../../shared/transport/grpc.js';
import type { ProgressCounters } from '../feedback.js';
import type { ReceiverContext } from './context.js';

const PAGE_BATCHES = {
  /** While pages arrive, the replica's incremental digest is refreshed at most this often. */
  digestRefreshIntervalMs: 250,
} as const;

export interface PageBatchReceiverDeps {
  /** The replica's page-restore capability. */
  readonly pageRestore: Pick<PageRestoreTarget, 'applyPages' | 'restoreMachineState'>;
  /** Hashes what changed in the replica since the last digest. */
  digest(): void;
}

export class PageBatchReceiver {
  private batchesApplied = 0;
  private complete = false;
  private lastDigestMs = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly context: ReceiverContext,
    private readonly deps: PageBatchReceiverDeps,
  ) {}

  counters(): ProgressCounters {
    return { pageBatchesApplied: this.batchesApplied, finalReplayed: this.complete };
  }

  receivePages(batch: InstanceType<typeof pb.PageBatch>): void {
    const { context } = this;
    if (context.phase() !== 'restoring') throw new InvalidStateError(`page batch received in a precopy transfer that is ${context.phase()}`, { reason: 'PROTOCOL_VIOLATION' });
    const bytes = unpackPayload(batch.payload, `page batch ${this.batchesApplied} (round ${batch.round})`);
    this.deps.pageRestore.applyPages(bytes);
    this.batchesApplied++;
    if (context.clock.now() - this.lastDigestMs > PAGE_BATCHES.digestRefreshIntervalMs) {
      // Keep the incremental digest fresh: at commitment only the last pages remain to hash.
      this.deps.digest();
      this.lastDigestMs = context.clock.now();
    }
    context.progress(false);
  }

  receiveMachineState(message: InstanceType<typeof pb.MachineState>): void {
    const { context } = this;
    if (context.phase() !== 'restoring') throw new InvalidStateError(`machine state received in a precopy transfer that is ${context.phase()}`, { reason: 'PROTOCOL_VIOLATION' });
    this.deps.pageRestore.restoreMachineState(unpackPayload(message.payload, 'machine state'));
    context.restored();
    this.complete = true;
    context.log.info({ pageBatches: this.batchesApplied }, 'pre-copy complete: pages and machine state restored');
    context.progress(true);
  }
}
