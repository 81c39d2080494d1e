// Builds the arbiter the configuration's `arbiter` section asks for (schema.ts): none, an
// EtcdArbiter, or a MemoryArbiter over the store every agent of this process shares.

import { readFileSync } from 'node:fs';
import type { Clock } from '../clock.js';
import { ConfigError } from '../config.js';
import { EtcdArbiter } from './etcd.js';
import { MemoryArbiter } from './memory.js';
import { MemoryArbiterStore } from './memory-kv.js';
import type { ArbiterConfig } from './schema.js';
import type { Arbiter } from './types.js';

/** Largest TLS file read for etcd (a certificate chain is a few KiB). */
const TLS_FILE_BYTES_MAX = 1024 * 1024;

export interface ArbiterFactoryOptions {
  /** The holder id when the section names none (the agent chooses it: unique, stable across restarts). */
  holderId: string;
  clock?: Clock;
  /** The store of `kind: memory` (default: one shared by every agent of this process). */
  memoryStore?: MemoryArbiterStore;
}

let processMemoryStore: MemoryArbiterStore | null = null;

/** The in-memory store the agents of this process share when their arbiter is `kind: memory`. */
export function processArbiterStore(): MemoryArbiterStore {
  processMemoryStore ??= new MemoryArbiterStore();
  return processMemoryStore;
}

/** The arbiter of `section`, or null for `kind: none` (failover is manual). Throws ConfigError for an unreadable TLS file. */
export function createArbiter(section: ArbiterConfig, options: ArbiterFactoryOptions): Arbiter | null {
  switch (section.kind) {
    case 'none':
      return null;
    case 'memory': {
      const store = options.memoryStore ?? processArbiterStore();
      return new MemoryArbiter(store, {
        holderId: section.holderId ?? options.holderId,
        site: section.site,
        leaseTtlMs: section.leaseTtlMs,
        keyPrefix: section.keyPrefix,
        ...(options.clock ? { clock: options.clock } : {}),
      });
    }
    case 'etcd': {
      const tls = section.tls
        ? {
            ca: readTlsFile('arbiter.tls.ca', section.tls.ca),
            ...(section.tls.cert ? { cert: readTlsFile('arbiter.tls.cert', section.tls.cert) } : {}),
            ...(section.tls.key ? { key: readTlsFile('arbiter.tls.key', section.tls.key) } : {}),
          }
        : undefined;
      return new EtcdArbiter({
        holderId: section.holderId ?? options.holderId,
        site: section.site,
        leaseTtlMs: section.leaseTtlMs,
        keyPrefix: section.keyPrefix,
        endpoints: section.endpoints,
        dialTimeoutMs: section.dialTimeoutMs,
        callTimeoutMs: section.callTimeoutMs,
        ...(tls ? { tls } : {}),
        ...(options.clock ? { clock: options.clock } : {}),
      });
    }
  }
}

function readTlsFile(field: string, path: string): Buffer {
  try {
    const bytes = readFileSync(path);
    if (bytes.length > TLS_FILE_BYTES_MAX) throw new Error(`${bytes.length} bytes, more than ${TLS_FILE_BYTES_MAX}`);
    return bytes;
  } catch (error) {
    throw new ConfigError(field, `invalid configuration: ${field}: cannot read ${path}: ${(error as Error).message}`);
  }
}
