// The few etcd v3 primitives the arbiter is built on, as a narrow interface: a linearizable range
// read, a transaction guarded by modification revisions, leases and watches. EtcdKv (etcd-kv.ts)
// speaks them to etcd; MemoryArbiterStore (memory-kv.ts) keeps them in this process with the same
// rules (revisions, leases deleting their keys on expiry, ordered watch events), so the arbiter's
// logic above runs, and is tested, unchanged over both.
//
// Every call is bounded by a deadline. A failure to reach the store is UNAVAILABLE
// (ARBITER_UNAVAILABLE). A transaction that failed that way may still have been applied: the
// caller reads back to learn its outcome.

/** One key as the store holds it. */
export interface KvEntry {
  key: string;
  value: string;
  /** The revision of the key's creation, and of its last change. */
  createRevision: number;
  modRevision: number;
  /** The lease the key is attached to, '0' for none. */
  leaseId: string;
}

export interface RangeResult {
  /** The store's revision at the read. */
  revision: number;
  entries: KvEntry[];
}

/** A transaction's guard: `key`'s modification revision equals `modRevision` (0: the key is absent). */
export interface KvCompare {
  key: string;
  modRevision: number;
}

export type KvOp = { kind: 'put'; key: string; value: string; leaseId?: string } | { kind: 'delete'; key: string };

export interface TxnResult {
  /** Every compare held and the operations were applied, all at `revision`. */
  succeeded: boolean;
  revision: number;
}

export interface LeaseGrant {
  id: string;
  /** The TTL granted, milliseconds (etcd grants whole seconds, at least its minimum). */
  ttlMs: number;
}

export interface WatchEvent {
  type: 'put' | 'delete';
  key: string;
  /** The value put ('' for a delete). */
  value: string;
  /** The revision of the change. */
  modRevision: number;
}

export interface KvWatch {
  cancel(): Promise<void>;
}

export interface ArbiterKv {
  /** Every key under `prefix`, linearizable. */
  range(prefix: string): Promise<RangeResult>;
  /** Applies `ops` at one revision if every compare holds. Not retried (see above). */
  txn(compares: readonly KvCompare[], ops: readonly KvOp[]): Promise<TxnResult>;
  leaseGrant(ttlMs: number): Promise<LeaseGrant>;
  /**
   * Renews lease `id` once, within `timeoutMs`: resolves with its TTL from now, milliseconds, or
   * 0 if the store no longer knows the lease (expired or revoked).
   */
  leaseKeepAlive(id: string, timeoutMs: number): Promise<number>;
  /** Revokes lease `id`, deleting its keys; a lease already gone is not an error. */
  leaseRevoke(id: string): Promise<void>;
  /** Lease `id`'s granted TTL, milliseconds, or 0 if it is gone. */
  leaseGrantedTtl(id: string): Promise<number>;
  /**
   * Calls `onEvent` for every change under `prefix` from revision `fromRevision` on, in revision
   * order, across reconnections; resolves once the watch is established.
   */
  watch(prefix: string, fromRevision: number, onEvent: (event: WatchEvent) => void): Promise<KvWatch>;
  /** Ends every watch and the connection. */
  close(): Promise<void>;
}
