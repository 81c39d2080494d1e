// A network link between the two agents emulated in user space: a TCP proxy that relays every
// connection to a target and shapes each direction like a real link (line rate, propagation delay,
// bounded buffering with backpressure), and that can cut every connection at a chosen moment. The
// kernel here has no netem, and a proxy needs no privileges; the reliability work uses `cut` and
// `cutAfterBytes` to drop a migration part-way, and `stall`, `corruptAfterBytes` (link-faults.ts)
// and `retarget` (a peer restarted behind the same address) for the fault matrix.
//
// Model of one direction (the "wire", shared by every connection of the link, as a real link is):
// a chunk read at time `arrival` starts serialising when the wire is free, leaves it size/bandwidth
// later, and is delivered one propagation delay (rttMs / 2) after that:
//
//   departure = max(arrival, wireFreeAt) + size / bandwidth;   wireFreeAt = departure
//   due       = departure + rttMs / 2
//
// This is a token bucket of depth zero: no burst above the line rate, FIFO across connections.
// Due times are computed on arrival in virtual time, so a late timer delays delivery but never
// lowers the achieved rate. Nothing is delivered before its due time, and a direction's due times
// never decrease, so order is preserved within a connection and FIN travels after the data.
//
// Timers: one scheduler per link wakes at the earliest due time of all queued chunks, with
// setImmediate when something is already due and setTimeout otherwise. setTimeout has 1 ms
// resolution (libuv's clock is in whole ms, so it may even fire early; the scheduler then re-arms),
// so a chunk is released about 1 ms after it is due: measured here 0.8-1.3 ms late on average and
// a few ms at most on a quiet host, more whenever the event loop is busy elsewhere
// (`stats().scheduler` reports it). The 0.2 ms RTT of `lan` therefore becomes ~2.4 ms for an
// echo, while its rate stays exact since due times are virtual. Chunks are whole socket reads (up
// to 64 KiB) released at once: 0.5 ms of serialisation at `lan` rates, 5 ms at `wan` rates. The
// proxy shares its process's event loop: unshaped, it relays ~260 MB/s here with both ends in the
// same process.
//
// Not modelled: loss, reordering, jitter, MTU; resets (from a peer, or a cut) act immediately
// instead of after the propagation delay; the bytes a reset discards keep the wire busy for the
// other connections as if sent (a cut of all connections frees it). The queue bound is per
// connection, so a full queue is also up to bufferBytesMax / bandwidth of queueing delay, as in a
// deep-buffered router. Connection setup costs one RTT, as a TCP handshake does

import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { performance } from 'node:perf_hooks';
import { InvalidArgumentError, InvalidStateError, UnavailableError } from '../errors.js';
import { type LinkCorruptInfo, type LinkCorruptOptions, type LinkDirection, LinkFaults } from './link-faults.js';
import { LinkConnection, type LinkHost, Wire } from './link-flow.js';
import {
  type Address,
  checkInteger,
  LINK_BUFFER_BYTES_DEFAULT,
  LINK_BUFFER_BYTES_MAX,
  LINK_BUFFER_BYTES_MIN,
  LINK_CONNECT_TIMEOUT_MS_DEFAULT,
  LINK_CONNECT_TIMEOUT_MS_MAX,
  LINK_CONNECTIONS_MAX_DEFAULT,
  LINK_CONNECTIONS_MAX_LIMIT,
  formatAddress, type LinkConnectionStats, type LinkCutAfterBytesOptions, type LinkCutInfo, type LinkCutOptions, type LinkOptions, type LinkProfile, type LinkStats, parseAddress, resolveLinkProfile } from './link-types.js';

export { LINK_STALL_MS_MAX, type LinkCorruptInfo, type LinkCorruptOptions, type LinkDirection } from './link-faults.js';
export * from './link-types.js';

/**
 * A TCP proxy emulating a network link between a client and `target`; see the top of this file
 * for the model. Emits 'cut' with a LinkCutInfo whenever its connections are cut.
 */
export class LinkEmulator extends EventEmitter<{ cut: [LinkCutInfo]; corrupt: [LinkCorruptInfo] }> implements LinkHost {
  readonly profile: LinkProfile;
  readonly bufferBytesMax: number;
  readonly connectionsMax: number;
  readonly connectTimeoutMs: number;
  /** @internal The stall and the armed corruption (link-faults.ts), consulted by every Flow. */
  readonly faults = new LinkFaults();
  private readonly listenAt: Address;
  private targetAt: Address;
  private readonly forwardWire: Wire;
  private readonly reverseWire: Wire;
  private readonly connections = new Set<LinkConnection>();
  private server: net.Server | null = null;
  private listeningAddress: string | null = null;
  private closing: Promise<void> | null = null;
  private isBlocked = false;
  private trigger: { direction: LinkDirection | 'both'; remaining: number; block: boolean } | null = null;
  private nextId = 1;
  private counts = { accepted: 0, refused: 0, failed: 0, cuts: 0, queuedBytesPeak: 0 };

  // Scheduler: a single wake (timer or immediate) at the earliest due time of any flow.
  private wakeDueMs = Infinity;
  private wakeTimer: NodeJS.Timeout | null = null;
  private wakeImmediate: NodeJS.Immediate | null = null;
  private wakeByTimer = false;
  private scheduler = { wakes: 0, earlyWakes: 0, lateMsSum: 0, lateMsMax: 0 };

  constructor(options: LinkOptions) {
    super();
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('link options: expected an object');
    this.listenAt = parseAddress(options.listen, 'listen', 0);
    this.targetAt = parseAddress(options.target, 'target', 1);
    this.profile = resolveLinkProfile(options.profile);
    const { bandwidthBytesPerSec, rttMs } = this.profile;
    const unshaped = bandwidthBytesPerSec === 0 || bandwidthBytesPerSec === Infinity;
    const bdpBytes = unshaped ? 0 : Math.ceil((bandwidthBytesPerSec * rttMs) / 2 / 1000);
    this.bufferBytesMax = checkInteger(
      options.bufferBytesMax ?? Math.min(LINK_BUFFER_BYTES_MAX, Math.max(LINK_BUFFER_BYTES_DEFAULT, 2 * bdpBytes)),
      'bufferBytesMax',
      LINK_BUFFER_BYTES_MIN,
      LINK_BUFFER_BYTES_MAX,
    );
    this.connectionsMax = checkInteger(options.connectionsMax ?? LINK_CONNECTIONS_MAX_DEFAULT, 'connectionsMax', 1, LINK_CONNECTIONS_MAX_LIMIT);
    this.connectTimeoutMs = checkInteger(options.connectTimeoutMs ?? LINK_CONNECT_TIMEOUT_MS_DEFAULT, 'connectTimeoutMs', 1, LINK_CONNECT_TIMEOUT_MS_MAX);
    const msPerByte = unshaped ? 0 : 1000 / bandwidthBytesPerSec;
    this.forwardWire = new Wire(msPerByte, rttMs / 2);
    this.reverseWire = new Wire(msPerByte, rttMs / 2);
  }

  /** Starts listening; resolves with the address clients connect to, 'host:port'. */
  start(): Promise<string> {
    if (this.server || this.closing) return Promise.reject(new InvalidStateError('link: start called twice, or after close'));
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    this.server = server;
    return new Promise((resolve, reject) => {
      const onError = (error: Error) => reject(new UnavailableError(`link: cannot listen on ${formatAddress(this.listenAt.host, this.listenAt.port)}: ${error.message}`, { cause: error }));
      server.once('error', onError);
      server.listen({ host: this.listenAt.host, port: this.listenAt.port }, () => {
        server.off('error', onError);
        // A listening server's errors are per-connection (EMFILE on accept): not fatal to the link.
        server.on('error', () => undefined);
        const bound = server.address() as net.AddressInfo;
        this.listeningAddress = formatAddress(this.listenAt.host, bound.port);
        resolve(this.listeningAddress);
      });
    });
  }

  /** The address clients connect to, once started. */
  get address(): string {
    if (!this.listeningAddress) throw new InvalidStateError('link: not started');
    return this.listeningAddress;
  }

  /** Whether new connections are refused (after cut({ block: true }), until restore()). */
  get blocked(): boolean {
    return this.isBlocked;
  }

  /** Bytes read but not yet delivered, all connections and directions. */
  get queuedBytes(): number {
    let sum = 0;
    for (const c of this.connections) sum += c.forward.queuedBytes + c.reverse.queuedBytes;
    return sum;
  }

  /** Largest queue one direction of one connection ever held: at most bufferBytesMax + one read. */
  get queuedBytesPeak(): number {
    return this.counts.queuedBytesPeak;
  }

  /** Destroys every connection at once (both peers see a reset); with block, refuses new ones. */
  cut(options: LinkCutOptions = {}): LinkCutInfo {
    if (options.block) this.isBlocked = true;
    return this.cutNow('cut');
  }

  /**
   * Cuts (as `cut`) once n more bytes have been delivered, counting from this call: forward only
   * by default, since the peer's replies (acknowledgements, HTTP/2 window updates and pings) come
   * at times that vary from run to run. The chunk that reaches n is split: exactly n bytes are
   * delivered before the reset (the receiver may read fewer: a reset discards what its kernel had
   * not yet handed over). Replaces any pending trigger; n = 0 cuts now.
   */
  cutAfterBytes(n: number, options: LinkCutAfterBytesOptions = {}): void {
    checkInteger(n, 'cutAfterBytes n', 0, Number.MAX_SAFE_INTEGER);
    const direction = options.direction ?? 'forward';
    if (direction !== 'forward' && direction !== 'reverse' && direction !== 'both') {
      throw new InvalidArgumentError(`link cutAfterBytes direction '${String(direction)}': expected forward, reverse or both`);
    }
    this.trigger = { direction, remaining: n, block: options.block ?? false };
    if (n === 0) this.cutNow('bytes');
  }

  /** Disarms a pending cutAfterBytes. */
  cancelCutAfterBytes(): void {
    this.trigger = null;
  }

  /** Accepts new connections again. */
  restore(): void {
    this.isBlocked = false;
  }

  /**
   * Delivers nothing, either way, on any connection, for `ms` from now; connections stay open and
   * new ones are accepted (their bytes wait too). Returns the instant it ends (performance.now() ms).
   */
  stall(ms: number): number {
    return this.faults.stall(performance.now(), ms);
  }

  /** Ends a stall now: what queued is delivered at once. */
  unstall(): void {
    this.faults.unstall();
    this.wakeAt(performance.now());
  }

  /**
   * Flips one byte, once: the one n bytes into `direction`'s stream from this call (0: the next
   * byte delivered), XORed with `mask`. Emits 'corrupt' when it happens. Replaces any armed flip.
   */
  corruptAfterBytes(n: number, options: LinkCorruptOptions = {}): void {
    this.faults.armFlip(n, options);
  }

  /** Disarms a pending corruptAfterBytes. */
  cancelCorrupt(): void {
    this.faults.disarmFlip();
  }

  /** Relays new connections to `target` ('host:port'), as a peer restarted at another address; open ones stay as they are. */
  retarget(target: string): void {
    this.targetAt = parseAddress(target, 'target', 1);
  }

  stats(): LinkStats {
    const { wakes, earlyWakes, lateMsSum, lateMsMax } = this.scheduler;
    return {
      connectionsAccepted: this.counts.accepted,
      connectionsRefused: this.counts.refused,
      connectionsFailed: this.counts.failed,
      connectionsOpen: this.connections.size,
      forwardBytes: this.forwardWire.deliveredBytes,
      reverseBytes: this.reverseWire.deliveredBytes,
      queuedBytes: this.queuedBytes,
      queuedBytesPeak: this.counts.queuedBytesPeak,
      cuts: this.counts.cuts,
      stalls: this.faults.stalls,
      corruptions: this.faults.corruptions,
      scheduler: { wakes, earlyWakes, lateMsMean: wakes ? lateMsSum / wakes : 0, lateMsMax },
    };
  }

  /** Per-connection counters of the open connections. */
  connectionStats(): LinkConnectionStats[] {
    return [...this.connections].map((c) => c.stats());
  }

  /** Stops listening and destroys every connection. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.trigger = null;
    this.clearWake();
    for (const c of [...this.connections]) c.abort();
    const server = this.server;
    this.closing = server ? new Promise((resolve) => server.close(() => resolve())) : Promise.resolve();
    return this.closing;
  }

  // ---- used by Flow and LinkConnection ----

  /** @internal */
  noteQueued(bytes: number): void {
    if (bytes > this.counts.queuedBytesPeak) this.counts.queuedBytesPeak = bytes;
  }

  /** @internal Bytes of `direction` that may still be delivered before a pending cut. */
  bytesBeforeCut(direction: LinkDirection): number {
    const t = this.trigger;
    return t && (t.direction === 'both' || t.direction === direction) ? t.remaining : Infinity;
  }

  /** @internal */
  countDelivered(direction: LinkDirection, bytes: number): void {
    const t = this.trigger;
    if (t && (t.direction === 'both' || t.direction === direction)) t.remaining -= bytes;
  }

  /** @internal */
  countConnectFailure(): void {
    this.counts.failed++;
  }

  /** @internal */
  cutNow(reason: LinkCutInfo['reason']): LinkCutInfo {
    if (reason === 'bytes' && this.trigger?.block) this.isBlocked = true;
    this.trigger = null;
    const connections = this.connections.size;
    for (const c of [...this.connections]) c.abort();
    this.counts.cuts++;
    const info: LinkCutInfo = { reason, connections, forwardBytes: this.forwardWire.deliveredBytes, reverseBytes: this.reverseWire.deliveredBytes };
    this.emit('cut', info);
    return info;
  }

  /** @internal */
  remove(connection: LinkConnection): void {
    this.connections.delete(connection);
    if (this.connections.size === 0) {
      this.forwardWire.idle();
      this.reverseWire.idle();
    }
  }

  /** @internal Ensures the scheduler runs at or before `dueMs`. */
  wakeAt(dueMs: number): void {
    if (this.closing || dueMs === Infinity || this.wakeDueMs <= dueMs) return;
    this.clearWake();
    this.wakeDueMs = dueMs;
    const waitMs = dueMs - performance.now();
    if (waitMs <= 0) {
      this.wakeByTimer = false;
      this.wakeImmediate = setImmediate(this.onWake);
    } else {
      this.wakeByTimer = true;
      this.wakeTimer = setTimeout(this.onWake, Math.max(1, Math.ceil(waitMs)));
    }
  }

  private readonly onWake = (): void => {
    const dueMs = this.wakeDueMs;
    const byTimer = this.wakeByTimer;
    this.wakeTimer = this.wakeImmediate = null;
    this.wakeDueMs = Infinity;
    const nowMs = performance.now();
    if (byTimer) {
      if (nowMs < dueMs) {
        this.scheduler.earlyWakes++;
      } else {
        const lateMs = nowMs - dueMs;
        this.scheduler.wakes++;
        this.scheduler.lateMsSum += lateMs;
        if (lateMs > this.scheduler.lateMsMax) this.scheduler.lateMsMax = lateMs;
      }
    }
    let nextMs = Infinity;
    for (const c of this.connections) {
      c.forward.pump(nowMs);
      c.reverse.pump(nowMs);
      nextMs = Math.min(nextMs, c.forward.nextDueMs, c.reverse.nextDueMs);
    }
    this.wakeAt(nextMs);
  };

  private clearWake(): void {
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    if (this.wakeImmediate) clearImmediate(this.wakeImmediate);
    this.wakeTimer = this.wakeImmediate = null;
    this.wakeDueMs = Infinity;
  }

  private accept(client: net.Socket): void {
    // A refused connection's errors (the reset racing the client's writes) are expected.
    client.on('error', () => undefined);
    if (this.closing || this.isBlocked || this.connections.size >= this.connectionsMax) {
      this.counts.refused++;
      client.resetAndDestroy();
      return;
    }
    this.counts.accepted++;
    const server = net.connect({ host: this.targetAt.host, port: this.targetAt.port, allowHalfOpen: true });
    const connection = new LinkConnection(
      this,
      this.nextId++,
      client,
      server,
      this.forwardWire,
      this.reverseWire,
      this.bufferBytesMax,
      this.profile.rttMs,
      this.connectTimeoutMs,
    );
    this.connections.add(connection);
  }
}
