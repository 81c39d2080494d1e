// One connection through the link emulator (link.ts): the shared wire of each direction, each
// direction's queue of segments delivered when due (Flow), and the pair of sockets with their setup
// and teardown (LinkConnection). The emulator itself is reached through LinkHost.

import type * as net from 'node:net';
import type { LinkCorruptInfo, LinkDirection, LinkFaults } from './link-faults.js';
import { LINK_SEGMENTS_MAX, type LinkConnectionStats, type LinkCutInfo } from './link-types.js';

/** What a connection needs of its emulator. */
export interface LinkHost {
  readonly faults: LinkFaults;
  emit(event: 'corrupt', info: LinkCorruptInfo): boolean;
  noteQueued(bytes: number): void;
  bytesBeforeCut(direction: LinkDirection): number;
  countDelivered(direction: LinkDirection, bytes: number): void;
  countConnectFailure(): void;
  cutNow(reason: LinkCutInfo['reason']): LinkCutInfo;
  remove(connection: LinkConnection): void;
  wakeAt(dueMs: number): void;
}

export class Wire {
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
    private readonly link: LinkHost,
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

export class LinkConnection {
  readonly forward: Flow;
  readonly reverse: Flow;
  readonly openedAtMs = Date.now();
  private connectTimer: NodeJS.Timeout | null = null;
  private setupTimer: NodeJS.Timeout | null = null;
  private connected = false;
  private setupElapsed = false;
  private finished = false;

  constructor(
    private readonly link: LinkHost,
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
