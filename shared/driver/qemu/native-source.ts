// The source end of QEMU's own migration stream (capability native-stream): QMP's migrate into
// the unix socket the agent serves, with the parameters the agents' request maps to
// (downtime-limit, max-bandwidth, the auto-converge and postcopy-ram capabilities, and `events`,
// so that each status change comes as a MIGRATION event), the figures of query-migrate, the
// switch to post-copy, and the cancel that leaves the guest running here.
//
// A cancelled or failed migration settles in QEMU's own time (its migration thread ends it): the
// cancel waits for that, bounded, and resumes the guest if QEMU had stopped it for good (a
// stream completed whose target then failed leaves it in `postmigrate`). QEMU resumes a guest it
// had stopped for its switchover by itself when the migration fails or is cancelled then.

import { QmpError, type QmpClient } from './qmp.js';
import type { NativeDirtyRate, NativeMigrationInfo, NativeMigrationParameters, NativeStreamSource } from '../native-types.js';
import { MIGRATION_RUNNING_STATUSES, migrationInfoOf, QEMU_BANDWIDTH_UNLIMITED, QEMU_DOWNTIME_LIMIT_MS_MAX } from './migration-info.js';

/** How long a cancelled migration may take to end in QEMU before the cancel fails. */
const CANCEL_SETTLE_MS_MAX = 10_000;
/** Pause between two looks at a migration that is ending. */
const SETTLE_POLL_MS = 10;
/** calc-dirty-rate measures over whole seconds: at least one, at most this many. */
const DIRTY_RATE_SECONDS_MAX = 60;
/** Pause between two looks at a dirty-rate measurement, and how long past its span it may take. */
const DIRTY_RATE_POLL_MS = 100;
const DIRTY_RATE_GRACE_MS = 5_000;

export class QemuNativeSource implements NativeStreamSource {
  /** The last cancel, which a resume of the guest waits for (its QEMU must have ended the migration first). */
  private settling: Promise<void> = Promise.resolve();

  constructor(
    private readonly qmp: () => Promise<QmpClient>,
    private readonly guestId: string,
  ) {}

  /** Settles once the last cancel did (never rejects). */
  get settled(): Promise<void> {
    return this.settling.catch(() => undefined);
  }

  async configure(p: NativeMigrationParameters): Promise<void> {
    const client = await this.qmp();
    await client.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'events', state: true },
        { capability: 'postcopy-ram', state: p.postcopy },
        { capability: 'auto-converge', state: p.autoConverge },
      ],
    });
    await client.execute('migrate-set-parameters', {
      'downtime-limit': Math.min(QEMU_DOWNTIME_LIMIT_MS_MAX, Math.max(1, Math.round(p.downtimeLimitMs))),
      'max-bandwidth': p.maxBandwidthBytesPerSec > 0 ? Math.round(p.maxBandwidthBytesPerSec) : QEMU_BANDWIDTH_UNLIMITED,
      // After the switch QEMU sends at this rate instead (0: no limit), so the job's bandwidth holds in post-copy too.
      'max-postcopy-bandwidth': p.maxBandwidthBytesPerSec > 0 ? Math.round(p.maxBandwidthBytesPerSec) : 0,
    });
  }

  async start(endpoint: string): Promise<void> {
    const client = await this.qmp();
    await client.execute('migrate', { uri: `unix:${endpoint}` });
  }

  async info(): Promise<NativeMigrationInfo> {
    const client = await this.qmp();
    return migrationInfoOf(await client.execute('query-migrate'));
  }

  onStatus(listener: (status: string) => void): () => void {
    return this.onEvent('MIGRATION', (data) => {
      if (typeof data.status === 'string') listener(data.status);
    });
  }

  /** QEMU's STOP event: nothing else stops the guest while it migrates (the agents leave that to QEMU). */
  onGuestStop(listener: () => void): () => void {
    return this.onEvent('STOP', () => listener());
  }

  private onEvent(name: string, listener: (data: Record<string, unknown>) => void): () => void {
    let stop: (() => void) | null = null;
    let stopped = false;
    void this.qmp().then(
      (client) => {
        if (stopped) return;
        stop = client.onEvent((event) => {
          if (event.event === name) listener(event.data);
        });
      },
      () => undefined,
    );
    return () => {
      stopped = true;
      stop?.();
    };
  }

  async startPostcopy(): Promise<void> {
    const client = await this.qmp();
    await client.execute('migrate-start-postcopy');
  }

  /** QEMU switches over once what is left fits its downtime limit: the largest it takes makes that the next pass. */
  async forceSwitchover(): Promise<void> {
    const client = await this.qmp();
    await client.execute('migrate-set-parameters', { 'downtime-limit': QEMU_DOWNTIME_LIMIT_MS_MAX });
  }

  cancel(): Promise<void> {
    this.settling = this.cancelAndSettle();
    return this.settling;
  }

  /**
   * QEMU's calc-dirty-rate in its page-sampling mode (the default: it hashes 512 sampled pages per
   * GiB at the start and the end of the span; its dirty-bitmap mode made QEMU 7.2 exit under TCG),
   * read back with query-dirty-rate, which gives MiB per second.
   */
  async measureDirtying(periodMs: number, signal?: AbortSignal): Promise<NativeDirtyRate> {
    const client = await this.qmp();
    const seconds = Math.min(DIRTY_RATE_SECONDS_MAX, Math.max(1, Math.round(periodMs / 1000)));
    await client.execute('calc-dirty-rate', { 'calc-time': seconds });
    const deadline = Date.now() + seconds * 1000 + DIRTY_RATE_GRACE_MS;
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, DIRTY_RATE_POLL_MS));
      signal?.throwIfAborted();
      const answer = await client.execute<{ status?: string; 'dirty-rate'?: number }>('query-dirty-rate');
      if (answer.status === 'measured') return { dirtyBytesPerSec: Math.max(0, answer['dirty-rate'] ?? 0) * 2 ** 20, periodMs: seconds * 1000 };
      if (Date.now() > deadline) {
        throw new QmpError('DEADLINE_EXCEEDED', `guest '${this.guestId}': QEMU's dirty-rate measurement was still '${answer.status}' ${seconds * 1000 + DIRTY_RATE_GRACE_MS} ms after it began`, { metadata: { guestId: this.guestId, command: 'query-dirty-rate' } });
      }
    }
  }

  private async cancelAndSettle(): Promise<void> {
    const client = await this.qmp();
    // No migration under way: QEMU does nothing.
    await client.execute('migrate_cancel');
    const deadline = Date.now() + CANCEL_SETTLE_MS_MAX;
    for (;;) {
      const { status } = migrationInfoOf(await client.execute('query-migrate'));
      if (!MIGRATION_RUNNING_STATUSES.has(status)) break;
      if (status === 'postcopy-active' || status === 'postcopy-paused' || status === 'postcopy-recover') {
        throw new QmpError('FAILED_PRECONDITION', `guest '${this.guestId}': its migration is in post-copy (${status}): QEMU cannot take it back, the guest runs on the target`, { metadata: { guestId: this.guestId, command: 'migrate_cancel' } });
      }
      if (Date.now() > deadline) {
        throw new QmpError('DEADLINE_EXCEEDED', `guest '${this.guestId}': its migration was still '${status}' ${CANCEL_SETTLE_MS_MAX} ms after migrate_cancel`, { metadata: { guestId: this.guestId, command: 'migrate_cancel' } });
      }
      await new Promise((resolve) => setTimeout(resolve, SETTLE_POLL_MS));
    }
    // A stream that completed before its target failed left the guest stopped for good here.
    const { status } = await client.execute<{ status: string }>('query-status');
    if (status === 'postmigrate') await client.execute('cont');
  }
}
