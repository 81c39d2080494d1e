// What the methods and streams see of the transfer channel (channel.ts): the interface, and the
// types of what goes through it. Tests drive methods and streams through fakes of it.

import type { PayloadPacker } from '../shared/pack-pool.js';
import type { PackedMessage, PayloadBody } from '../shared/protocol.js';
import type { VmMigrateError } from '../shared/errors.js';
import type { pb } from '../shared/transport/grpc.js';
import type { WaitOptions } from './wait.js';

type SourceMessage = InstanceType<typeof pb.SourceMessage>;

export type Progress = InstanceType<typeof pb.Progress>;
export type StopRequest = InstanceType<typeof pb.StopRequest>;
export type CommitResult = InstanceType<typeof pb.CommitResult>;
export type Activated = InstanceType<typeof pb.Activated>;

/** The SourceMessage bodies a method sends as they are (the payload bodies go through `pack`). */
export type ControlBody = Partial<Pick<SourceMessage, 'open' | 'stopDecision' | 'commit' | 'abort' | 'rebase' | 'switchover'>>;

export interface TransferChannel {
  /** The target's last progress report (all zero before the first). */
  readonly progress: Progress;
  /** The target accepted the Open: its first progress report arrived. */
  readonly acknowledged: boolean;
  readonly commitResult: CommitResult | null;
  readonly activated: Activated | null;
  /** The digest of the last Commit sent ('' before). */
  readonly commitDigestSent: string;
  /** Smoothed round trip to the target, 0 until measured. */
  readonly rttMs: number;
  /** The target's stop-and-copy requests go here (CR/TR); unanswered while null. */
  onStopRequest: ((request: StopRequest) => void) | null;
  /** Called on every progress report, once `progress` holds it (a sync protection releases outputs). */
  onProgress: (() => void) | null;
  /** The pages the target's running guest waits for go here (post-copy). */
  onPageRequest: ((pages: number[], resend: boolean) => void) | null;
  /** Sends a message without a payload. Nothing is sent once the channel is closed. */
  send(body: ControlBody): void;
  /** Serializes a payload message (lz4 unless compression is off). */
  pack(body: PayloadBody, raw: Uint8Array): PackedMessage;
  /**
   * The same, in a compression worker when the agent has them (else here): `raw` may be reused as
   * soon as this returns, before the promise settles. The bytes are those `pack` would make.
   */
  packAsync(body: PayloadBody, raw: Uint8Array): Promise<PackedMessage>;
  /** Writes a packed message once the bandwidth limit allows and the stream's buffer drained. */
  write(message: PackedMessage, rateBytesPerSec: number): Promise<void>;
  /** Waits until `predicate` holds, re-checked at every message from the target. */
  until(predicate: () => boolean, options?: WaitOptions): Promise<void>;
  /** Sleeps `ms`, failing early as `until` does. */
  sleep(ms: number): Promise<void>;
  /** Fails every wait with `error` (the first error wins). */
  fail(error: VmMigrateError): void;
  /** Wakes every wait to re-check (a decision was made elsewhere). */
  notify(): void;
  /** The error the channel failed with, if any. */
  readonly error: VmMigrateError | null;
  /** The stream broke and the transfer is being resumed on a new one (absent: never resumes). */
  readonly linkDown?: boolean;
  /**
   * Drops the current stream as damaged in transit (`cause`: an ABORTED error) and resumes the
   * transfer on a new one, as a broken stream is; fails the channel with `cause` where it cannot be
   * resumed. Absent: channels that never resume.
   */
  restart?(cause: VmMigrateError): void;
  /**
   * Post-copy: the machine state is about to go, and the target resumes the guest on receiving
   * it, before any commit: its activation is expected from here on.
   */
  markPointOfNoReturn(): void;
  /** Tells the target to drop its replica (`cancelled`: by request, not a failure), then closes. */
  abort(reason: string, cancelled?: boolean): void;
  /** Ends the stream; nothing more is written. */
  close(): void;
  /** Streams the transfer was resumed on after its stream broke, and what was sent again. */
  readonly resumes: ResumeCounters;
}

export interface ResumeCounters {
  resumes: number;
  resentMessages: number;
  resentBytes: number;
  /** Wall time spent reconnecting. */
  reconnectingMs: number;
}

export interface TransferChannelOptions {
  /** Send payloads raw instead of lz4 (data-plane benchmarks). */
  compress: boolean;
  /** How often to measure the round trip. */
  pingIntervalMs: number;
  /** Where packAsync packs: the agent's compression workers (default: this thread). */
  packer?: PayloadPacker;
  /**
   * After the stream broke before the commit, how long to try resuming the transfer on a new
   * stream (the target's grant, ReserveResponse.resume_window_ms, and ours, the smaller); 0: never.
   */
  resumeWindowMs?: number;
  /** A protection: a broken stream is resumed however long it takes (the guest runs on meanwhile). */
  resumeForever?: boolean;
  /**
   * True while every millisecond counts (the guest is stopped for the switchover): resume attempts
   * then follow each other at most URGENT_BACKOFF_MS apart instead of backing off to 2 s.
   */
  urgent?: () => boolean;
  /** Told when the stream broke (attempt 0) and every tenth attempt after, with the last error: for the log. */
  onResumeAttempt?: (attempt: number, error: VmMigrateError) => void;
}

