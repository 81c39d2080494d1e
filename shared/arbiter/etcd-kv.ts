// The arbiter's store primitives (kv.ts) over etcd v3, through the etcd3 client. The client's own
// fault handling (a retry policy and a per-host circuit breaker that stays open for 5 s) is
// replaced by no-op policies: the arbiter bounds every call by a deadline and retries what may
// be retried itself (core.ts), so that a lease renewal never waits behind a breaker.

import { ExponentialBackoff, type IBackoff, noop } from 'cockatiel';
import { Etcd3, EtcdLeaseInvalidError, type IKeyValue, type IOptions, type Watcher } from 'etcd3';
import { UnavailableError } from '../errors.js';
import type { ArbiterKv, KvCompare, KvOp, KvWatch, LeaseGrant, RangeResult, TxnResult, WatchEvent } from './kv.js';

export interface EtcdKvOptions {
  /** Client URLs of the etcd cluster's members: http://host:port, or https:// with `tls`. */
  endpoints: readonly string[];
  /** Deadline of a call while no call has succeeded on the current connection (it includes connecting). */
  dialTimeoutMs: number;
  /** Deadline of every other call. */
  callTimeoutMs: number;
  /** Mutual TLS to etcd: its CA, and this agent's client certificate and key (both or neither). */
  tls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
}

/** Pause before a broken watch stream is opened again: 50 ms, doubling up to 1 s. */
const WATCH_BACKOFF = { initialDelay: 50, maxDelay: 1000 };
/** Keys one range read returns at most (a guest has two). */
const RANGE_KEYS_MAX = 16;

function unavailable(what: string, error: unknown): UnavailableError {
  return new UnavailableError(`etcd ${what} failed: ${(error as Error)?.message ?? String(error)}`, { reason: 'ARBITER_UNAVAILABLE', cause: error });
}

function entryOf(kv: IKeyValue): { key: string; value: string; createRevision: number; modRevision: number; leaseId: string } {
  return { key: kv.key.toString(), value: kv.value.toString(), createRevision: Number(kv.create_revision), modRevision: Number(kv.mod_revision), leaseId: String(kv.lease ?? '0') };
}

export class EtcdKv implements ArbiterKv {
  private readonly client: Etcd3;
  /** A call succeeded since the last failure: later calls get callTimeoutMs, not dialTimeoutMs. */
  private connected = false;

  constructor(private readonly options: EtcdKvOptions) {
    const etcdOptions: IOptions = {
      hosts: [...options.endpoints],
      // etcd3's typings call watchBackoff an IBackoff, but it takes a factory (its default is one too).
      faultHandling: { host: () => noop, global: noop, watchBackoff: new ExponentialBackoff(WATCH_BACKOFF) as unknown as IBackoff<unknown> },
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + this.timeoutMs() }),
      grpcOptions: { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 1000 },
    };
    if (options.tls) etcdOptions.credentials = { rootCertificate: options.tls.ca, privateKey: options.tls.key, certChain: options.tls.cert };
    this.client = new Etcd3(etcdOptions);
  }

  async range(prefix: string): Promise<RangeResult> {
    const response = await this.call('range', () => this.client.getAll().prefix(prefix).limit(RANGE_KEYS_MAX).exec());
    return { revision: Number(response.header.revision), entries: response.kvs.map(entryOf) };
  }

  async txn(compares: readonly KvCompare[], ops: readonly KvOp[]): Promise<TxnResult> {
    const [first, ...rest] = compares;
    let builder = this.client.if(first.key, 'Mod', '==', first.modRevision);
    for (const c of rest) builder = builder.and(c.key, 'Mod', '==', c.modRevision);
    const operations = ops.map((op) => {
      if (op.kind === 'delete') return this.client.delete().key(op.key);
      const put = this.client.put(op.key).value(op.value);
      return op.leaseId !== undefined && op.leaseId !== '0' ? put.lease(op.leaseId) : put;
    });
    const response = await this.call('transaction', () => builder.then(...operations).commit());
    return { succeeded: response.succeeded, revision: Number(response.header.revision) };
  }

  async leaseGrant(ttlMs: number): Promise<LeaseGrant> {
    const response = await this.call('lease grant', () => this.client.leaseClient.leaseGrant({ TTL: Math.ceil(ttlMs / 1000) }));
    if (response.error) throw unavailable('lease grant', new Error(response.error));
    return { id: String(response.ID), ttlMs: Number(response.TTL) * 1000 };
  }

  async leaseKeepAlive(id: string, timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    const stream = await this.call('lease keepalive', () => this.client.leaseClient.leaseKeepAlive({ deadline }));
    try {
      const ttlSeconds = await new Promise<number>((resolve, reject) => {
        // The call's deadline ends the stream with DEADLINE_EXCEEDED; this timer is a second bound.
        const timer = setTimeout(() => reject(unavailable('lease keepalive', new Error(`no answer within ${timeoutMs} ms`))), timeoutMs + 50);
        stream.on('data', (response: { TTL: string }) => {
          clearTimeout(timer);
          resolve(Number(response.TTL));
        });
        stream.on('error', (error: unknown) => {
          clearTimeout(timer);
          reject(unavailable('lease keepalive', error));
        });
        stream.write({ ID: id });
      });
      this.connected = true;
      // A half-close: etcd ends the stream. (A cancel would count as a failure of the connection.)
      stream.end();
      return ttlSeconds > 0 ? ttlSeconds * 1000 : 0;
    } catch (error) {
      this.connected = false;
      (stream as unknown as { cancel?: () => void }).cancel?.();
      throw error;
    }
  }

  async leaseRevoke(id: string): Promise<void> {
    try {
      await this.call('lease revoke', () => this.client.leaseClient.leaseRevoke({ ID: id }));
    } catch (error) {
      if (!((error as Error).cause instanceof EtcdLeaseInvalidError)) throw error;
    }
  }

  async leaseGrantedTtl(id: string): Promise<number> {
    const response = await this.call('lease time-to-live', () => this.client.leaseClient.leaseTimeToLive({ ID: id }));
    return Number(response.TTL) > 0 ? Number(response.grantedTTL) * 1000 : 0;
  }

  async watch(prefix: string, fromRevision: number, onEvent: (event: WatchEvent) => void): Promise<KvWatch> {
    const watcher: Watcher = this.client.watch().prefix(prefix).startRevision(String(fromRevision)).watcher();
    const deliver = (type: 'put' | 'delete') => (kv: IKeyValue) => onEvent({ type, key: kv.key.toString(), value: type === 'put' ? kv.value.toString() : '', modRevision: Number(kv.mod_revision) });
    watcher.on('put', deliver('put'));
    watcher.on('delete', deliver('delete'));
    // A watch etcd cancelled (its start revision compacted): the holder's renewals still fence it.
    watcher.on('error', () => undefined);
    const cancel = () => this.bounded(watcher.cancel()).catch(() => undefined);
    try {
      await this.bounded(
        new Promise<void>((resolve, reject) => {
          watcher.once('connected', () => resolve());
          watcher.once('disconnected', (error: unknown) => reject(error));
        }),
      );
    } catch (error) {
      this.connected = false;
      await cancel();
      throw unavailable('watch', error);
    }
    this.connected = true;
    return { cancel };
  }

  async close(): Promise<void> {
    this.client.close();
  }

  private timeoutMs(): number {
    return this.connected ? this.options.callTimeoutMs : Math.max(this.options.callTimeoutMs, this.options.dialTimeoutMs);
  }

  /** Resolves or rejects as `promise` does, or rejects once the call's deadline has passed. */
  private bounded<T>(promise: Promise<T>): Promise<T> {
    const timeoutMs = this.timeoutMs();
    let timer: NodeJS.Timeout | undefined;
    const expiry = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    });
    return Promise.race([promise, expiry]).finally(() => clearTimeout(timer));
  }

  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      const result = await this.bounded(fn());
      this.connected = true;
      return result;
    } catch (error) {
      this.connected = false;
      throw unavailable(what, error);
    }
  }
}
