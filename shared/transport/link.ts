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
// (the client's first bytes are read after RTT, and take rttMs / 2 more to arrive).

import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { performance } from 'node:perf_hooks';
import { InvalidArgumentError, InvalidStateError, UnavailableError } from '../errors.js';
import { type LinkCorruptInfo, type LinkCorruptOptions, type LinkDirection, LinkFaults } from './link-faults.js';

export { LINK_STALL_MS_MAX, type LinkCorruptInfo, type LinkCorruptOptions, type LinkDirection } from './link-faults.js';

export interface LinkProfile {
  /** Line rate of each direction, in bytes per second; 0 or Infinity for an unshaped link. */
  readonly bandwidthBytesPerSec: number;
  /** Round-trip propagation delay; each direction adds half. 0 for none. */
  readonly rttMs: number;
}

export const LINK_PROFILES = {
  loopback: { bandwidthBytesPerSec: Infinity, rttMs: 0 },
  /** 1 Gbit/s, 0.2 ms RTT. */
  lan: { bandwidthBytesPerSec: 125_000_000, rttMs: 0.2 },
  /** 100 Mbit/s, 40 ms RTT. */
  wan: { bandwidthBytesPerSec: 12_500_000, rttMs: 40 },
} as const satisfies Record<string, LinkProfile>;

export type LinkProfileName = keyof typeof LINK_PROFILES;
export const LINK_PROFILE_NAMES = Object.keys(LINK_PROFILES) as LinkProfileName[];

/** 800 Gbit/s: above any real link, and where bytes × ms-per-byte still has plenty of precision. */
export const LINK_BANDWIDTH_BYTES_PER_SEC_MAX = 100_000_000_000;
/** One minute: beyond any terrestrial or satellite round trip. */
export const LINK_RTT_MS_MAX = 60_000;

export const LINK_BUFFER_BYTES_DEFAULT = 4 * 1024 * 1024;
/** One socket read (64 KiB): less would pause the reader after every read. */
export const LINK_BUFFER_BYTES_MIN = 64 * 1024;
export const LINK_BUFFER_BYTES_MAX = 1024 * 1024 * 1024;
/**
 * Queued chunks per direction per connection, whatever their size: a peer writing one byte at a
 * time must not grow the queue's bookkeeping without bound while it stays under bufferBytesMax.
 */
export const LINK_SEGMENTS_MAX = 16_384;

export const LINK_CONNECTIONS_MAX_DEFAULT = 256;
export const LINK_CONNECTIONS_MAX_LIMIT = 65_536;
export const LINK_CONNECT_TIMEOUT_MS_DEFAULT = 10_000;
export const LINK_CONNECT_TIMEOUT_MS_MAX = 600_000;

export interface LinkOptions {
  /** Where the proxy listens, 'host:port'; port 0 picks a free one (see `start`). */
  listen: string;
  /** Where every accepted connection is relayed to, 'host:port'. */
  target: string;
  /** A named profile or a custom one. */
  profile: LinkProfileName | LinkProfile;
  /**
   * Bytes queued per direction per connection before the reading socket is paused (it resumes at
   * half). Queued bytes include those still propagating, so the line rate needs at least
   * bandwidth × rttMs / 2 here. Default: LINK_BUFFER_BYTES_DEFAULT, or twice that product if larger.
   */
  bufferBytesMax?: number;
  /** Open connections at once; more are refused at accept. */
  connectionsMax?: number;
  /** Bound on connecting to the target; the client's connection is reset when it runs out. */
  connectTimeoutMs?: number;
}

export interface LinkCutOptions {
  /** Refuse new connections (reset at accept) until `restore()`. */
  block?: boolean;
}

export interface LinkCutAfterBytesOptions extends LinkCutOptions {
  /** Which bytes count toward n: one direction, or both summed. Default 'forward'. */
  direction?: LinkDirection | 'both';
}

export interface LinkCutInfo {
  reason: 'cut' | 'bytes';
  /** Connections destroyed by this cut. */
  connections: number;
  /** Totals since start, at the moment of the cut. */
  forwardBytes: number;
  reverseBytes: number;
}

export interface LinkConnectionStats {
  id: number;
  /** Bytes delivered to the target (forward) and to the client (reverse). */
  forwardBytes: number;
  reverseBytes: number;
  /** Bytes read but not yet delivered, per direction. */
  forwardQueuedBytes: number;
  reverseQueuedBytes: number;
  openedAtMs: number;
}

export interface LinkSchedulerStats {
  /** Timer wakes that found their due time reached. */
  wakes: number;
  /** Timer wakes that came before their due time (libuv's clock is in whole ms) and re-armed. */
  earlyWakes: number;
  /** How long after its due time a wake ran: mean and maximum, ms. */
  lateMsMean: number;
  lateMsMax: number;
}

export interface LinkStats {
  connectionsAccepted: number;
  /** Reset at accept: while blocked, or beyond connectionsMax. */
  connectionsRefused: number;
  /** The target could not be reached in time. */
  connectionsFailed: number;
  connectionsOpen: number;
  /** Bytes delivered since start, per direction. */
  forwardBytes: number;
  reverseBytes: number;
  /** Bytes read but not yet delivered, all connections and directions. */
  queuedBytes: number;
  /** Largest queue any one direction of any one connection ever held. */
  queuedBytesPeak: number;
  cuts: number;
  /** stall() calls, and bytes flipped by corruptAfterBytes. */
  stalls: number;
  corruptions: number;
  scheduler: LinkSchedulerStats;
}

interface Address {
  host: string;
  port: number;
}

function parseAddress(value: unknown, field: string, portMin: number): Address {
  const match = typeof value === 'string' ? /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value) : null;
  const port = match ? Number(match[3]) : NaN;
  if (!match || !(port >= portMin && port <= 65_535)) {
    throw new InvalidArgumentError(`link ${field} '${String(value)}': expected 'host:port' with port in [${portMin}, 65535]`);
  }
  return { host: match[1] ?? match[2], port };
}

function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

function checkInteger(value: unknown, field: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`link ${field}=${String(value)} is out of range: expected an integer in [${min}, ${max}]`);
  }
  return value;
}

/** The profile `profile` names, or `profile` itself once its fields are checked. */
export function resolveLinkProfile(profile: LinkProfileName | LinkProfile): LinkProfile {
  if (typeof profile === 'string') {
    if (!Object.hasOwn(LINK_PROFILES, profile)) {
      throw new InvalidArgumentError(`unknown link profile '${profile}': expected one of ${LINK_PROFILE_NAMES.join(', ')}`);
    }
    return LINK_PROFILES[profile];
  }
  if (typeof profile !== 'object' || profile === null) throw new InvalidArgumentError(`link profile: expected a name or { bandwidthBytesPerSec, rttMs }`);
  const { bandwidthBytesPerSec, rttMs } = profile;
  if (
    typeof bandwidthBytesPerSec !== 'number' ||
    !(bandwidthBytesPerSec === 0 || bandwidthBytesPerSec === Infinity || (bandwidthBytesPerSec >= 1 && bandwidthBytesPerSec <= LINK_BANDWIDTH_BYTES_PER_SEC_MAX))
  ) {
    throw new InvalidArgumentError(
      `link bandwidthBytesPerSec=${String(bandwidthBytesPerSec)} is out of range: expected 0 or Infinity (unshaped), or [1, ${LINK_BANDWIDTH_BYTES_PER_SEC_MAX}] bytes/s`,
    );
  }
  if (typeof rttMs !== 'number' || !(rttMs >= 0 && rttMs <= LINK_RTT_MS_MAX)) {
    throw new InvalidArgumentError(`link rttMs=${String(rttMs)} is out of range [0, ${LINK_RTT_MS_MAX}] ms`);
  }
  return { bandwidthBytesPerSec, rttMs };
}

/** One direction of the link, shared by all its connections: the wire's serialisation clock. */
class Wire {
  /** When the wire has finished sending everything handed to it so far (performance.now() ms). */
  private freeAtMs = 0;
  deliveredBytes = 0;

  constructor(
    private readonly msPerByte: number,
    private readonly delayMs: number,
  ) {}

  /**
   * Forgets the wire's backlog. Only valid with nothing queued on any connection (bytes discarded
   * by a cut must not hold the wire busy; a single aborted connection's bytes still do).
   */
  idle(): void {
    this.freeAtMs = 0;
  }

  /** When `size` bytes read at `nowMs` reach the far end. */
  schedule(nowMs: number, size: number): number {
    this.freeAtMs = Math.max(nowMs, this.freeAtMs) + size * this.msPerByte;
    return this.freeAtMs + this.delayMs;
  }
}

/** A chunk in flight; `bytes` null is the sender's FIN. */
interface Segment {
  bytes: Buffer | null;
  dueMs: number;
}

/** One direction of one connection: a FIFO of segments from `from`, delivered to `to` when due. */
class Flow {
  private readonly segments: Segment[] = [];
  private head = 0;
  queuedBytes = 0;
  deliveredBytes = 0;
  /** `to.write` returned false: waiting for 'drain' (the receiver is not reading fast enough). */
  private writeBlocked = false;
  /** `from` is paused because this queue is full. */
  private readPaused = false;
  finQueued = false;
  finDelivered = false;
  /** Nothing more can be delivered (the destination closed, or the connection was cut). */
  private dead = false;

  constructor(
    private readonly link: LinkEmulator,
    private readonly connectionId: number,
    private readonly direction: LinkDirection,
    private readonly wire: Wire,
    readonly from: net.Socket,
    readonly to: net.Socket,
    private readonly bufferBytesMax: number,
  ) {}

  /** When the next segment can be delivered (its due time, or the end of a stall), Infinity if it cannot. */
  get nextDueMs(): number {
    return this.dead || this.writeBlocked || this.head === this.segments.length ? Infinity : Math.max(this.segments[this.head].dueMs, this.link.faults.stalledUntilMs);
  }

  onData(bytes: Buffer): void {
    if (this.dead) return;
    const nowMs = performance.now();
    const dueMs = this.wire.schedule(nowMs, bytes.length);
    this.segments.push({ bytes, dueMs });
    this.queuedBytes += bytes.length;
    this.link.noteQueued(this.queuedBytes);
    if (!this.readPaused && (this.queuedBytes >= this.bufferBytesMax || this.segments.length - this.head >= LINK_SEGMENTS_MAX)) {
      this.from.pause();
      this.readPaused = true;
    }
    this.deliverOrWake(dueMs, nowMs);
  }

  /** A segment due at `dueMs` was queued: delivered in this tick if it is due and alone (unshaped, undelayed, not stalled), else at its time. */
  private deliverOrWake(dueMs: number, nowMs: number): void {
    const releaseMs = Math.max(dueMs, this.link.faults.stalledUntilMs);
    if (releaseMs <= nowMs && this.segments.length - this.head === 1) this.pump(nowMs);
    else this.link.wakeAt(releaseMs);
  }

  onEnd(): void {
    if (this.dead || this.finQueued) return;
    this.finQueued = true;
    const nowMs = performance.now();
    const dueMs = this.wire.schedule(nowMs, 0);
    this.segments.push({ bytes: null, dueMs });
    this.deliverOrWake(dueMs, nowMs);
  }

  /** Delivers every segment due by `nowMs`, as far as the destination accepts them. */
  pump(nowMs: number): void {
    while (!this.dead && !this.writeBlocked && this.head < this.segments.length) {
      const segment = this.segments[this.head];
      if (segment.dueMs > nowMs || this.link.faults.stalledUntilMs > nowMs) break;
      if (this.to.destroyed) {
        this.drop();
        return;
      }
      if (segment.bytes === null) {
        this.shift();
        this.finDelivered = true;
        this.to.end();
        // The sender has gone entirely: once the FIN is out, nothing more can flow either way.
        if (this.from.destroyed) this.to.destroySoon();
        continue;
      }
      let bytes = segment.bytes;
      const room = this.link.bytesBeforeCut(this.direction);
      const cutting = bytes.length >= room;
      if (cutting) bytes = bytes.subarray(0, room);
      const delivery = this.link.faults.deliver(this.direction, bytes, this.connectionId);
      bytes = delivery.bytes;
      if (delivery.corrupted) this.link.emit('corrupt', delivery.corrupted);
      this.shift();
      this.deliveredBytes += bytes.length;
      this.wire.deliveredBytes += bytes.length;
      const accepted = bytes.length === 0 || this.to.write(bytes);
      if (cutting) {
        this.link.cutNow('bytes');
        return;
      }
      this.link.countDelivered(this.direction, bytes.length);
      if (!accepted) {
        this.writeBlocked = true;
        this.to.once('drain', () => {
          this.writeBlocked = false;
          const now = performance.now();
          this.pump(now);
          this.link.wakeAt(this.nextDueMs);
        });
      }
    }
    if (this.readPaused && !this.dead && this.queuedBytes <= this.bufferBytesMax / 2 && this.segments.length - this.head < LINK_SEGMENTS_MAX / 2) {
      this.readPaused = false;
      this.from.resume();
    }
  }

  /** Discards everything queued; later data from `from` is discarded too. */
  drop(): void {
    this.dead = true;
    this.segments.length = 0;
    this.head = 0;
    this.queuedBytes = 0;
    // Keep reading so that the sender is not stalled on a destination that has gone.
    if (this.readPaused) {
      this.readPaused = false;
      this.from.resume();
    }
  }

  private shift(): void {
    const segment = this.segments[this.head];
    this.segments[this.head] = undefined as unknown as Segment;
    this.head++;
    if (segment.bytes) this.queuedBytes -= segment.bytes.length;
    // Compact once the consumed prefix dominates, so the array stays O(queued segments).
    if (this.head === this.segments.length) {
      this.segments.length = 0;
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.segments.length) {
      this.segments.splice(0, this.head);
      this.head = 0;
    }
  }
}

/**
 * Resets `socket` (the peer sees ECONNRESET), or destroys it while it is still connecting or once
 * it was ended. An ended socket may have its shutdown pending in libuv (everything handed to a
 * kernel buffer the peer does not drain): libuv then refuses the reset (uv_tcp_close_reset, EINVAL)
 * and Node marks the handle closing without closing it, so that the process spins at exit in its
 * handle cleanup, forever (seen once in a 399-case fault matrix run). Its FIN is on its way anyway.
 */
function reset(socket: net.Socket): void {
  if (socket.destroyed) return;
  if (socket.connecting || socket.writableEnded) socket.destroy();
  else socket.resetAndDestroy();
}

class LinkConnection {
  readonly forward: Flow;
  readonly reverse: Flow;
  readonly openedAtMs = Date.now();
  private connectTimer: NodeJS.Timeout | null = null;
  private setupTimer: NodeJS.Timeout | null = null;
  private connected = false;
  private setupElapsed = false;
  private finished = false;

  constructor(
    private readonly link: LinkEmulator,
    readonly id: number,
    readonly client: net.Socket,
    readonly server: net.Socket,
    forwardWire: Wire,
    reverseWire: Wire,
    bufferBytesMax: number,
    rttMs: number,
    connectTimeoutMs: number,
  ) {
    this.forward = new Flow(link, id, 'forward', forwardWire, client, server, bufferBytesMax);
    this.reverse = new Flow(link, id, 'reverse', reverseWire, server, client, bufferBytesMax);
    // Nagle would add up to 40 ms per small write on top of the emulated delay.
    client.setNoDelay(true);
    server.setNoDelay(true);
    // Errors are the end of the connection for both sides; the handlers stay for its whole life so
    // that a late error (after a reset) is never unhandled.
    client.on('error', () => this.abort());
    server.on('error', () => {
      if (!this.connected && !this.finished) this.link.countConnectFailure();
      this.abort();
    });
    client.on('close', () => this.onClose(client));
    server.on('close', () => this.onClose(server));
    server.once('connect', () => {
      this.connected = true;
      if (this.connectTimer) clearTimeout(this.connectTimer);
      this.connectTimer = null;
      this.maybeStart();
    });
    this.connectTimer = setTimeout(() => {
      this.connectTimer = null;
      this.link.countConnectFailure();
      this.abort();
    }, connectTimeoutMs);
    if (rttMs > 0) {
      this.setupTimer = setTimeout(() => {
        this.setupTimer = null;
        this.setupElapsed = true;
        this.maybeStart();
      }, Math.ceil(rttMs));
    } else {
      this.setupElapsed = true;
    }
  }

  /** Relays once the target accepted and the handshake's round trip has passed. */
  private maybeStart(): void {
    if (!this.connected || !this.setupElapsed || this.finished) return;
    this.client.on('data', (b: Buffer) => this.forward.onData(b));
    this.server.on('data', (b: Buffer) => this.reverse.onData(b));
    this.client.on('end', () => this.forward.onEnd());
    this.server.on('end', () => this.reverse.onEnd());
    this.client.resume();
  }

  stats(): LinkConnectionStats {
    return {
      id: this.id,
      forwardBytes: this.forward.deliveredBytes,
      reverseBytes: this.reverse.deliveredBytes,
      forwardQueuedBytes: this.forward.queuedBytes,
      reverseQueuedBytes: this.reverse.queuedBytes,
      openedAtMs: this.openedAtMs,
    };
  }

  /** Resets both sockets and discards everything queued. */
  abort(): void {
    if (this.finished) return;
    this.forward.drop();
    this.reverse.drop();
    reset(this.client);
    reset(this.server);
    this.finish();
  }

  private onClose(socket: net.Socket): void {
    if (this.finished) return;
    const other = socket === this.client ? this.server : this.client;
    const toward = socket === this.client ? this.reverse : this.forward;
    const from = socket === this.client ? this.forward : this.reverse;
    toward.drop();
    if (other.destroyed) {
      this.finish();
    } else if (!from.finQueued) {
      // Closed without a FIN (destroyed, not ended): the peer must learn it as a reset.
      this.abort();
    } else if (from.finDelivered) {
      other.destroySoon();
    }
    // Otherwise the FIN is still queued; its delivery ends `other` (see Flow.pump).
  }

  private finish(): void {
    this.finished = true;
    if (this.connectTimer) clearTimeout(this.connectTimer);
    if (this.setupTimer) clearTimeout(this.setupTimer);
    this.connectTimer = this.setupTimer = null;
    this.link.remove(this);
  }
}

/**
 * A TCP proxy emulating a network link between a client and `target`; see the top of this file
 * for the model. Emits 'cut' with a LinkCutInfo whenever its connections are cut.
 */
export class LinkEmulator extends EventEmitter<{ cut: [LinkCutInfo]; corrupt: [LinkCorruptInfo] }> {
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
