// What the operator CLI reads from a command line (bandwidths, durations, counts in human units)
// and how it writes figures back (bytes, times, rates). Pure functions, so that every unit a
// person may type is testable without a network.

import { InvalidArgumentError } from '../shared/errors.js';

/** The range the source agent accepts for a migration's maximum duration. */
export const MAX_DURATION_MS_MIN = 100;
export const MAX_DURATION_MS_MAX = 24 * 3600_000;

export { BANDWIDTH_BYTES_PER_SEC_MAX, BANDWIDTH_BYTES_PER_SEC_MIN, parseBandwidth } from '../shared/units.js';

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
