// MemoryArbiter: the arbiter over a store kept in this process (memory-kv.ts), with the same
// semantics as EtcdArbiter. For tests, and for a single-process setup without etcd; its records
// vanish with the process, so it arbitrates nothing between hosts.

import { type ArbiterOptions, LeaseArbiter } from './core.js';
import type { MemoryArbiterStore } from './memory-kv.js';

export class MemoryArbiter extends LeaseArbiter {
  /** An arbiter for agent `options.holderId` over `store`, on the store's clock. */
  constructor(
    readonly store: MemoryArbiterStore,
    options: ArbiterOptions,
  ) {
    super(store.client(options.holderId), { clock: store.clock, ...options });
  }
}
