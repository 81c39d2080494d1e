// What a prediction of a migration can learn about a `sim` guest without migrating it: the log its
// recording would produce, from its workload rates and the unit encoding (unit-codec.ts), and the
// bound of the copy-on-write pool its live checkpoint would use. The recorder cannot record
// without a live checkpoint (its first unit boundary is the checkpoint's instant), so the log rate
// is modelled here rather than measured.

import type { SourceGuest } from '../types.js';
import { SimSourceGuest } from './guest.js';
import type { WorkloadRates } from './profiles.js';
import { UNIT_HEADER_BYTES, UNIT_TRAILER_BYTES } from './unit-codec.js';

/** Bytes of each event in a unit (unit-codec.ts): type and position, then its own fields. */
const TIMER_BYTES = 5;
const NET_RX_BYTES = 7; // plus the payload
const DISK_READ_BYTES = 9 + 4096;
const CLOCK_OR_RANDOM_BYTES = 13;

/** Raw log bytes per guest second that `rates` produce with units of `unitMs`. */
export function workloadLogBytesPerSec(rates: WorkloadRates, unitMs: number): number {
  const perUnit = ((UNIT_HEADER_BYTES + UNIT_TRAILER_BYTES) * 1000) / unitMs;
  return (
    perUnit +
    rates.timerHz * TIMER_BYTES +
    rates.packetsPerSec * (NET_RX_BYTES + rates.packetBytes) +
    rates.diskReadsPerSec * DISK_READ_BYTES +
    (rates.clockReadsPerSec + rates.randomReadsPerSec) * CLOCK_OR_RANDOM_BYTES
  );
}

export interface SimEstimateHints {
  /** Modelled from the workload rates. */
  logBytesPerSec: number;
  cowPoolBytes: number;
}

/** The hints for a `sim` guest; null for a guest of another driver. */
export function simEstimateHints(guest: SourceGuest): SimEstimateHints | null {
  if (!(guest instanceof SimSourceGuest)) return null;
  return { logBytesPerSec: workloadLogBytesPerSec(guest.config.rates, guest.config.unitMs), cowPoolBytes: guest.options.cowBytesMax };
}
