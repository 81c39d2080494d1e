// Figures of a record/replay migration, from samples both ends take: the recorder's icount over
// time (query-replay), and each replay step of the target (from one break to the next). Pure
// functions of those samples.

/** QEMU's icount at a moment (ms on the migration's clock). */
export interface IcountSample {
  readonly ms: number;
  readonly icount: number;
}

/** One replay step of the target: `cont` at `startMs` from `fromIcount`, stopped at `toIcount` at `endMs`. */
export interface ReplayStep {
  readonly fromIcount: number;
  readonly toIcount: number;
  readonly startMs: number;
  readonly endMs: number;
}

/**
 * When the recorder reached `icount`, interpolated between the samples around it (samples in
 * order of time, icount never decreasing); null when outside the samples.
 */
export function msAtIcount(samples: readonly IcountSample[], icount: number): number | null {
  if (samples.length === 0 || icount < samples[0]!.icount || icount > samples.at(-1)!.icount) return null;
  let low = 0;
  let high = samples.length - 1;
  // The first sample at or past icount.
  while (low < high) {
    const mid = (low + high) >> 1;
    if (samples[mid]!.icount >= icount) high = mid;
    else low = mid + 1;
  }
  const after = samples[low]!;
  if (low === 0 || after.icount === icount) return after.ms;
  const before = samples[low - 1]!;
  return before.ms + ((after.ms - before.ms) * (icount - before.icount)) / (after.icount - before.icount);
}

/** The recorder's icount at `ms`, interpolated; null when outside the samples. */
export function icountAtMs(samples: readonly IcountSample[], ms: number): number | null {
  if (samples.length === 0 || ms < samples[0]!.ms || ms > samples.at(-1)!.ms) return null;
  let i = 1;
  while (i < samples.length && samples[i]!.ms < ms) i++;
  if (i >= samples.length) return samples.at(-1)!.icount;
  const a = samples[i - 1]!;
  const b = samples[i]!;
  return b.ms === a.ms ? b.icount : a.icount + ((b.icount - a.icount) * (ms - a.ms)) / (b.ms - a.ms);
}

/** How far the target was behind the recorder when a step ended: in instructions and in ms. */
export interface Lag {
  readonly atMs: number;
  readonly icount: number;
  readonly ms: number;
}

/** The target's lag at the end of each step that the recorder's samples cover. */
export function lags(source: readonly IcountSample[], steps: readonly ReplayStep[]): Lag[] {
  const out: Lag[] = [];
  for (const step of steps) {
    const sourceIcount = icountAtMs(source, step.endMs);
    const recordedMs = msAtIcount(source, step.toIcount);
    if (sourceIcount === null || recordedMs === null) continue;
    out.push({ atMs: step.endMs, icount: Math.max(0, sourceIcount - step.toIcount), ms: Math.max(0, step.endMs - recordedMs) });
  }
  return out;
}

/** Replay against recording over the same instructions: ms each took, and their ratio. */
export interface ReplaySpeed {
  readonly instructions: number;
  readonly recordMs: number;
  readonly replayMs: number;
  /** recordMs / replayMs: above 1, replay runs faster than the guest did. */
  readonly ratio: number;
}

/**
 * Replay speed over the steps that `pick` accepts: the time the recorder took for each step's
 * instructions (from its samples), against the time the step took to replay.
 */
export function replaySpeed(source: readonly IcountSample[], steps: readonly ReplayStep[], pick: (step: ReplayStep, recordedFromMs: number) => boolean = () => true): ReplaySpeed {
  let instructions = 0;
  let recordMs = 0;
  let replayMs = 0;
  for (const step of steps) {
    const from = msAtIcount(source, step.fromIcount);
    const to = msAtIcount(source, step.toIcount);
    if (from === null || to === null || !pick(step, from)) continue;
    instructions += step.toIcount - step.fromIcount;
    recordMs += to - from;
    replayMs += step.endMs - step.startMs;
  }
  return { instructions, recordMs, replayMs, ratio: replayMs > 0 ? recordMs / replayMs : 0 };
}

/** The median of `values` (0 when empty). */
export function median(values: readonly number[]): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
