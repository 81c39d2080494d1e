// The arbiter's store kept in this process, with etcd's rules where the arbiter relies on them:
// one revision per write, compares on modification revisions (0: absent), leases that delete
// their keys when they expire (all in one revision), ordered watch events from a revision on.
// Several arbiters (one per simulated agent) share one store, each through its own client, and a
// test can cut a client off: its calls fail UNAVAILABLE and its watches hear nothing until it is
// restored (then they catch up, in order), while the store's leases keep running out.

import { type Clock, systemClock, type Timer } from '../clock.js';
import { LimitExceededError, UnavailableError } from '../errors.js';
import type { ArbiterKv, KvCompare, KvEntry, KvOp, KvWatch, LeaseGrant, RangeResult, TxnResult, WatchEvent } from './kv.js';

/** Keys, leases and watches one store holds at most. */
export const MEMORY_KEYS_MAX = 100_000;
export const MEMORY_LEASES_MAX = 100_000;
export const MEMORY_WATCHES_MAX = 100_000;
/** Events kept for catching up watches (a watch from an older revision is refused). */
const HISTORY_MAX = 10_000;

interface MemoryLease {
  ttlMs: number;
  timer: Timer;
  keys: Set<string>;
}

interface MemoryWatch {
  client: string;
  prefix: string;
  onEvent: (event: WatchEvent) => void;
  /** The last revision delivered. */
  deliveredRevision: number;
}

export class MemoryArbiterStore {
  private revision = 1;
  private readonly entries = new Map<string, KvEntry>();
  private readonly leases = new Map<string, MemoryLease>();
  private readonly watches = new Set<MemoryWatch>();
  private readonly history: WatchEvent[] = [];
  private readonly cutOff = new Set<string>();
  private nextLeaseId = 1;
  /** The newest revision whose events no longer are in the history. */
  private compactedRevision = 0;

  constructor(readonly clock: Clock = systemClock) {}

  /** The store as client `name` reaches it (a cut affects that client only). */
  client(name: string): ArbiterKv {
    return new MemoryKvClient(this, name);
  }

  /** Client `name`'s calls fail UNAVAILABLE and its watches hear nothing, until `restore(name)`. */
  cut(name: string): void {
    this.cutOff.add(name);
  }

  /** Client `name` reaches the store again; its watches catch up on what they missed, in order. */
  restore(name: string): void {
    this.cutOff.delete(name);
    for (const watch of this.watches) if (watch.client === name) this.catchUp(watch);
  }

  /** Leases alive now. */
  get leaseCount(): number {
    return this.leases.size;
  }

  checkReachable(client: string, what: string): void {
    if (this.cutOff.has(client)) throw new UnavailableError(`the arbiter's store cannot be reached from ${client} (${what})`, { reason: 'ARBITER_UNAVAILABLE' });
  }

  range(prefix: string): RangeResult {
    const entries = [...this.entries.values()].filter((e) => e.key.startsWith(prefix)).map((e) => ({ ...e }));
    return { revision: this.revision, entries };
  }

  txn(compares: readonly KvCompare[], ops: readonly KvOp[]): TxnResult {
    const holds = compares.every((c) => (this.entries.get(c.key)?.modRevision ?? 0) === c.modRevision);
    if (!holds) return { succeeded: false, revision: this.revision };
    for (const op of ops) if (op.kind === 'put' && op.leaseId !== undefined && op.leaseId !== '0' && !this.leases.has(op.leaseId)) throw new UnavailableError(`lease ${op.leaseId} not found`, { reason: 'ARBITER_UNAVAILABLE' });
    const added = ops.filter((op) => op.kind === 'put' && !this.entries.has(op.key)).length;
    if (this.entries.size + added > MEMORY_KEYS_MAX) throw new LimitExceededError(`the memory arbiter store holds ${this.entries.size} keys, the limit is ${MEMORY_KEYS_MAX}`);
    this.revision++;
    const events: WatchEvent[] = [];
    for (const op of ops) {
      if (op.kind === 'put') events.push(this.put(op.key, op.value, op.leaseId ?? '0'));
      else if (this.entries.has(op.key)) events.push(this.remove(op.key));
    }
    this.publish(events);
    return { succeeded: true, revision: this.revision };
  }

  leaseGrant(ttlMs: number): LeaseGrant {
    if (this.leases.size >= MEMORY_LEASES_MAX) throw new LimitExceededError(`the memory arbiter store holds ${this.leases.size} leases, the limit is ${MEMORY_LEASES_MAX}`);
    const id = String(this.nextLeaseId++);
    this.leases.set(id, { ttlMs, timer: this.expiryTimer(id, ttlMs), keys: new Set() });
    return { id, ttlMs };
  }

  leaseKeepAlive(id: string): number {
    const lease = this.leases.get(id);
    if (lease === undefined) return 0;
    lease.timer.cancel();
    lease.timer = this.expiryTimer(id, lease.ttlMs);
    return lease.ttlMs;
  }

  leaseGrantedTtl(id: string): number {
    return this.leases.get(id)?.ttlMs ?? 0;
  }

  /** Ends lease `id` and deletes its keys in one revision (expiry and revoke alike). */
  leaseRevoke(id: string): void {
    const lease = this.leases.get(id);
    if (lease === undefined) return;
    lease.timer.cancel();
    this.leases.delete(id);
    if (lease.keys.size === 0) return;
    this.revision++;
    this.publish([...lease.keys].map((key) => this.remove(key)));
  }

  watch(client: string, prefix: string, fromRevision: number, onEvent: (event: WatchEvent) => void): KvWatch {
    if (this.watches.size >= MEMORY_WATCHES_MAX) throw new LimitExceededError(`the memory arbiter store runs ${this.watches.size} watches, the limit is ${MEMORY_WATCHES_MAX}`);
    if (fromRevision <= this.compactedRevision) throw new UnavailableError(`watch from revision ${fromRevision}: the store keeps events after revision ${this.compactedRevision} only`, { reason: 'ARBITER_UNAVAILABLE' });
    const watch: MemoryWatch = { client, prefix, onEvent, deliveredRevision: fromRevision - 1 };
    this.watches.add(watch);
    // Events from fromRevision on that happened already come first, after this call returns.
    queueMicrotask(() => this.catchUp(watch));
    return {
      cancel: async () => {
        this.watches.delete(watch);
      },
    };
  }

  cancelWatches(client: string): void {
    for (const watch of this.watches) if (watch.client === client) this.watches.delete(watch);
  }

  private expiryTimer(id: string, ttlMs: number): Timer {
    return this.clock.timeout(ttlMs, () => this.leaseRevoke(id));
  }

  private put(key: string, value: string, leaseId: string): WatchEvent {
    const old = this.entries.get(key);
    if (old && old.leaseId !== '0') this.leases.get(old.leaseId)?.keys.delete(key);
    this.entries.set(key, { key, value, createRevision: old?.createRevision ?? this.revision, modRevision: this.revision, leaseId });
    if (leaseId !== '0') this.leases.get(leaseId)!.keys.add(key);
    return { type: 'put', key, value, modRevision: this.revision };
  }

  private remove(key: string): WatchEvent {
    const old = this.entries.get(key)!;
    if (old.leaseId !== '0') this.leases.get(old.leaseId)?.keys.delete(key);
    this.entries.delete(key);
    return { type: 'delete', key, value: '', modRevision: this.revision };
  }

  private publish(events: WatchEvent[]): void {
    this.history.push(...events);
    if (this.history.length > HISTORY_MAX) {
      const dropped = this.history.splice(0, this.history.length - HISTORY_MAX);
      this.compactedRevision = dropped[dropped.length - 1].modRevision;
    }
    for (const watch of this.watches) this.catchUp(watch);
  }

  /** Delivers to `watch`, in order, the events under its prefix it has not had yet. */
  private catchUp(watch: MemoryWatch): void {
    if (this.cutOff.has(watch.client) || !this.watches.has(watch)) return;
    for (const event of this.history) {
      if (event.modRevision <= watch.deliveredRevision || !event.key.startsWith(watch.prefix)) continue;
      if (!this.watches.has(watch)) return;
      watch.onEvent({ ...event });
    }
    watch.deliveredRevision = this.revision;
  }
}

/** The store as one client reaches it: every call checks the cut first, like a network would. */
class MemoryKvClient implements ArbiterKv {
  constructor(
    private readonly store: MemoryArbiterStore,
    private readonly name: string,
  ) {}

  async range(prefix: string): Promise<RangeResult> {
    this.store.checkReachable(this.name, 'range');
    return this.store.range(prefix);
  }

  async txn(compares: readonly KvCompare[], ops: readonly KvOp[]): Promise<TxnResult> {
    this.store.checkReachable(this.name, 'txn');
    return this.store.txn(compares, ops);
  }

  async leaseGrant(ttlMs: number): Promise<LeaseGrant> {
    this.store.checkReachable(this.name, 'lease grant');
    return this.store.leaseGrant(ttlMs);
  }

  async leaseKeepAlive(id: string): Promise<number> {
    this.store.checkReachable(this.name, 'lease keepalive');
    return this.store.leaseKeepAlive(id);
  }

  async leaseRevoke(id: string): Promise<void> {
    this.store.checkReachable(this.name, 'lease revoke');
    this.store.leaseRevoke(id);
  }

  async leaseGrantedTtl(id: string): Promise<number> {
    this.store.checkReachable(this.name, 'lease time-to-live');
    return this.store.leaseGrantedTtl(id);
  }

  async watch(prefix: string, fromRevision: number, onEvent: (event: WatchEvent) => void): Promise<KvWatch> {
    this.store.checkReachable(this.name, 'watch');
    return this.store.watch(this.name, prefix, fromRevision, onEvent);
  }

  async close(): Promise<void> {
    this.store.cancelWatches(this.name);
  }
}
