// xxh64, the one hash of the project: page hashes, state digests, chunk and unit checksums.
// xxhash-wasm instantiates its WebAssembly module asynchronously; doing it once at module load
// (top-level await) lets every caller hash synchronously.
import xxhash from 'xxhash-wasm';

const api = await xxhash();

/** xxh64 of `bytes` with seed 0, as an unsigned 64-bit bigint. */
export function xxh64(bytes: Uint8Array): bigint {
  return api.h64Raw(bytes);
}

/** A streaming xxh64, for data that arrives in pieces (a checkpoint, the pages of a guest). */
export function createXxh64(): { update(bytes: Uint8Array): void; digest(): bigint } {
  const state = api.create64();
  return {
    update(bytes: Uint8Array) {
      state.update(bytes);
    },
    digest() {
      return state.digest();
    },
  };
}

/** Fixed-width lowercase hex of a 64-bit hash, as logs, statistics and the protocol print it. */
export function hex64(value: bigint): string {
  return value.toString(16).padStart(16, '0');
}
