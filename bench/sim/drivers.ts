// The sim drivers a part of the benchmark runs its guests on, and the sealed units it takes from a
// recording guest.

import { SimDriver, type SimSourceGuest } from '../../shared/driver/sim/index.js';
import type { SealedUnit } from '../../shared/driver/types.js';

/** The content seed of every guest of the benchmark (what its memory holds at boot). */
export const CONTENT_SEED = 1;

/** A source and a target driver whose guests run only when stepped (`pacing: 'manual'`). */
export interface DriverPair {
  source: SimDriver;
  target: SimDriver;
}

/** Runs `body` with a fresh driver pair and shuts both drivers down after it, whatever happens. */
export async function withDrivers<T>(body: (drivers: DriverPair) => Promise<T>): Promise<T> {
  const source = new SimDriver({ guest: { pacing: 'manual' } });
  const target = new SimDriver({ guest: { pacing: 'manual' } });
  try {
    return await body({ source, target });
  } finally {
    source.shutdown();
    target.shutdown();
  }
}

/** Takes the units the guest has sealed so far. */
export async function drainQueued(guest: SimSourceGuest, into: SealedUnit[]): Promise<void> {
  while (guest.recordingStats().unitsQueued > 0) {
    const unit = await guest.nextSealedUnit();
    if (unit === null) return;
    into.push(unit);
  }
}

/** Takes every unit up to and including the final one (after `suspend`). */
export async function drainAll(guest: SimSourceGuest, into: SealedUnit[]): Promise<void> {
  for (;;) {
    const unit = await guest.nextSealedUnit();
    if (unit === null) return;
    into.push(unit);
    if (unit.final) return;
  }
}
