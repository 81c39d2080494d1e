// A guest's externally visible output (the packets it transmits), as a sync protection gates it:
// each output is held until the standby received the unit that produced it (shared/driver/types.ts
// re-exports these).

/** One output of a guest (a packet it transmitted). */
export interface OutputPacketView {
  readonly sequence: number;
  /** The unit that produced it. */
  readonly unit: number;
  readonly payload: string;
  /** performance.now() when produced and released (0: not released). */
  readonly producedAtMs: number;
  readonly releasedAtMs: number;
}

/**
 * A guest's output gate (a sync protection holds each output until the standby received the unit
 * that produced it), and the outputs released so far, kept in a bounded ring.
 */
export interface GuestOutput {
  hold(): void;
  /** Releases the held outputs of units up to `unit`; returns how many. */
  releaseThrough(unit: number): number;
  /** Releases everything held and holds no more. */
  openGate(): void;
  /** Drops what is held, never to be released (the guest was failed over: its standby answers now), and holds no more. */
  dropHeld(): number;
  readonly holding: boolean;
  readonly heldCount: number;
  readonly produced: number;
  readonly released: number;
  /** Times the gate opened because too much was held. */
  readonly overflowed: number;
  releasedAfter(after: number, max: number): { packets: readonly OutputPacketView[]; firstKept: number };
  delayPercentiles(): { p50: number; p99: number; samples: number };
  /** Told when the gate opens because too much was held (sync falls back to async). */
  onOverflow: ((held: number) => void) | null;
  /** Outputs leave only while this holds (null: always); the others wait, held. */
  releaseWhile: (() => boolean) | null;
}
