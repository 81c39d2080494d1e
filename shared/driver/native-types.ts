// The hypervisor's own migration stream (capability native-stream). A driver whose hypervisor
// migrates its guests itself (QEMU's migration stream; later Xen's `xl migrate` stream) lends the
// agents the two ends of that stream, and the agents carry its bytes between the hosts on their
// own mutual-TLS channel. The agents never look inside the stream: they relay it, count it, and
// hash it, so that the commit compares the hash of what the source's hypervisor wrote with the
// hash of what the target's hypervisor was given (StreamHasher below, the same on both ends).

import type { Duplex } from 'node:stream';
import { createXxh64, hex64 } from '../hash.js';

/** Bound on the bytes of one NativeStream message, either way: each side refuses a larger one. */
export const NATIVE_MESSAGE_BYTES_MAX = 1024 * 1024;
/** The longest path of a unix socket (sun_path is 108 bytes with its NUL): the stream's ends and QEMU's control socket are unix sockets. */
export const UNIX_SOCKET_PATH_BYTES_MAX = 107;

/** What the hypervisor says of its outgoing migration (QEMU's query-migrate), in the agents' units. */
export interface NativeMigrationInfo {
  /** The hypervisor's status: setup, active, device, postcopy-active, completed, failed, cancelling, cancelled, ... */
  readonly status: string;
  /** Its own instants: time in setup, and from the migrate command to now or the end. */
  readonly setupTimeMs: number;
  readonly totalTimeMs: number;
  /** Its own downtime: from the guest's stop here to the end of the stream (0 until then). */
  readonly downtimeMs: number;
  /** The downtime a switchover now would take, as it estimates it (0 when it does not say). */
  readonly expectedDowntimeMs: number;
  /** Bytes of guest memory sent, still to send, and in all. */
  readonly transferredBytes: number;
  readonly remainingBytes: number;
  readonly totalBytes: number;
  readonly dirtyPagesPerSec: number;
  /** Passes over the guest's memory begun (QEMU's dirty-sync-count). */
  readonly passes: number;
  /** Pages sent whole (zero pages are sent as a flag and not counted). */
  readonly normalPages: number;
  /** Post-copy: pages the target's guest faulted on and asked for. */
  readonly postcopyRequests: number;
  /** Auto-converge's throttle: the share of the vCPU taken from the guest, 0 to 100. */
  readonly throttlePercent: number;
  /** Why it failed, in the hypervisor's words ('' unless it failed). */
  readonly error: string;
}

/** The settings of one outgoing migration, from the agents' request. */
export interface NativeMigrationParameters {
  readonly downtimeLimitMs: number;
  /** 0: unlimited. */
  readonly maxBandwidthBytesPerSec: number;
  /** Slow the guest while it dirties memory faster than the stream drains (the throttle policy). */
  readonly autoConverge: boolean;
  /** The migration will switch to post-copy (both ends must know before it starts). */
  readonly postcopy: boolean;
}

/** The source end: the guest's hypervisor, migrating it into an endpoint the agent serves. */
export interface NativeStreamSource {
  /** Sets the parameters of the migration to come. */
  configure(parameters: NativeMigrationParameters): Promise<void>;
  /** Starts migrating the running guest into the unix socket at `endpoint`, which the agent serves. */
  start(endpoint: string): Promise<void>;
  /** The migration's figures now. */
  info(): Promise<NativeMigrationInfo>;
  /** Calls `listener` at each status change of the migration; returns the function that stops it. */
  onStatus(listener: (status: string) => void): () => void;
  /** Calls `listener` when the hypervisor stops the guest (its switchover: the downtime starts); returns the function that stops it. */
  onGuestStop(listener: () => void): () => void;
  /** Switches the running migration to post-copy: from here the guest's memory is split between the hosts. */
  startPostcopy(): Promise<void>;
  /** Makes the running migration switch over at its next chance, whatever the downtime (the force policy). */
  forceSwitchover(): Promise<void>;
  /**
   * Ends the outgoing migration before its point of no return: the guest runs here as before it
   * (resumed if the hypervisor had stopped it for its switchover). Settles once it runs again.
   */
  cancel(): Promise<void>;
  /**
   * The hypervisor's own measure of how fast the guest dirties its memory, over about `periodMs`
   * (nothing migrates): for a prediction before start. Absent: the hypervisor has none.
   */
  measureDirtying?(periodMs: number, signal?: AbortSignal): Promise<NativeDirtyRate>;
}

/** How fast a guest dirties its memory, as its hypervisor measured it. */
export interface NativeDirtyRate {
  readonly dirtyBytesPerSec: number;
  /** The span it measured over. */
  readonly periodMs: number;
}

/** The target end: the replica's hypervisor, started for an incoming stream. */
export interface NativeStreamTarget {
  /**
   * Makes the hypervisor listen (ready for post-copy if asked), and connects to it: the returned
   * connection takes the stream (its writes are counted and hashed, `digest`) and gives back the
   * hypervisor's return path (its reads).
   */
  open(options: { postcopy: boolean }): Promise<NativeConnection>;
  /** The incoming migration's status as the hypervisor last said it ('' before it began). */
  readonly status: string;
  /** Calls `listener` at each status change; returns the function that stops it. */
  onStatus(listener: (status: string) => void): () => void;
  /**
   * Post-copy: lets the guest run here as soon as the hypervisor has its device state (the
   * replica becomes the host's guest, as activate() makes it). Resolves with when it resumed
   * (performance.now()).
   */
  runWhenSwitched(): Promise<number>;
  /** Post-copy: wall time the guest's vCPUs waited here for pages, as the hypervisor measures it (0: not measured). */
  blockedMs(): Promise<number>;
  /**
   * Why the hypervisor stopped taking the stream before it completed, as it tells (waiting a
   * little for its exit): so that a stream the hypervisor rejected is told from a hypervisor that
   * failed on its own.
   */
  stopReason(): Promise<NativeStopReason>;
}

/** How the target's hypervisor stopped taking an incoming stream. */
export interface NativeStopReason {
  /** How its process ended ('exit status 1', 'killed by SIGKILL'), or null while it runs. */
  readonly exit: string | null;
  /** It said it could not load the stream (the bytes it was given), rather than failing by itself. */
  readonly rejectedStream: boolean;
  /** Its own last words on it ('' for none). */
  readonly said: string;
}

/** The connection to the target hypervisor's incoming end: a byte stream both ways, and the hash of what was written. */
export interface NativeConnection {
  readonly socket: Duplex;
  /** Writes the next bytes of the stream, counted and hashed; false: wait for the socket's 'drain'. */
  write(bytes: Uint8Array): boolean;
  /** The bytes written so far, as StreamHasher says them. */
  digest(): string;
  readonly bytesWritten: number;
}

/**
 * Counts and hashes (xxh64) the bytes of a stream as they pass: the source's relay what its
 * hypervisor wrote, the target's connection what its hypervisor was given. Equal digests: the
 * target's hypervisor got the stream byte for byte.
 */
export class StreamHasher {
  private readonly hash = createXxh64();
  bytes = 0;

  update(bytes: Uint8Array): void {
    this.hash.update(bytes);
    this.bytes += bytes.length;
  }

  /** `stream:<xxh64 hex>:<bytes>`. */
  digest(): string {
    return `stream:${hex64(this.hash.digest())}:${this.bytes}`;
  }
}
