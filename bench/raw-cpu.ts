// Two of the data-plane benchmark's baselines, measured on one core of this machine in the
// benchmark's own process (which is idle while the agents run):
// - lz4: block compression (lz4 encodeBlock, as the agents use it) of realistic guest pages, the
//   chunks of a live checkpoint of a `web` guest booted with the default content mix (zero pages
//   elided, as the agents send them); the rate counts the chunk bytes compressed per second;
// - memcpy: Buffer.copy of large buffers into memory already mapped, the cheapest thing the agents
//   could possibly do with a byte.

import { SimDriver } from '../shared/driver/sim/index.js';
import { compressBlockInto } from '../shared/lz4.js';
import { MIB_BYTES } from './format.js';

export interface CpuRateResult {
  /** Bytes processed in one measurement. */
  bytes: number;
  ms: number;
  bytesPerSec: number;
  /** lz4: the bytes it compressed to (a block lz4 could not shrink counts at its own size). */
  compressedBytes?: number;
}

/** Guest memory of the sample guest whose checkpoint chunks the lz4 baseline compresses. */
const LZ4_SAMPLE_GUEST_BYTES = 256 * MIB_BYTES;
/** Times over the sample per lz4 measurement (the figure is their total over their time). */
const LZ4_PASSES = 3;
/** Size of the buffers memcpy copies between, and how many copies a measurement makes. */
const MEMCPY_BUFFER_BYTES = 64 * MIB_BYTES;
const MEMCPY_COPIES = 32;

/** The chunks of a live checkpoint of a booted `web` guest, copied out (zero pages elided). */
export async function webCheckpointChunks(memoryBytes = LZ4_SAMPLE_GUEST_BYTES): Promise<Uint8Array[]> {
  const driver = new SimDriver({ guest: { pacing: 'manual' } });
  try {
    const guest = driver.createGuest({ id: 'lz4-sample', profile: 'web', memoryBytes, contentSeed: 1, environmentSeed: 7, start: false });
    guest.startRecording();
    const chunks: Uint8Array[] = [];
    for await (const chunk of guest.liveCheckpoint()) if (!chunk.final) chunks.push(chunk.bytes);
    return chunks;
  } finally {
    driver.shutdown();
  }
}

/** lz4 encodeBlock over `chunks`, LZ4_PASSES times, on this thread. */
export function measureLz4(chunks: Uint8Array[]): CpuRateResult {
  const largest = chunks.reduce((n, c) => Math.max(n, c.length), 0);
  const out = Buffer.allocUnsafeSlow(largest);
  out.fill(0);
  let bytes = 0;
  let compressedBytes = 0;
  const start = performance.now();
  for (let pass = 0; pass < LZ4_PASSES; pass++) {
    for (const chunk of chunks) {
      const n = compressBlockInto(chunk, out, 0);
      bytes += chunk.length;
      compressedBytes += n === 0 ? chunk.length : n;
    }
  }
  const ms = performance.now() - start;
  return { bytes, ms, bytesPerSec: bytes / (ms / 1000), compressedBytes };
}

/** Buffer.copy of one 64 MiB buffer into another, both mapped beforehand, MEMCPY_COPIES times. */
export function measureMemcpy(): CpuRateResult {
  const from = Buffer.allocUnsafeSlow(MEMCPY_BUFFER_BYTES).fill(0x5a);
  const to = Buffer.allocUnsafeSlow(MEMCPY_BUFFER_BYTES).fill(0);
  const start = performance.now();
  for (let i = 0; i < MEMCPY_COPIES; i++) from.copy(to, 0, 0, MEMCPY_BUFFER_BYTES);
  const ms = performance.now() - start;
  const bytes = MEMCPY_BUFFER_BYTES * MEMCPY_COPIES;
  return { bytes, ms, bytesPerSec: bytes / (ms / 1000) };
}
