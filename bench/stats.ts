// Small statistics helpers of the bench harness (medians and ranges over repeats).

export function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

export interface Summary {
  n: number;
  median: number;
  min: number;
  max: number;
}

export function summarize(xs: number[]): Summary {
  const v = xs.filter((x) => Number.isFinite(x));
  if (v.length === 0) return { n: 0, median: NaN, min: NaN, max: NaN };
  return { n: v.length, median: median(v), min: Math.min(...v), max: Math.max(...v) };
}

/** "123 (110–140)", or "123" for one value; `digits` after the point. */
export function fmtSummary(s: Summary, digits = 0): string {
  if (s.n === 0) return '–';
  const f = (x: number) => x.toFixed(digits);
  return s.n === 1 || s.min === s.max ? f(s.median) : `${f(s.median)} (${f(s.min)}–${f(s.max)})`;
}

/** "0.42×" or "–". */
export function fmtRatio(a: number, b: number): string {
  return Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}×` : '–';
}
