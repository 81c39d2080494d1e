// Sizes and number formats of what the benchmarks print. MB = 10^6 bytes (throughputs, MB/s),
// MiB = 2^20 bytes and GiB = 2^30 bytes (sizes).

export const MB_BYTES = 1e6;
export const MIB_BYTES = 2 ** 20;
export const GIB_BYTES = 2 ** 30;

/** `x` with exactly `digits` after the point, thousands separated. */
export function fixed(x: number, digits: number): string {
  if (!Number.isFinite(x)) return String(x);
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** Three significant digits at least, no exponent, thousands separated. */
export function sig(x: number): string {
  const a = Math.abs(x);
  return fixed(x, a >= 100 || a === 0 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3);
}

/** "12.3 MiB". */
export const mibText = (bytes: number): string => `${fixed(bytes / MIB_BYTES, 1)} MiB`;

/** A plain-text table with a header row; columns after the first are right-aligned. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}
