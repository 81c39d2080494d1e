// qemu-native's cost, modelled as QEMU's own pre-copy runs it (migration/ram.c, migration.c): the
// first pass sends every page, each later one the pages dirtied during the pass before, and QEMU
// switches over at the end of a pass once what is left fits its downtime limit at the bandwidth it
// sees (expected downtime = remaining bytes / bandwidth). The agents relay the stream as it is
// (no lz4): a zero page goes as a flag, any other page whole, each with its header. W(t) is the
// working-set model of working-set.ts, fitted to QEMU's own dirty-rate measurement (one window).
//
//   pass 0      Z (P + H) + (N - Z) H bytes, in that over B;
//   pass i      W(t(i-1)) dirtied pages, sent whole (they were written: not zero);
//   stop        when W(t(i)) (P + H) / B is within the downtime limit;
//   never       when a pass leaves no fewer bytes than the one before (the dirtying keeps up with
//               the link) or the passes outlast the maximum duration: with the abort policy the
//               agents give up; forced, the downtime is what was left then;
//   downtime    (what is left + the device state) / B + 2R (the target's load, the commit);
//   disruption  the downtime (QEMU's post-copy, --postcopy, is not modelled here);
//   total       2R of setup + the passes + the downtime.
// B unknown is taken as not limiting, as for every method (predict.ts).

import { PAGE_BYTES } from '../../shared/driver/types.js';
import { type Derived, fmtMiB, fmtMs, linkSeconds, MAX_DURATION_MS_DEFAULT, type MethodPrediction, type PredictionInputs, SETUP_ROUND_TRIPS } from './model.js';

/** Each page's header in QEMU's RAM stream: its offset and flags (a zero page is only that). */
export const QEMU_PAGE_HEADER_BYTES = 8;
/**
 * QEMU's device state and the stream's other sections, sent at the switchover: about 0.1 MB
 * beyond ram.transferred in the runs docs/qemu.md records (72.6 MB relayed for 72.5 MB of RAM).
 */
export const QEMU_DEVICE_STATE_BYTES = 128 * 1024;
/** Passes modelled at most (QEMU has no bound of its own; the agents' maximum duration ends it). */
const PASSES_MAX = 1000;

export function predictQemuNative(inputs: PredictionInputs, d: Derived): MethodPrediction {
  const base = { method: 'qemu-native' as const, available: inputs.available.includes('qemu-native'), logOnlyCatchUp: false };
  const maxDurationMs = inputs.maxDurationMs ?? MAX_DURATION_MS_DEFAULT;
  const pageBytes = PAGE_BYTES + QEMU_PAGE_HEADER_BYTES;
  let elapsedMs = SETUP_ROUND_TRIPS * inputs.rttMs;
  let bytes = 0;
  let passBytes = d.nonZeroPages * pageBytes + (d.pageCount - d.nonZeroPages) * QEMU_PAGE_HEADER_BYTES;
  let left = passBytes;
  let passes = 0;
  let stop = '';
  /** The last pass left what fits the downtime limit (the other stops give up on that). */
  let fits = false;
  while (stop === '') {
    const passMs = linkSeconds(d, passBytes) * 1000;
    elapsedMs += passMs;
    bytes += passBytes;
    passes++;
    const before = passes === 1 ? Infinity : left;
    left = Math.round(d.workingSet.dirtied(passMs)) * pageBytes;
    fits = linkSeconds(d, left) * 1000 <= inputs.downtimeLimitMs;
    if (fits) stop = 'what was left fit the downtime limit';
    else if (left >= before) stop = 'the passes stopped shrinking (the guest dirties its memory as fast as the link drains it)';
    else if (elapsedMs >= maxDurationMs || passes >= PASSES_MAX) stop = `the passes outlasted the maximum duration of ${fmtMs(maxDurationMs)}`;
    passBytes = left;
  }
  const lastMs = linkSeconds(d, left + QEMU_DEVICE_STATE_BYTES) * 1000;
  const downtimeMs = lastMs + 2 * inputs.rttMs;
  const converges = downtimeMs <= inputs.downtimeLimitMs && fits;
  const verdict = converges ? '' : `: it does not converge within the ${inputs.downtimeLimitMs} ms limit; forced, the downtime would be ${fmtMs(downtimeMs)}`;
  return {
    ...base,
    converges,
    downtimeMs,
    totalTimeMs: elapsedMs + downtimeMs,
    bytes: bytes + left + QEMU_DEVICE_STATE_BYTES,
    disruptionMs: downtimeMs,
    rounds: passes,
    reason: `QEMU's pre-copy: ${passes} pass(es) in ${fmtMs(elapsedMs)}, ${fmtMiB(bytes)} of stream, stopped as ${stop}; the last ${fmtMiB(left)} and the device state go in ${fmtMs(lastMs)}${verdict}`,
  };
}
