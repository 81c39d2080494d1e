// How many distinct pages a guest dirties over a window of time, W(t), from a few measured
// windows (distinct pages dirtied after 0.25 s, 0.5 s, 1 s, 2 s of tracking, ...).
//
// Model: the guest writes r pages a second at random over a working set of S pages. After t
// seconds the expected number of distinct pages written is
//
//   W(t) = S (1 - exp(-r t / S))
//
// which grows like r t while few pages repeat, and levels off at S. Two measurements fix r and S:
// the first window gives r for a given S (r = -S / t1 ln(1 - W1 / S)), and S is the working set
// for which the model also meets the last window (bisection: the model's last value grows with
// S, from W1 at S = W1 to the straight line W1 tn / t1 as S grows without bound). Windows that
// grow faster than a straight line (noise) give S = the guest's page count; windows that do not
// grow at all give S = what they measured, reached within the first window.
//
// A guest that sweeps its memory in order (sequential writes) fills its working set sooner than
// this model says, so W(t) is then an underestimate for windows near S / r.

/** Distinct pages dirtied over one window of time, counted from the same start as the others. */
export interface DirtyWindow {
  windowMs: number;
  pages: number;
}

export interface WorkingSet {
  /** r: page writes per second that land on distinct pages while few repeat (the initial slope). */
  readonly pagesPerSec: number;
  /** S: the pages the writes land on. */
  readonly workingSetPages: number;
  /** W(ms): distinct pages dirtied over a window of `ms`. */
  dirtied(ms: number): number;
}

/** Bisection steps: S is found to within pageCount / 2^60. */
const BISECTION_STEPS = 60;

function model(pagesPerSec: number, workingSetPages: number, pageCount: number): WorkingSet {
  return {
    pagesPerSec,
    workingSetPages,
    dirtied(ms: number): number {
      if (!(ms > 0) || !(workingSetPages > 0)) return 0;
      return Math.min(pageCount, workingSetPages * -Math.expm1((-pagesPerSec * (ms / 1000)) / workingSetPages));
    },
  };
}

/** r for a working set of `s` pages, from the first window (t1 seconds, w1 pages). */
function rateFor(s: number, t1: number, w1: number): number {
  return (-s / t1) * Math.log1p(-w1 / s);
}

/** Fits W(t) to the measured windows (see the head comment); `pageCount` caps S. */
export function fitWorkingSet(windows: readonly DirtyWindow[], pageCount: number): WorkingSet {
  const usable = windows.filter((w) => w.windowMs > 0 && w.pages >= 0).sort((a, b) => a.windowMs - b.windowMs);
  const first = usable[0];
  const last = usable[usable.length - 1];
  if (first === undefined || last.pages === 0 || pageCount <= 0) return model(0, 0, pageCount);
  const t1 = first.windowMs / 1000;
  const tn = last.windowMs / 1000;
  const w1 = Math.min(first.pages, pageCount - 1e-9);
  const wn = Math.min(last.pages, pageCount);
  if (usable.length === 1 || w1 === 0) {
    // One window (or nothing in the first): the slope of the last one, over the whole memory.
    const w = Math.min(wn, pageCount - 1e-9);
    return model(rateFor(pageCount, tn, w), pageCount, pageCount);
  }
  if (wn <= w1) {
    // Nothing new after the first window: the working set was covered within it (99% of it).
    return model((wn * Math.log(100)) / t1, wn, pageCount);
  }
  const lastFor = (s: number) => s * -Math.expm1((-rateFor(s, t1, w1) * tn) / s);
  if (lastFor(pageCount) <= wn) return model(rateFor(pageCount, t1, w1), pageCount, pageCount);
  let low = w1;
  let high = pageCount;
  for (let i = 0; i < BISECTION_STEPS; i++) {
    const mid = (low + high) / 2;
    if (lastFor(mid) < wn) low = mid;
    else high = mid;
  }
  const s = Math.max(high, wn);
  return model(rateFor(s, t1, w1), s, pageCount);
}
