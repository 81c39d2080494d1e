// Type declarations for the parts of the `lz4` package this project uses: its block API.
// (The package's frame/stream API is an order of magnitude slower and is deliberately not declared.)
declare module 'lz4' {
  /** Upper bound of the compressed size of `inputBytes` bytes. */
  export function encodeBound(inputBytes: number): number;
  /**
   * Compresses `input` into `output`; returns the compressed length, or 0 when the input is
   * incompressible (the caller then stores it raw).
   */
  export function encodeBlock(input: Uint8Array, output: Uint8Array, startIndex?: number, endIndex?: number): number;
  /** Decompresses `input` into `output`; returns the decompressed length, negative on malformed input. */
  export function decodeBlock(input: Uint8Array, output: Uint8Array, startIndex?: number, endIndex?: number): number;
  const lz4: { encodeBound: typeof encodeBound; encodeBlock: typeof encodeBlock; decodeBlock: typeof decodeBlock };
  export default lz4;
}
