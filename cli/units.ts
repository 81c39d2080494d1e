// What the operator CLI reads from a command line (bandwidths, durations, counts in human units)
// and how it writes figures back (bytes, times, rates). Pure functions, so that every unit a
// person may type is testable without a network.

import { InvalidArgumentError } from '../shared/errors.js';

/** The range the source agent accepts for StartMigration.maxBandwidthBytesPerSec (0: unlimited). */
export const BANDWIDTH_BYTES_PER_SEC_MIN = 125_000;
export const BANDWIDTH_BYTES_PER_SEC_MAX = 1e12;

/** The range the source agent accepts for a migration's maximum duration. */
export const MAX_DURATION_MS_MIN = 100;
export const MAX_DURATION_MS_MAX = 24 * 3600_000;

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
      `bandwidth '${text}' is ${rounded} bytes/s: the agents accept ${BANDWIDTH_BYTES_PER_SEC_MIN} (1mbit) to ${BANDWIDTH_BYTES_PER_SEC_MAX} bytes/s; leave --max-bandwidth out for no limit`,
    );
  }
  return rounded;
}

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1000, '': 1000, m: 60_000, h: 3600_000 };

/** Milliseconds from `text`: a plain number is seconds; `ms`, `s`, `m` and `h` suffixes. */
export function parseDuration(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|)\s*$/i.exec(text);
  if (match === null) throw new InvalidArgumentError(`duration '${text}': expected seconds (90), or a number with ms, s, m or h (1500ms, 90s, 10m)`);
  const ms = Math.round(Number(match[1]) * DURATION_UNITS_MS[match[2].toLowerCase()]);
  if (ms < MAX_DURATION_MS_MIN || ms > MAX_DURATION_MS_MAX) {
    throw new InvalidArgumentError(`duration '${text}' is ${ms} ms: the agents accept ${MAX_DURATION_MS_MIN} ms to 24 h`);
  }
  return ms;
}

/** An integer from `min` to `max`, for the option `name` (named in the error). */
export function parseInteger(name: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new InvalidArgumentError(`${name} '${text}': expected an integer from ${min} to ${max}`);
  }
  return n;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 2 ** 20) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 2 ** 30) return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
}

export function formatMs(ms: number): string {
  if (ms < 1000) return `${ms.toFixed(1)} ms`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(2)} s`;
  return `${(ms / 60_000).toFixed(1)} min`;
}

/** `mbps` of MigrationStats is megabits per second (source-agent/migration.ts, refreshStats). */
export function formatMbps(mbps: number): string {
  return `${mbps.toFixed(0)} Mbit/s (${(mbps / 8).toFixed(1)} MB/s)`;
}

/** A wall-clock instant (ms since the epoch) as local `YYYY-MM-DD HH:MM:SS`. */
export function formatInstant(epochMs: number): string {
  if (!(epochMs > 0)) return '-';
  const d = new Date(epochMs);
  const two = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/** Columns padded to their widest cell; the last column is not padded. */
export function table(headers: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}
