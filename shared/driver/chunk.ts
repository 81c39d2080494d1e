// A checkpoint's unit of transfer, shared by the live checkpoint (types.ts) and deltas (delta-types.ts).

/** One piece of a checkpoint image, in order. `bytes` is the driver's own encoding. */
export interface CheckpointChunk {
  /** 0, 1, 2, ... in stream order; the target rejects any other order. */
  readonly index: number;
  /** The last chunk of the image (it carries the vCPU and device state). */
  readonly final: boolean;
  readonly bytes: Uint8Array;
  /** Guest memory bytes this chunk accounts for (sent or elided as zero), for progress. */
  readonly memoryBytesCovered: number;
  /** A checkpoint over a base image: pages of this chunk left out as the same as the base's. */
  readonly pagesSkipped?: number;
  /** Of those, the bytes a checkpoint without the base would have carried (pages not zero). */
  readonly bytesSaved?: number;
}
