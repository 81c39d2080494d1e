// EtcdArbiter: the arbiter over an etcd v3 cluster (Debian's etcd-server, etcd 3.4 or later),
// the store that lets two sites agree on one primary per guest. See index.ts.

import { type ArbiterOptions, LeaseArbiter } from './core.js';
import { EtcdKv, type EtcdKvOptions } from './etcd-kv.js';

export type EtcdArbiterOptions = ArbiterOptions & EtcdKvOptions;

export class EtcdArbiter extends LeaseArbiter {
  constructor(options: EtcdArbiterOptions) {
    super(new EtcdKv(options), options);
  }
}
