// The link emulator's profiles, limits, options and statistics, and the checks of its options
// (link.ts).

import { InvalidArgumentError } from '../errors.js';
import type { LinkDirection } from './link-faults.js';

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

export interface Address {
  host: string;
  port: number;
}

export function parseAddress(value: unknown, field: string, portMin: number): Address {
  const match = typeof value === 'string' ? /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value) : null;
  const port = match ? Number(match[3]) : NaN;
  if (!match || !(port >= portMin && port <= 65_535)) {
    throw new InvalidArgumentError(`link ${field} '${String(value)}': expected 'host:port' with port in [${portMin}, 65535]`);
  }
  return { host: match[1] ?? match[2], port };
}

export function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export function checkInteger(value: unknown, field: string, min: number, max: number): number {
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
