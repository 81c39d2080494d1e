// The state digest of a `sim` machine: xxh64 over the per-page hash table (kept incrementally,
// see GuestMemory.pagesDigest) followed by the vCPU/device state. Record and replay must agree.

import { hex64, xxh64 } from '../../hash.js';
import type { SimMachine } from './machine.js';

export function machineDigest(machine: SimMachine): string {
  return combineDigest(machine.memory.pagesDigest(), machine.state.serialize());
}

/** The digest from a digest of the pages and the machine state bytes. */
export function combineDigest(pagesDigest: bigint, state: Uint8Array): string {
  const buf = new Uint8Array(8 + state.length);
  new DataView(buf.buffer).setBigUint64(0, pagesDigest, true);
  buf.set(state, 8);
  return hex64(xxh64(buf));
}
