// What a migration method is, and what the lifecycle lends it. The lifecycle (migration.ts) runs
// every method the same way:
//
//   prepare      capacity (with the method's capabilities), reservation
//   catchUp      while the guest runs: bring the replica as close as the method can
//   suspend      the guest stops here (once, by the lifecycle)
//   finish       after the suspend: bring the replica to the suspended state (or, for a method
//                that switches first, hand the guest over and complete it)
//   commit       digest compare; then activation, unless the method activated before the commit
//
// A method is one module under methods/, registered by name in methods/registry.ts.

import type { ProtectionTerms } from '../../shared/rpo.js';
import type { Logger } from 'pino';
import type { Clock } from '../../shared/clock.js';
import type { NonConvergencePolicy } from '../../shared/convergence.js';
import type { DriverCapability, SourceGuest } from '../../shared/driver/types.js';
import type { MigrationMethod, MigrationPhase, MigrationStats } from '../../shared/stats.js';
import type { TransferChannel } from '../channel.js';
import type { NativeRelay } from '../native-relay.js';

export interface MigrationRequest {
  guestId: string;
  targetAddress: string;
  method: MigrationMethod;
  downtimeLimitMs: number;
  /** 0: unlimited. */
  maxBandwidthBytesPerSec: number;
  policy: NonConvergencePolicy;
  maxDurationMs: number;
  /** Send payloads raw (data-plane benchmarks). */
  disableCompression?: boolean;
  /** CR/TR: catch up by the log only, never by delta checkpoints. */
  logOnlyCatchUp?: boolean;
  /** CR/TR: stop without the final approach (shared/approach.ts), whatever the backlog. */
  noFinalApproach?: boolean;
  /** qemu-native: switch to post-copy as soon as the hypervisor's stream runs. */
  nativePostcopy?: boolean;
  /**
   * Not a migration but a protection (CR/TR only): the log streams without end to a standby
   * until a planned switchover (then it is a migration), an unprotect, or a failover there.
   */
  protection?: ProtectionRequest;
}

export interface ProtectionRequest extends ProtectionTerms {
  /** With an arbiter: the primary's term is held now (checked before each output is released). */
  held?: () => boolean;
  /** Sync mode while the link is down: hold the outputs (bounded), or release them at once until it is back. */
  onLinkLoss?: 'hold' | 'release';
  /** How long sealed units may wait at the primary to go together (LogRecorder.setLogBatch; ms; 0: each at once). */
  logBatchMs: number;
  /** The most guest time the standby's replay may trail before the guest is slowed (ms). */
  replayLagMsMax: number;
}

/** The target's windows, from its ReserveResponse. */
export interface TargetWindows {
  /** Checkpoint chunks or page batches sent and not yet applied. */
  chunks: number;
  /** Units sent and not yet replayed, by count and raw bytes. */
  units: number;
  unitBytes: number;
  /** CR/TR: the target takes the commit right after the final unit and holds it until it replayed it. */
  earlyCommit?: boolean;
  /** How long the target keeps a transfer whose stream broke, for a resume (0: never). */
  resumeWindowMs?: number;
  /**
   * CR/TR: the image of the guest the target adopted as the replica's memory (migration.proto
   * BaseImage), its pages' xxh64: the checkpoint sends only the pages that differ. Dropped once
   * the checkpoint went.
   */
  base?: { kind: string; pageHashes: BigUint64Array } | null;
}

/** Timings a method's loops use. */
export interface MethodTimings {
  /** Window over which the backlog must shrink to count as converging. */
  convergenceWindowMs: number;
  /** How often the monitor samples the backlog and the clock. */
  monitorIntervalMs: number;
  /** Wait for the target's activation confirmation. */
  activationTimeoutMs: number;
  /** A broken transfer stream is resumed within this (0: not resumed). */
  resumeWindowMs: number;
}

/** What the lifecycle lends a method for one migration. */
export interface MethodContext {
  readonly guest: SourceGuest;
  /**
   * Opens the transfer stream and sends Open (with the method's name): the target takes its
   * reservation then. Until then a failure releases the reservation by a call of its own.
   */
  open(fields?: { firstSequence?: number }): void;
  /** The transfer stream, once opened. */
  readonly channel: TransferChannel;
  readonly clock: Clock;
  readonly request: MigrationRequest;
  readonly stats: MigrationStats;
  readonly windows: TargetWindows;
  readonly timings: MethodTimings;
  readonly log: Logger;
  /** The migration's cancellation. */
  readonly signal: AbortSignal;
  /** Enters a phase (logs it, tells watchers; a fault hook may abort here). */
  setPhase(phase: MigrationPhase): void;
  /** A round event for watchers: what a round did or decided, in a sentence. */
  round(message: string): void;
  /** Tells watchers the statistics moved (the monitor's tick). */
  progress(): void;
  /** Milliseconds since the migration started. */
  elapsedMs(): number;
  /** The checkpoint's throughput on the wire, which the stop rule and expected downtime use. */
  throughputBytesPerSec: number;
  /**
   * The point of no return of a method that hands the guest over before the commit (post-copy's
   * machine state): from here the guest is never resumed here and a cancellation is refused.
   */
  markPointOfNoReturn(): void;
  /** The guest was suspended here: the downtime runs. */
  readonly suspended: boolean;
  /** When it was suspended (clock.now()); meaningful once `suspended`. */
  readonly suspendedAtMs: number;
  /**
   * The downtime the guest saw, suspend here to its resume on the target at `resumedAtTargetMs`
   * (the target's clock, from Activated); without it, now less `resumeToReplyMs`.
   */
  downtimeTo(resumedAtTargetMs: number, resumeToReplyMs: number): number;
  /** The target driver's capabilities, as its Capacity said (pre-migration); optional ones decide extras such as CR/TR's deltas. */
  readonly targetCapabilities: readonly string[];
  /**
   * qemu-native: opens the hypervisor's migration stream to the target (a NativeStream named for
   * this transfer) and its relay; the method closes it.
   */
  openNativeRelay(postcopy: boolean): NativeRelay;
}

export interface TransferMethod {
  readonly name: MigrationMethod;
  /** Driver capabilities the method needs of the source guest and of the target's replica. */
  readonly needs: { readonly source: readonly DriverCapability[]; readonly target: readonly DriverCapability[] };
  /** The phases a migration by this method goes through, in order (`done` follows). */
  readonly phases: readonly MigrationPhase[];
  /** The method resumes the guest on the target before the commit (post-copy). */
  readonly activatesBeforeCommit: boolean;
  /**
   * The hypervisor stops the guest itself at its switchover (qemu-native: QEMU's own stream), so
   * the lifecycle's suspend only marks the downtime's start; the guest stops in `finish` or before.
   */
  readonly hypervisorStopsGuest?: boolean;
  /**
   * Why the copy here can no longer run once the commit went (the hypervisor's own point of no
   * return: QEMU's post-copy switch), so that an in-doubt job is never resumed here; absent: it can.
   */
  readonly noResumeAfterCommit?: string;
  /** Opens the transfer and, while the guest runs, brings the replica forward until the switchover is due. */
  catchUp(ctx: MethodContext): Promise<void>;
  /** After the lifecycle suspended the guest: sends what is left, until the replica is complete. */
  finish(ctx: MethodContext): Promise<void>;
  /** The guest's digest to commit with (default: taken by the lifecycle at the commitment). */
  readonly commitDigest?: string;
  /** How long the commit's answer may take (undefined: no bound). */
  commitTimeoutMs(ctx: MethodContext): number | undefined;
  /** Method-specific statistics, refreshed with the others (remainingBytes and the like). */
  refreshStats(ctx: MethodContext): void;
  /** After a failure before the commit: undo what the method did to the guest (stop recording, tracking). */
  cleanUp(ctx: MethodContext): void;
  /** Stops the method's timers; called once the migration ended, however it ended. */
  dispose(): void;
}
