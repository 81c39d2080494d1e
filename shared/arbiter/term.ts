// One held term: the lease kept alive, the local deadline that fences the holder when the lease
// can no longer be known alive, and the watch that fences it at once when the record moves on.
// The timing argument is in index.ts.

import type { Clock, Timer } from '../clock.js';
import { AbortedError } from '../errors.js';
import type { ArbiterKv, KvWatch, LeaseGrant, WatchEvent } from './kv.js';
import { decodeRecord, type GuestKeys } from './records.js';
import type { FenceEvent, FenceReason, PrimaryRecord, PrimaryTerm, TermState } from './types.js';

/** When a term renews its lease and when it gives up on it. */
export interface TermTiming {
  /** Renewals start this often (a quarter of the TTL by default). */
  keepaliveIntervalMs: number;
  /** The holder fences itself this long before its lease could expire at the arbiter. */
  fenceMarginMs: number;
  /** A renewal or a watch that failed is tried again after this. */
  retryMs: number;
  /** Bound on one renewal (or the interval, or the time to the local deadline, whichever is shortest). */
  callTimeoutMs: number;
}

export interface TermSetup {
  kv: ArbiterKv;
  clock: Clock;
  keys: GuestKeys;
  guestId: string;
  record: PrimaryRecord;
  /** The revision of the transaction that began the term: the watch starts after it. */
  revision: number;
  lease: LeaseGrant;
  /** When the lease grant was sent (clock.now()): the lease lives at least ttlMs from then. */
  grantSentAtMs: number;
  timing: TermTiming;
  /** Revokes a lease, with the arbiter's retries. */
  revoke(leaseId: string): Promise<void>;
  /** Removes the guest's records if the epoch key is still at `revision`; false if it moved on. */
  removeRecords(revision: number): Promise<boolean>;
  /** Called once when the term stops being held (fenced or released). */
  onEnd(term: HeldTerm): void;
}

export class HeldTerm implements PrimaryTerm {
  readonly guestId: string;
  readonly epoch: number;
  readonly record: Readonly<PrimaryRecord>;
  readonly fenced: Promise<FenceEvent>;
  private currentState: TermState = 'held';
  /** clock.now() past which the lease can no longer be known alive. */
  private deadlineAtMs: number;
  private deadlineTimer: Timer | null = null;
  private readonly stopped = new AbortController();
  private watch: KvWatch | null = null;
  private readonly listeners = new Set<(event: FenceEvent) => void>();
  private fenceEvent: FenceEvent | null = null;
  /** While this term removes the guest's records itself, their deletion is no news to it. */
  private retiring = false;
  private resolveFenced!: (event: FenceEvent) => void;

  constructor(private readonly setup: TermSetup) {
    this.guestId = setup.guestId;
    this.epoch = setup.record.epoch;
    this.record = Object.freeze({ ...setup.record });
    this.deadlineAtMs = setup.grantSentAtMs + setup.lease.ttlMs - setup.timing.fenceMarginMs;
    this.fenced = new Promise((resolve) => (this.resolveFenced = resolve));
  }

  get state(): TermState {
    return this.currentState;
  }

  get leaseId(): string {
    return this.setup.lease.id;
  }

  /** Arms the local deadline, starts renewing the lease and watching the guest's keys. */
  start(): void {
    this.armDeadline();
    void this.keepaliveLoop();
    void this.watchLoop();
  }

  checkDeadline(): void {
    if (this.currentState === 'held' && this.setup.clock.now() >= this.deadlineAtMs) this.onDeadline();
  }

  isHeld(): boolean {
    return this.currentState === 'held' && this.setup.clock.now() < this.deadlineAtMs;
  }

  onFenced(listener: (event: FenceEvent) => void): () => void {
    if (this.fenceEvent !== null) {
      listener(this.fenceEvent);
      return () => undefined;
    }
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async release(): Promise<void> {
    if (this.currentState === 'released') return;
    if (this.currentState === 'held') {
      this.currentState = 'released';
      this.stop();
    }
    // A fenced term's lease is revoked too: its holder says its copy is stopped.
    await this.setup.revoke(this.setup.lease.id);
  }

  async retire(): Promise<void> {
    if (this.currentState !== 'held') {
      throw new AbortedError(`guest ${this.guestId}'s term at epoch ${this.epoch} is ${this.currentState}: its records are no longer this agent's to remove`, {
        reason: 'ARBITER_EPOCH_CONFLICT',
        metadata: { guestId: this.guestId, epoch: this.epoch },
      });
    }
    this.retiring = true;
    let removed: boolean;
    try {
      removed = await this.setup.removeRecords(this.setup.revision);
    } finally {
      this.retiring = false;
    }
    if (!removed) {
      this.fence('superseded', `guest ${this.guestId}'s record moved past epoch ${this.epoch} before its removal`);
      throw new AbortedError(`guest ${this.guestId}'s record moved past epoch ${this.epoch}: not removed`, {
        reason: 'ARBITER_EPOCH_CONFLICT',
        metadata: { guestId: this.guestId, epoch: this.epoch },
      });
    }
    await this.release();
  }

  /** Ends the term involuntarily and tells every listener, once. */
  fence(reason: FenceReason, message: string, newer?: PrimaryRecord): void {
    if (this.currentState !== 'held') return;
    this.currentState = 'fenced';
    this.stop();
    const event: FenceEvent = { guestId: this.guestId, epoch: this.epoch, reason, message, ...(newer ? { newer } : {}) };
    this.fenceEvent = event;
    this.resolveFenced(event);
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch (error) {
        // A listener that throws is a programmer error: crash loudly, after the others ran.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
    this.listeners.clear();
  }

  private stop(): void {
    this.stopped.abort();
    this.deadlineTimer?.cancel();
    this.deadlineTimer = null;
    const watch = this.watch;
    this.watch = null;
    if (watch !== null) void watch.cancel().catch(() => undefined);
    this.setup.onEnd(this);
  }

  private armDeadline(): void {
    this.deadlineTimer?.cancel();
    const delayMs = Math.max(0, this.deadlineAtMs - this.setup.clock.now());
    this.deadlineTimer = this.setup.clock.timeout(delayMs, () => this.onDeadline());
  }

  private onDeadline(): void {
    if (this.currentState !== 'held') return;
    if (this.setup.clock.now() < this.deadlineAtMs) return this.armDeadline();
    const { lease, timing } = this.setup;
    this.fence(
      'lease-unknown',
      `guest ${this.guestId}: lease ${lease.id} not renewed for ${lease.ttlMs - timing.fenceMarginMs} ms (TTL ${lease.ttlMs} ms, margin ${timing.fenceMarginMs} ms): it may expire at the arbiter from now on`,
    );
  }

  /** Renews the lease every keepaliveIntervalMs; each success moves the local deadline on. */
  private async keepaliveLoop(): Promise<void> {
    const { kv, clock, lease, timing } = this.setup;
    let nextAtMs = this.setup.grantSentAtMs + timing.keepaliveIntervalMs;
    while (this.currentState === 'held') {
      try {
        await clock.sleep(Math.max(0, nextAtMs - clock.now()), this.stopped.signal);
      } catch {
        return; // stopped
      }
      const sentAtMs = clock.now();
      const remainingMs = this.deadlineAtMs - sentAtMs;
      let ttlMs: number;
      try {
        // Bounded by one interval too: a renewal that hangs gives way to a fresh one.
        ttlMs = await kv.leaseKeepAlive(lease.id, Math.max(1, Math.min(timing.callTimeoutMs, timing.keepaliveIntervalMs, remainingMs)));
      } catch {
        nextAtMs = clock.now() + timing.retryMs; // the local deadline fences if this goes on
        continue;
      }
      if (this.currentState !== 'held') return;
      // A deadline that passed while the renewal was out stays passed: isHeld() never turns true again.
      if (clock.now() >= this.deadlineAtMs) return this.onDeadline();
      if (ttlMs <= 0) {
        this.fence('lease-expired', `guest ${this.guestId}: the arbiter no longer knows lease ${lease.id} (expired or revoked)`);
        return;
      }
      // The lease lives at least ttlMs from the renewal's sending, since the arbiter applied it later.
      this.deadlineAtMs = Math.max(this.deadlineAtMs, sentAtMs + ttlMs - timing.fenceMarginMs);
      this.armDeadline();
      nextAtMs = sentAtMs + timing.keepaliveIntervalMs;
    }
  }

  /** Watches the guest's keys from the term's revision on; tries again while the term is held. */
  private async watchLoop(): Promise<void> {
    const { kv, clock, keys, timing } = this.setup;
    while (this.currentState === 'held' && this.watch === null) {
      try {
        const watch = await kv.watch(keys.prefix, this.setup.revision + 1, (event) => this.onWatchEvent(event));
        if (this.currentState !== 'held') {
          await watch.cancel().catch(() => undefined);
          return;
        }
        this.watch = watch;
      } catch {
        try {
          await clock.sleep(timing.retryMs, this.stopped.signal);
        } catch {
          return; // stopped
        }
      }
    }
  }

  private onWatchEvent(event: WatchEvent): void {
    if (this.currentState !== 'held') return;
    const { keys } = this.setup;
    if (event.key !== keys.epoch && event.key !== keys.primary) return;
    if (event.type === 'delete' && this.retiring) return;
    if (event.type === 'delete') {
      if (event.key === keys.epoch) this.fence('superseded', `guest ${this.guestId}'s records were removed at revision ${event.modRevision}`);
      else this.fence('lease-expired', `guest ${this.guestId}: the arbiter deleted the primary key at revision ${event.modRevision} (lease ${this.setup.lease.id} expired or revoked)`);
      return;
    }
    let record: PrimaryRecord;
    try {
      record = decodeRecord(event.key, event.value);
    } catch (error) {
      this.fence('superseded', `guest ${this.guestId}: ${(error as Error).message}`);
      return;
    }
    if (record.epoch !== this.epoch || record.holder !== this.record.holder) {
      this.fence('superseded', `guest ${this.guestId}: epoch ${record.epoch} granted to ${record.holder} (site ${record.site}) supersedes epoch ${this.epoch}`, record);
    }
  }
}
