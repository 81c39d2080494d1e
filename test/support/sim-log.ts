// The sim guest's log, as tests take it: every unit sealed and queued, and a checkpoint's chunks
// copied out (the driver may reuse a chunk's buffer for the next one).
import type { CheckpointChunk } from '../../shared/driver/types.js';
import type { SimSourceGuest } from '../../shared/driver/sim/index.js';

/** Takes every unit queued now, in order. */
export async function drainUnits(guest: SimSourceGuest): Promise<Uint8Array[]> {
  const units: Uint8Array[] = [];
  while (guest.recordingStats().unitsQueued > 0) {
    const u = await guest.nextSealedUnit();
    if (u === null) break;
    units.push(u.bytes);
  }
  return units;
}

/** Every chunk of `iterable`, each copied. */
export async function collectChunks(iterable: AsyncIterable<CheckpointChunk>): Promise<CheckpointChunk[]> {
  const out: CheckpointChunk[] = [];
  for await (const c of iterable) out.push({ ...c, bytes: c.bytes.slice() });
  return out;
}
