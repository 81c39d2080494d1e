// The two stores the arbiter's contract tests run against, behind one shape: arbiters for named
// agents, a cut between one agent and the store (and its repair), and a lease revoked behind the
// holder's back. In memory: one MemoryArbiterStore, cut per client. On etcd: a private etcd
// (etcd.ts), each agent reaching it through its own link emulator, which a cut resets and blocks.

import type { Test } from 'tap';
import { EtcdArbiter } from '../../shared/arbiter/etcd.js';
import { EtcdKv } from '../../shared/arbiter/etcd-kv.js';
import type { ArbiterKv } from '../../shared/arbiter/kv.js';
import { MemoryArbiter } from '../../shared/arbiter/memory.js';
import { MemoryArbiterStore } from '../../shared/arbiter/memory-kv.js';
import { guestKeys } from '../../shared/arbiter/records.js';
import type { Arbiter } from '../../shared/arbiter/types.js';
import { LinkEmulator } from '../../shared/transport/link.js';
import { type EtcdServer, startEtcdFor } from './etcd.js';

export const KEY_PREFIX = '/test';

export interface ArbiterWorld {
  readonly name: string;
  /** An arbiter for agent `holderId` (closed when the test ends). */
  arbiter(holderId: string, leaseTtlMs: number): Promise<Arbiter>;
  /** Agent `holderId` no longer reaches the store (its calls fail, its watches hear nothing). */
  cut(holderId: string): void;
  restore(holderId: string): void;
  /** Revokes the lease the guest's primary key hangs on, as another client could. */
  revokePrimaryLease(guestId: string): Promise<void>;
  /** The etcd process, on etcd. */
  readonly etcd?: EtcdServer;
}

async function revokeThrough(kv: ArbiterKv, guestId: string): Promise<void> {
  const keys = guestKeys(KEY_PREFIX, guestId);
  const { entries } = await kv.range(keys.prefix);
  const primary = entries.find((e) => e.key === keys.primary);
  if (primary === undefined) throw new Error(`guest ${guestId} has no primary key to revoke the lease of`);
  await kv.leaseRevoke(primary.leaseId);
}

export function memoryWorld(t: Test): ArbiterWorld {
  const store = new MemoryArbiterStore();
  return {
    name: 'memory',
    async arbiter(holderId, leaseTtlMs) {
      const arbiter = new MemoryArbiter(store, { holderId, leaseTtlMs, keyPrefix: KEY_PREFIX });
      t.teardown(() => arbiter.close());
      return arbiter;
    },
    cut: (holderId) => store.cut(holderId),
    restore: (holderId) => store.restore(holderId),
    revokePrimaryLease: (guestId) => revokeThrough(store.client('test-admin'), guestId),
  };
}

export async function etcdWorld(t: Test): Promise<ArbiterWorld> {
  const etcd = await startEtcdFor(t);
  const target = etcd.endpoint.replace('http://', '');
  const links = new Map<string, LinkEmulator>();
  const admin = new EtcdKv({ endpoints: [etcd.endpoint], dialTimeoutMs: 2000, callTimeoutMs: 1000 });
  t.teardown(() => admin.close());
  const linkOf = (holderId: string) => {
    const link = links.get(holderId);
    if (link === undefined) throw new Error(`no agent ${holderId} in this world`);
    return link;
  };
  return {
    name: 'etcd',
    etcd,
    async arbiter(holderId, leaseTtlMs) {
      const link = new LinkEmulator({ listen: '127.0.0.1:0', target, profile: 'loopback' });
      const address = await link.start();
      links.set(holderId, link);
      const arbiter = new EtcdArbiter({ holderId, leaseTtlMs, keyPrefix: KEY_PREFIX, endpoints: [`http://${address}`], dialTimeoutMs: 2000, callTimeoutMs: 500 });
      t.teardown(async () => {
        link.restore();
        await arbiter.close();
        await link.close();
      });
      return arbiter;
    },
    cut: (holderId) => void linkOf(holderId).cut({ block: true }),
    restore: (holderId) => linkOf(holderId).restore(),
    revokePrimaryLease: (guestId) => revokeThrough(admin, guestId),
  };
}
