// Bandwidths in human units, read the same way by the CLI (--max-bandwidth) and the agent's
// configuration (migration.maxBandwidth).

import { InvalidArgumentError } from './errors.js';

/** The range the source agent accepts for StartMigration.maxBandwidthBytesPerSec (0: unlimited). */
export const BANDWIDTH_BYTES_PER_SEC_MIN = 125_000;
export const BANDWIDTH_BYTES_PER_SEC_MAX = 1e12;

const DECIMAL: Record<string, number> = { '': 1, k: 1e3, m: 1e6, g: 1e9, t: 1e12 };
const BINARY: Record<string, number> = { ki: 2 ** 10, mi: 2 ** 20, gi: 2 ** 30, ti: 2 ** 40 };

const BANDWIDTH_FORMS = 'bytes per second (125000), bits (100mbit, 1gbit, 100mbps) or bytes (125MB/s, 12MiB/s)';

/**
 * Bytes per second from `text`: a plain number is bytes per second; `kbit`, `mbit`, `gbit`,
 * `tbit` (or `kbps`, `mbps`, ...) are decimal bits per second, case-insensitive; `kB`, `MB`,
 * `GB`, `TB` are decimal bytes and `KiB`, `MiB`, `GiB`, `TiB` binary bytes, with an optional
 * `/s`. A lone lowercase `b` (`100mb`) is refused: bits and bytes differ by 8x, so the caller
 * must say which.
 */
export function parseBandwidth(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)(\/s)?\s*$/.exec(text);
  if (match === null) throw new InvalidArgumentError(`bandwidth '${text}': expected ${BANDWIDTH_FORMS}`);
  const value = Number(match[1]);
  const unit = match[2];
  const perSecondSuffix = match[3] !== undefined;
  let bytesPerSec: number;
  const bits = /^([kmgt]?)(bit|bps)$/i.exec(unit);
  const bytes = /^([kmgt]i?|[KMGT]i?)?B$/.exec(unit);
  if (unit === '') {
    bytesPerSec = value;
  } else if (bits !== null) {
    if (perSecondSuffix && bits[2].toLowerCase() === 'bps') throw new InvalidArgumentError(`bandwidth '${text}': '${unit}' already means per second`);
    bytesPerSec = (value * DECIMAL[bits[1].toLowerCase()]) / 8;
  } else if (bytes !== null) {
    const prefix = (bytes[1] ?? '').toLowerCase();
    bytesPerSec = value * (BINARY[prefix] ?? DECIMAL[prefix]);
  } else if (/b$/.test(unit)) {
    throw new InvalidArgumentError(`bandwidth '${text}': '${unit}' is ambiguous (bits or bytes?); write ${match[1]}${unit.slice(0, -1)}bit for bits or ${match[1]}${unit.slice(0, -1).toUpperCase()}B/s for bytes`);
  } else {
    throw new InvalidArgumentError(`bandwidth '${text}': unknown unit '${unit}'; expected ${BANDWIDTH_FORMS}`);
  }
  const rounded = Math.round(bytesPerSec);
  if (rounded < BANDWIDTH_BYTES_PER_SEC_MIN || rounded > BANDWIDTH_BYTES_PER_SEC_MAX) {
    throw new InvalidArgumentError(
      `bandwidth '${text}' is ${rounded} bytes/s: the agents accept ${BANDWIDTH_BYTES_PER_SEC_MIN} (1mbit) to ${BANDWIDTH_BYTES_PER_SEC_MAX} bytes/s; 0 (or leaving it out) means no limit`,
    );
  }
  return rounded;
}

