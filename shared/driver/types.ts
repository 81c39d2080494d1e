// The hypervisor driver interface: everything the agents need from a hypervisor, and nothing
// about how it is done. The agents, the protocol, the convergence controller and the bench see a
// guest's checkpoint as a stream of opaque chunks and its execution log as a sequence of opaque
// units; only the driver that produced them looks inside. That boundary is what lets the same
// agents run on the built-in deterministic guest (`sim`), on Xen dom0 (units are Remus epochs, or
// true log units with an event recorder) and under QEMU record/replay (units are slices of the
// replay log).
//
// Source side: describe, start recording, live checkpoint, next sealed unit, suspend, resume,
// discard, digest. Target side: reserve, restore from chunks, apply unit, digest, activate,
// discard. Both sides: dirty-page tracking and page read/write, for the pre-copy and post-copy
// baselines. Delta checkpoints (CR/TR's hybrid catch-up) are in delta-types.ts.

import type { CheckpointChunk } from './chunk.js';
import type { DeltaRestoreTarget, DeltaSource } from './delta-types.js';
import type { NativeStreamSource, NativeStreamTarget } from './native-types.js';

export type { CheckpointChunk } from './chunk.js';
export type { DeltaRestoreTarget, DeltaSource, DeltaStart } from './delta-types.js';
export type { BaseSource, ReplicaBase } from './base-types.js';
export type { GuestOutput, OutputPacketView } from './output-types.js';
import type { GuestOutput } from './output-types.js';
import type { BaseSource, ReplicaBase } from './base-types.js';

/** Bytes per guest page, for every driver. */
export const PAGE_BYTES = 4096;

/** Guest time one log unit covers: the range the agents accept, and the default of a new guest. */
export const UNIT_MS_MIN = 1;
export const UNIT_MS_MAX = 100;
export const UNIT_MS_DEFAULT = 10;

/**
 * A guest's lifecycle, as its host sees it.
 * - running: executing in real time (on the source, or on the target after activation);
 * - blocked: meant to run, but cannot go on: its memory is incomplete and the post-copy migration
 *   that brings it broke (QEMU's `postcopy-paused`), so its vCPUs wait for pages that do not come;
 * - suspended: stopped at a unit boundary, state intact; `resume` runs it again;
 * - restoring: a reservation receiving checkpoint chunks;
 * - replica: restored and paused, advanced only by applying units;
 * - discarded: gone; every operation but `describe` fails.
 */
export type GuestState = 'running' | 'blocked' | 'suspended' | 'restoring' | 'replica' | 'discarded';

/** What a guest is, enough for a target to reserve room for it and build a compatible replica. */
export interface GuestDescription {
  /** Stable id of the guest, unique on its host and kept across migrations. */
  readonly id: string;
  /** Driver that hosts it (`sim`, `xen`, `qemu`): a target must run the same driver. */
  readonly driver: string;
  readonly memoryBytes: number;
  readonly vcpus: number;
  /** Guest time one log unit covers. */
  readonly unitMs: number;
  readonly state: GuestState;
  /**
   * Driver-specific configuration the target needs to build an identical machine (for `sim`: the
   * workload profile and its rates). Opaque to the agents, carried verbatim.
   */
  readonly machineConfig: Uint8Array;
  /** Human-readable summary of `machineConfig`, for logs and listings. */
  readonly summary: string;
  /**
   * Drivers of a real hypervisor: its own word for the guest's state, and for the migration that
   * holds the guest if any (qemu: QEMU's run state, then its migration status: `running`,
   * `running, migration postcopy-paused`).
   */
  readonly hypervisorStatus?: string;
  /** Drivers that run a workload of their own (`sim`): its profile and rates, as the guest runs. */
  readonly workload?: { readonly profile: string; readonly rates: Readonly<Record<string, number>> };
}

/** What a host can take, for pre-migration. */
export interface HostCapacity {
  readonly driver: string;
  readonly capabilities: readonly DriverCapability[];
  readonly memoryBytesTotal: number;
  readonly memoryBytesReserved: number;
  readonly memoryBytesFree: number;
  readonly vcpusTotal: number;
  readonly vcpusReserved: number;
}

/** One sealed log unit. `bytes` is the driver's own encoding, checked by the target's driver. */
export interface SealedUnit {
  /** Consecutive from the recording's first unit; the target rejects gaps and duplicates. */
  readonly sequence: number;
  readonly bytes: Uint8Array;
  /** Guest time the unit covers (its share of wall time on the source, idle included). */
  readonly guestNs: number;
  /** Events recorded in the unit, for statistics. */
  readonly eventCount: number;
  /** The unit sealed by `suspend`: nothing follows it. */
  readonly final: boolean;
}

/** Where a recording starts: the checkpoint is of this instant, the first unit starts here. */
export interface RecordingStart {
  readonly firstSequence: number;
  /** Driver-defined execution position of the instant (instructions retired, for `sim`). */
  readonly position: number;
}

/** Counters a recording keeps, for statistics and the convergence controller. */
export interface RecordingStats {
  readonly unitsRecorded: number;
  readonly logBytes: number;
  /** Sealed units not yet taken by `nextSealedUnit`. */
  readonly unitsQueued: number;
  readonly bytesQueued: number;
  /** Wall time the guest spent stalled because the log queue or the checkpoint copy-on-write pool was full. */
  readonly stallMs: number;
  /** Units dropped unsent from the queue because a delta checkpoint superseded them (see DeltaSource). */
  readonly unitsDropped?: number;
  /** The queue is at its bound: the guest stalls until a unit is taken (absent: the driver does not say). */
  readonly queueFull?: boolean;
  /** Units sealed and not yet in the queue: waiting where the guest runs to go together (setLogBatch); not in unitsRecorded. */
  readonly unitsUnsent?: number;
}

/** Page-level access, used by the pre-copy and post-copy baselines (not by CR/TR). */
export interface PageAccess {
  /** Total pages of guest memory. */
  readonly pageCount: number;
  /** Starts (or restarts) dirty-page logging; every page counts as clean from now. */
  startDirtyTracking(): void;
  stopDirtyTracking(): void;
  /**
   * Returns the pages written since the last call (or since tracking started), in ascending
   * order, and marks them clean: an atomic fetch-and-clear of the dirty bitmap.
   */
  fetchAndClearDirty(): Uint32Array;
  /** Copies `count` pages from `firstPage` into `out` (`count * PAGE_BYTES` bytes). */
  readPages(firstPage: number, count: number, out: Uint8Array): void;
  /**
   * The current contents of `pages` (any order, at most a few thousand) in the driver's own
   * page-batch encoding, for a TargetReplica's `applyPages`.
   */
  encodePages(pages: Uint32Array): Uint8Array;
}

/**
 * The capabilities a driver may have, by name: a migration method declares the ones it needs on
 * each side, and a host reports its own (Capacity), so that a method a driver cannot carry is
 * refused by name before anything moves.
 * - log-recording: the source guest records its nondeterministic events into units (CR/TR);
 * - page-access: the source guest tracks dirty pages and reads them (pre-copy, post-copy);
 * - checkpoint-replay: a replica restores from checkpoint chunks and replays units (CR/TR);
 * - page-restore: a replica restores by page batches and a machine state (pre-copy);
 * - postcopy-resume: a replica resumes with its pages missing and fetches them (post-copy);
 * - delta-checkpoint: during a recording, the source sends the pages dirtied since the last
 *   checkpoint instant as of a new instant, and a replica restores them (CR/TR's hybrid catch-up);
 * - native-stream: the hypervisor migrates the guest with its own stream, which the agents relay
 *   (qemu-native; native-types.ts).
 */
export type DriverCapability = 'log-recording' | 'page-access' | 'checkpoint-replay' | 'page-restore' | 'postcopy-resume' | 'delta-checkpoint' | 'native-stream';
export const DRIVER_CAPABILITIES: readonly DriverCapability[] = ['log-recording', 'page-access', 'checkpoint-replay', 'page-restore', 'postcopy-resume', 'delta-checkpoint', 'native-stream'];

/** The longest LogRecorder.setLogBatch takes (ms). */
export const LOG_BATCH_MS_MAX = 1_000;

/** A guest's execution log and live checkpoint: what CR/TR needs of a source guest. */
export interface LogRecorder {
  /**
   * Starts recording nondeterministic events at the next unit boundary, which becomes the
   * instant of the live checkpoint. Units are sealed from then on and queue, bounded, for
   * `nextSealedUnit`; when the queue is full the guest stalls rather than buffer without bound.
   */
  startRecording(): RecordingStart;
  /**
   * The memory image and vCPU/device state as of the recording's start, produced while the guest
   * keeps running (copy-on-write). Pull-based: a chunk is made when the consumer asks, so the
   * consumer's pace is the backpressure. With `reuseBuffer`, every chunk's `bytes` are lent only
   * until the consumer asks for the next chunk (the driver writes each chunk into one buffer): for
   * a consumer that copies or compresses each chunk at once, which spares an allocation of fresh
   * memory per chunk. With `base` (xxh64 of each page of an image the target holds), only the
   * pages that differ from it go (base-types.ts).
   */
  liveCheckpoint(options?: { chunkPages?: number; reuseBuffer?: boolean; base?: BigUint64Array }): AsyncIterable<CheckpointChunk>;
  /**
   * The next sealed unit, waiting for it if none is queued; `null` once the final unit (sealed by
   * `suspend`) has been taken, or when the recording was stopped.
   */
  nextSealedUnit(signal?: AbortSignal): Promise<SealedUnit | null>;
  recordingStats(): RecordingStats;
  /**
   * Lets sealed units wait up to `ms` where they are sealed to reach the agent together: fewer
   * wake-ups of the agent, at up to `ms` more lag (0, the default: each at once). A unit that
   * produced output goes at once. For the recording in progress; optional (a driver whose units do
   * not wake the agent one by one has none).
   */
  setLogBatch?(ms: number): void;
  /** Stops recording and drops queued units; the guest keeps running. */
  stopRecording(): void;
}

/** A guest that runs (or ran) on this host: the source of a migration. */
export interface SourceGuest {
  readonly id: string;
  describe(): GuestDescription;
  /**
   * Stops the vCPU at the next unit boundary. While recording, seals the last unit (marked
   * `final`). The guest's state is kept intact for `resume` or `discard`.
   */
  suspend(): Promise<void>;
  /** Runs a suspended guest again, in real time (after an aborted migration). */
  resume(): void;
  /**
   * The vCPU and device state of a suspended guest, in the driver's own encoding (pre-copy and
   * post-copy send it with the last pages; a replica's `restoreMachineState` takes it).
   */
  machineState(): Uint8Array;
  /** Slows the guest: `factor` in (0, 1] of its nominal busy work per unit (auto-converge). */
  setThrottle(factor: number): void;
  /** Destroys the guest and frees its memory. */
  discard(): void;
  /**
   * Drivers whose guest runs in a process of its own (qemu): settles once that process came up and
   * runs the guest; rejects with why it did not, once nothing of the guest is left (its process
   * gone, off the host's books). Absent: the guest runs once created.
   */
  readonly started?: Promise<void>;
  /**
   * Drivers whose guest runs in a process of its own: settles once that process has exited after
   * `discard` (its memory is free then, not before). Absent: discard frees it at once.
   */
  stopped?(): Promise<unknown>;
  /** Stops a suspended guest for good (failed over elsewhere): it never resumes; kept only as a base image. */
  retire?(): void;
  /** xxh64 digest over all pages plus vCPU/device state, as 16 hex digits. */
  digest(): string;
  /** The vCPU's counters against its schedule; absent when the driver does not pace its guest itself. */
  runnerStats?(): import('../disruption.js').GuestRunnerStats;
  /** Pages still to arrive from this guest's own post-copy migration (0: it has them all). */
  readonly pagesMissing: number;
  /** Capability `log-recording`; absent when the driver records no event log. */
  readonly recorder?: LogRecorder;
  /** Capability `page-access`; absent when the driver cannot track and read pages. */
  readonly pages?: PageAccess;
  /** Capability `delta-checkpoint` (with `recorder`); absent when the driver makes no deltas. */
  readonly deltas?: DeltaSource;
  /** The guest's externally visible output, gated for a sync protection; absent when the driver cannot hold it. */
  readonly output?: GuestOutput;
  /** Capability `native-stream`: the hypervisor's own outgoing migration. */
  readonly nativeStream?: NativeStreamSource;
  /** The guest's console (its serial port's last bytes, and how many it wrote); absent when the driver keeps none. */
  console?(): { text: string; bytesTotal: number };
}

/** Restore from checkpoint chunks, then replay units: what CR/TR needs of a replica. */
export interface CheckpointReplayTarget {
  /**
   * Applies the next checkpoint chunk. Chunks must come in index order; a corrupt chunk or one
   * out of order is rejected (CorruptDataError / UnitOrderError) and changes nothing.
   * `chunk.bytes` is lent for the call only: the caller reuses its buffer for the next chunk.
   */
  restoreChunk(chunk: CheckpointChunk): void;
  /** True once the final chunk was applied: the replica is paused at the checkpoint instant. */
  readonly restored: boolean;
  /**
   * Replays one unit. The unit is validated completely (checksum, encoding, sequence, position)
   * before anything is applied: a corrupt, truncated, duplicate or out-of-order unit is rejected
   * with an error and leaves the replica unchanged. Replay does not wait out the guest's idle
   * time. Returns the guest time the unit covered.
   */
  applyUnit(bytes: Uint8Array): { sequence: number; guestNs: number; final: boolean };
  /**
   * A quick look at a unit as it arrives, long before it is replayed: refuses (CorruptDataError)
   * one whose declared counts this replica could never replay, so that the stream fails at the
   * message that shows it. Optional; applyUnit checks everything again.
   */
  checkUnit?(bytes: Uint8Array): void;
  /** Sequence number the next unit must carry. */
  readonly nextSequence: number;
}

/** Restore by page batches and a machine state: what pre-copy needs of a replica. */
export interface PageRestoreTarget {
  /**
   * Applies one page batch (from the source's `pages.encodePages`), in any order, a page any
   * number of times (the last one wins). Validated completely before anything is written.
   * Returns the pages applied.
   */
  applyPages(bytes: Uint8Array): number;
  /**
   * Ends a restore by pages with the source's `machineState()`: the replica is then restored and
   * complete (no units follow).
   */
  restoreMachineState(bytes: Uint8Array): void;
  readonly pages: PageAccess & {
    /** Writes `count` pages from `data` starting at `firstPage`. */
    writePages(firstPage: number, count: number, data: Uint8Array): void;
  };
}

/** Resume at once with every page missing, fetching pages on demand: what post-copy needs. */
export interface PostcopyResumeTarget {
  /**
   * Restores the source's `machineState()` with every page still missing and resumes the guest
   * here at once. Before the guest touches missing pages it calls `fetch` with them and waits
   * until they arrive through the returned PostcopyTarget.
   */
  activatePostcopy(stateBytes: Uint8Array, fetch: (pages: Uint32Array) => Promise<void>): { guest: SourceGuest; postcopy: PostcopyTarget };
}

/** The room reserved for an incoming guest, and the replica built in it. */
export interface TargetReplica {
  readonly id: string;
  describe(): GuestDescription;
  /** Restored and nothing more to apply: the final unit was replayed, or the machine state restored. */
  readonly complete: boolean;
  digest(): string;
  /**
   * Resumes the replica as a live guest on this host, running in real time. Returns the running
   * guest, which can itself later be migrated onward.
   */
  activate(): SourceGuest;
  /** Destroys the replica (or reservation) and frees its memory and reservation. */
  discard(): void;
  /**
   * Drivers that make a replica's memory ready at reservation (allocated and mapped, as a Xen
   * domain's at its build): settles once it is, or once the replica was discarded first. Rejects
   * with ReservationRefusedError when the memory cannot be had. Writes before then still work,
   * at the cost of faulting the memory in as they go.
   */
  readonly memoryReady?: Promise<void>;
  /** Capability `checkpoint-replay`. */
  readonly replay?: CheckpointReplayTarget;
  /** Capability `page-restore`. */
  readonly pageRestore?: PageRestoreTarget;
  /** Capability `postcopy-resume`. */
  readonly postcopy?: PostcopyResumeTarget;
  /** Capability `delta-checkpoint`. */
  readonly deltaRestore?: DeltaRestoreTarget;
  /** The base image this replica starts from (null: fresh memory). */
  readonly base?: ReplicaBase | null;
  /** Capability `native-stream`: the hypervisor's incoming end. */
  readonly nativeStream?: NativeStreamTarget;
}

/** The receiving end of a post-copy migration, while its guest already runs here. */
export interface PostcopyTarget {
  /** Pages not received yet. */
  readonly missingPages: number;
  /**
   * Applies a page batch (source's `pages.encodePages`); pages already present (received before,
   * and maybe written since by the running guest) are kept. Returns the pages stored.
   */
  receivePages(bytes: Uint8Array): number;
  /** Whether every one of `pages` is present. */
  present(pages: Uint32Array): boolean;
  /** The pages not received yet, in order (to ask for again after a batch was lost). */
  missingPageList(): Uint32Array;
  /**
   * Digest of the state as it was sent: the pages as they arrived and the machine state at
   * resume. Equal to the source's digest at suspend once nothing is missing.
   */
  receivedDigest(): string;
}

/** A hypervisor on one host. */
export interface HypervisorDriver {
  readonly name: string;
  /** What this driver's guests and replicas can do (see DriverCapability). */
  readonly capabilities: readonly DriverCapability[];
  capacity(): HostCapacity;
  listGuests(): GuestDescription[];
  /** A guest hosted here (running or suspended), or NotFoundError. */
  guest(id: string): SourceGuest;
  /**
   * Reserves room for a guest described by `description` and returns an empty replica ready to
   * receive checkpoint chunks. Throws ReservationRefusedError, with the reason, when the host
   * lacks room or cannot run such a guest. With `base`, the replica adopts that image of the guest
   * as its memory when the driver can (else starts fresh and the image is discarded).
   */
  reserve(description: GuestDescription, base?: BaseSource): TargetReplica;
  /**
   * Whether StartGuest's workload fields (profile, rates, environment seed) apply to this driver's
   * guests: false for one whose guests run their own operating system (qemu). Absent: they do (sim).
   */
  readonly runsWorkloads?: boolean;
  /**
   * Optional: boots a new guest from `spec` (the `sim` driver does; a driver whose guests are
   * made by their own tools, such as xl or QEMU, leaves it out and StartGuest is refused).
   */
  createGuest?(spec: GuestSpec): SourceGuest;
}

/** A guest to boot (StartGuest): a workload profile and its rates, for drivers that run workloads. */
export interface GuestSpec {
  readonly id?: string;
  readonly profile: string;
  readonly memoryBytes: number;
  /** Default: the host's. */
  readonly unitMs?: number;
  /** Rate overrides by name. */
  readonly rates?: Readonly<Record<string, number>>;
  /** Seed of the guest's outside world; default: from the operating system. */
  readonly environmentSeed?: number;
}
