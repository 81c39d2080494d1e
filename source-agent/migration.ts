// One outgoing CR/TR migration, driven from the source: the seven phases in order.
//
//   pre-migration  GetCapacity: does the target have room at all?
//   reservation    Reserve: the target sets room aside (or refuses: the guest is untouched)
//   checkpoint     start recording; stream the live checkpoint; units stream alongside
//   log-transfer   units stream as sealed; the target replays and reports; the monitor applies
//                  the non-convergence policy and the maximum duration
//   stop-and-copy  on the target's stop request, if our unsent log fits the downtime limit:
//                  suspend, send the last units, wait for the target to replay the final one
//   commitment     send our digest; the target compares and commits (or refuses: we resume)
//   activation     the target resumes the guest; on its confirmation we discard our copy
//
// Until the commit is sent, any failure or cancellation aborts: the target discards its replica
// and the guest runs here (resumed if it was suspended). Once the commit is sent the guest is
// never resumed here: if the answer is lost, it stays suspended and the job says so.

import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import {
  type BacklogSample,
  decideStop,
  expectedDowntimeMs,
  judgeConvergence,
  type NonConvergencePolicy,
  nextThrottle,
  nonConvergenceAction,
} from '../shared/convergence.js';
import type { SourceGuest } from '../shared/driver/types.js';
import { AbortedError, CorruptDataError, DeadlineExceededError, InvalidStateError, ReservationRefusedError, UnavailableError, VmMigrateError } from '../shared/errors.js';
import { AGENT_VERSION, type PackedMessage, packMessage, PROTOCOL_VERSION } from '../shared/protocol.js';
import { PAGE_BYTES } from '../shared/driver/types.js';
import { precopyRoundRate, precopyShouldStop } from './precopy-rules.js';
import { emptyStats, type MigrationMethod, type MigrationPhase, type MigrationStats } from '../shared/stats.js';
import { type ByteCounter, countingService, fromStatus, grpc, makeClient, migrationService, pb, Preserialized, statusName, unary } from '../shared/transport/grpc.js';

export interface FaultInjection {
  abortAtPhase?: MigrationPhase;
  corruptChunkIndex?: number;
  corruptUnitSequence?: number;
  corruptCommitDigest?: boolean;
}

export interface MigrationRequest {
  guestId: string;
  targetAddress: string;
  method: MigrationMethod;
  downtimeLimitMs: number;
  /** 0: unlimited. */
  maxBandwidthBytesPerSec: number;
  policy: NonConvergencePolicy;
  maxDurationMs: number;
  faults?: FaultInjection;
  /** Send payloads raw (data-plane benchmarks). */
  disableCompression?: boolean;
}

export interface SourceOptions {
  /** Deadline of the unary calls (capacity, reservation, release). */
  callTimeoutMs: number;
  /** Wait for the target's activation confirmation after the commit. */
  activationTimeoutMs: number;
  /** Window over which the backlog must shrink to count as converging. */
  convergenceWindowMs: number;
  /** How often the monitor samples the backlog and the clock. */
  monitorIntervalMs: number;
  /** Round-trip pings on the transfer stream. */
  pingIntervalMs: number;
  credentials: grpc.ChannelCredentials;
}

export const SOURCE_DEFAULTS: SourceOptions = {
  callTimeoutMs: 10_000,
  activationTimeoutMs: 60_000,
  convergenceWindowMs: 2_000,
  monitorIntervalMs: 250,
  pingIntervalMs: 500,
  credentials: grpc.credentials.createInsecure(),
};

type TargetMessage = InstanceType<typeof pb.TargetMessage>;
type Progress = InstanceType<typeof pb.Progress>;

/**
 * Events a job emits: `phase` (a phase began), `round` (a pre-copy round ended, or CR/TR answered
 * a stop request: the message says what happened), `progress` (periodic), `end` (final status).
 */
export interface MigrationEvents {
  phase: [MigrationPhase];
  round: [string];
  progress: [];
  end: [];
}

export class SourceMigration extends EventEmitter<MigrationEvents> {
  readonly id = randomUUID();
  readonly stats: MigrationStats;
  readonly startedAtMs = Date.now();
  private readonly t0 = performance.now();
  private readonly counter: ByteCounter = { sent: 0, received: 0 };
  /** The Migration methods, counting every byte each way (transferredBytes). */
  private readonly methods = countingService(migrationService, this.counter, 'client');
  /** Set once the transfer stream was ended or abandoned: nothing more is written to it. */
  private transportClosed = false;
  private readonly cancelController = new AbortController();
  private log: Logger;
  private client: grpc.Client | null = null;
  private call: grpc.ClientDuplexStream<InstanceType<typeof pb.SourceMessage> | Preserialized, TargetMessage> | null = null;
  private reservationId = '';
  private streamOpened = false;
  private commitSent = false;
  private committed = false;
  private progressMsg: Progress = pb.Progress.create();
  private chunksSent = 0;
  private readonly unitSizesInFlight: number[] = [];
  private unitBytesInFlight = 0;
  private heldUnitBytes = 0;
  /** Log bytes (as sent, after lz4) of the units written once the guest was suspended: the final unit and any backlog. */
  private logWireBytesAfterSuspend = 0;
  private windows = { chunk: 16, unit: 4096, unitBytes: 64 * 1024 * 1024 };
  private waiters = new Set<() => void>();
  private stopGranted = false;
  private stopForced = false;
  private checkpointDone = false;
  private pageBatchesSent = 0;
  private openAcknowledged = false;
  /** Set when we discarded the source copy (completion): its counters are gone. */
  private guestDiscarded = false;
  /** Post-copy: pages the target asked for, not yet sent. Bounded by the guest's page count per request burst. */
  private readonly demand: number[] = [];
  private demandQueued: Uint8Array | null = null;
  private demandRead = 0;
  /** Pre-copy: dirty pages at the end of each round, for convergence curves. */
  readonly dirtyHistory: Array<{ atMs: number; dirtyPages: number }> = [];
  private checkpointMs = 0;
  private throughputBytesPerSec = 0;
  private commitResult: InstanceType<typeof pb.CommitResult> | null = null;
  private activated: InstanceType<typeof pb.Activated> | null = null;
  private streamError: VmMigrateError | null = null;
  private suspendedAtMs = 0;
  private readonly backlog: BacklogSample[] = [];
  private bucket: { tokens: number; atMs: number } = { tokens: 0, atMs: 0 };

  constructor(
    private readonly guest: SourceGuest,
    readonly request: MigrationRequest,
    private readonly options: SourceOptions,
    log: Logger,
  ) {
    super();
    const description = guest.describe();
    this.stats = emptyStats(request.method, description.memoryBytes);
    this.stats.unitMs = description.unitMs;
    // The job id is also the migrationId the target receives in Reserve; both agents log it as
    // jobId, so that one id greps across both logs.
    this.log = log.child({ jobId: this.id, guestId: guest.id, target: request.targetAddress });
  }

  /** Cancels the migration if it has not committed; the guest stays (or resumes) here. */
  cancel(reason = 'cancelled by request'): void {
    if (this.commitSent) throw new InvalidStateError(`migration ${this.id} is past its commit point (${this.stats.phase}); it can no longer be cancelled`);
    if (this.isOver()) return;
    this.stats.status = 'cancelling';
    this.cancelController.abort(new AbortedError(reason));
    this.notify();
  }

  /** Bytes on the wire so far: `sent` to the target, `received` from it (transferredBytes is their sum). */
  get wireBytes(): Readonly<ByteCounter> {
    return this.counter;
  }

  isOver(): boolean {
    return this.stats.status === 'completed' || this.stats.status === 'failed' || this.stats.status === 'cancelled';
  }

  /** Runs the migration to its end; never throws (the outcome is in `stats`). */
  async run(): Promise<MigrationStats> {
    try {
      await this.phases();
      this.stats.status = 'completed';
      this.log.info({ downtimeMs: this.stats.downtimeMs, totalTimeMs: this.stats.totalTimeMs, transferredBytes: this.stats.transferredBytes }, 'migration completed');
    } catch (error) {
      await this.onFailure(error);
    } finally {
      this.refreshStats();
      this.setPhase('done');
      this.closeTransport();
      this.emit('end');
    }
    return this.stats;
  }

  private async phases(): Promise<void> {
    const req = this.request;
    const description = this.guest.describe();
    if (req.method !== 'crtr' && req.method !== 'precopy' && req.method !== 'postcopy') throw new InvalidStateError(`unknown method '${req.method}'`);
    this.client = makeClient(this.methods, 'Migration', req.targetAddress, this.options.credentials);

    // Phase 1: pre-migration.
    this.setPhase('pre-migration');
    const capacity = await unary(this.client, this.methods.getCapacity, pb.CapacityRequest.create(), this.options.callTimeoutMs, `capacity of ${req.targetAddress}`);
    if (capacity.driver !== description.driver) {
      throw new ReservationRefusedError(`target ${req.targetAddress} runs driver '${capacity.driver}', the guest needs '${description.driver}'`);
    }
    if (capacity.memoryBytesFree < description.memoryBytes) {
      throw new ReservationRefusedError(
        `target ${req.targetAddress} has ${(capacity.memoryBytesFree / 2 ** 20).toFixed(0)} MiB free, the guest needs ${(description.memoryBytes / 2 ** 20).toFixed(0)} MiB`,
      );
    }

    // Phase 2: reservation, with the version handshake.
    this.setPhase('reservation');
    const reservation = await unary(
      this.client,
      this.methods.reserve,
      pb.ReserveRequest.create({
        protocolVersion: PROTOCOL_VERSION,
        agentVersion: AGENT_VERSION,
        migrationId: this.id,
        guest: { ...description, machineConfig: description.machineConfig },
        downtimeLimitMs: req.downtimeLimitMs,
      }),
      this.options.callTimeoutMs,
      `reservation on ${req.targetAddress}`,
    );
    if (reservation.protocolVersion !== PROTOCOL_VERSION) {
      throw new InvalidStateError(`target speaks protocol version ${reservation.protocolVersion}, this agent ${PROTOCOL_VERSION}`);
    }
    this.reservationId = reservation.reservationId;
    this.windows = { chunk: Math.max(1, reservation.chunkWindow), unit: Math.max(1, reservation.unitWindow), unitBytes: Math.max(1, reservation.unitWindowBytes) };
    this.stats.setupTimeMs = this.elapsedMs();
    this.stats.status = 'active';

    if (req.method === 'postcopy') return this.postcopyTransfer();
    if (req.method === 'precopy') await this.precopyTransfer();
    else await this.crtrTransfer();

    // Phase 6: commitment.
    this.setPhase('commitment');
    this.stats.status = 'committing';
    const digestStart = performance.now();
    const digest = this.guest.digest();
    this.log.debug({ digestMs: performance.now() - digestStart, sinceSuspendMs: performance.now() - this.suspendedAtMs }, 'source digest at commitment');
    this.stats.sourceDigest = digest;
    this.checkCancelled();
    this.commitSent = true;
    const sentDigest = this.request.faults?.corruptCommitDigest ? flipHex(digest) : digest;
    this.send({ commit: { digest: sentDigest } });
    await this.until(() => this.commitResult !== null, true);
    const result = this.commitResult!;
    this.stats.targetDigest = result.targetDigest;
    if (!result.matched) {
      // The target refused the commit and discarded its replica: the guest is only here.
      this.commitSent = false;
      throw new CorruptDataError(`commit refused: the target's replica digest ${result.targetDigest} differs from the digest sent, ${sentDigest}`);
    }
    this.committed = true;
    this.stats.totalTimeMs = this.elapsedMs();

    // Phase 7: activation, confirmed by the target.
    this.setPhase('activation');
    await this.until(() => this.activated !== null, true, this.options.activationTimeoutMs);
    const activated = this.activated!;
    this.log.debug({ commitMs: performance.now() - this.suspendedAtMs, resumeToReplyMs: activated.resumeToReplyMs }, 'activation timing');
    this.stats.downtimeMs = performance.now() - this.suspendedAtMs - activated.resumeToReplyMs;
    for (const hook of activated.hooks) if (hook.exitCode !== 0) this.log.warn({ hook: hook.command, exitCode: hook.exitCode, error: hook.error }, 'activation hook failed on the target');
    this.refreshStats();
    this.guestDiscarded = true;
    this.guest.discard();
  }

  /** Phases 3 to 5 of CR/TR: checkpoint with units alongside, log transfer, stop-and-copy. */
  private async crtrTransfer(): Promise<void> {
    const req = this.request;
    // Phase 3: checkpoint, with units streaming alongside (phase 4 overlaps it).
    this.setPhase('checkpoint');
    this.openStream();
    const start = this.guest.recorder!.startRecording();
    this.send({ open: { reservationId: this.reservationId, migrationId: this.id, firstSequence: start.firstSequence } });
    const stopPing = this.startPings();
    const stopMonitor = this.startMonitor();
    try {
      const unitPump = this.pumpUnits();
      unitPump.catch(() => {}); // Observed below; failures also surface through the waits.
      const checkpointStart = performance.now();
      await this.pumpCheckpoint();
      this.checkpointMs = performance.now() - checkpointStart;
      this.checkpointDone = true;
      this.throughputBytesPerSec = this.stats.checkpointWireBytes / Math.max(0.001, this.checkpointMs / 1000);
      if (req.maxBandwidthBytesPerSec > 0) this.throughputBytesPerSec = Math.min(this.throughputBytesPerSec, req.maxBandwidthBytesPerSec);

      // Phase 4 goes on until the target asks to stop and we agree (or the policy forces it).
      this.setPhase('log-transfer');
      await this.until(() => this.stopGranted || this.stopForced);

      // Phase 5: stop-and-copy.
      this.setPhase('stop-and-copy');
      this.stats.status = 'stop-and-copy';
      this.suspendedAtMs = performance.now();
      await this.guest.suspend();
      const rec = this.guest.recorder!.recordingStats();
      this.stats.stopUnitsToReplay = rec.unitsRecorded - this.progressMsg.unitsReplayed;
      const suspendedMs = performance.now() - this.suspendedAtMs;
      await unitPump;
      this.stats.stopLogBytesUnsent = this.logWireBytesAfterSuspend;
      const sentMs = performance.now() - this.suspendedAtMs;
      await this.until(() => this.progressMsg.finalReplayed);
      this.log.debug({ suspendedMs, sentMs, replayedMs: performance.now() - this.suspendedAtMs }, 'stop-and-copy timing');
    } finally {
      stopPing();
      stopMonitor();
    }
  }

  /**
   * The pre-copy baseline (Clark et al., Xen): round 0 copies every page while the guest runs,
   * each later round the pages dirtied meanwhile, under Xen's stop rules and adaptive rate
   * limit (precopy-rules.ts); then suspend, copy the last dirty set and the machine state.
   */
  private async precopyTransfer(): Promise<void> {
    const req = this.request;
    const pages = this.guest.pages!;
    const memoryBytes = this.stats.memoryBytes;
    this.setPhase('checkpoint');
    this.openStream();
    this.send({ open: { reservationId: this.reservationId, migrationId: this.id, method: 'precopy' } });
    const stopPing = this.startPings();
    const stopMonitor = this.startMonitor();
    try {
      pages.startDirtyTracking();
      let sentBytes = 0;
      let dirtyBytesPerSec = 0;
      const all = new Uint32Array(pages.pageCount);
      for (let i = 0; i < all.length; i++) all[i] = i;
      let toSend: Uint32Array = all;
      for (let round = 0; ; round++) {
        const rate = precopyRoundRate(round, dirtyBytesPerSec, req.maxBandwidthBytesPerSec);
        const roundStart = performance.now();
        sentBytes += await this.sendPages(toSend, round, rate);
        if (round === 0) {
          this.checkpointDone = true;
          this.throughputBytesPerSec = this.stats.checkpointWireBytes / Math.max(0.001, (performance.now() - roundStart) / 1000);
        }
        this.stats.rounds = round + 1;
        const dirty = pages.fetchAndClearDirty();
        const roundSeconds = Math.max(0.001, (performance.now() - roundStart) / 1000);
        dirtyBytesPerSec = (dirty.length * PAGE_BYTES) / roundSeconds;
        this.stats.remainingBytes = dirty.length * PAGE_BYTES;
        this.dirtyHistory.push({ atMs: this.elapsedMs(), dirtyPages: dirty.length });
        this.emit('round', `pre-copy round ${round + 1}: ${dirty.length} pages dirtied meanwhile (${(dirty.length * PAGE_BYTES / 2 ** 20).toFixed(1)} MiB), ${(sentBytes / 2 ** 20).toFixed(1)} MiB of pages sent so far`);
        const verdict = precopyShouldStop({ roundsDone: round + 1, dirtyPages: dirty.length, sentBytes, memoryBytes });
        if (verdict.stop || this.elapsedMs() >= req.maxDurationMs) {
          this.log.info({ rounds: round + 1, reason: verdict.stop ? verdict.reason : 'maximum duration', dirtyPages: dirty.length }, 'pre-copy: stop-and-copy');
          // Phase 5: stop-and-copy of the last dirty set, then the machine state.
          this.setPhase('stop-and-copy');
          this.stats.status = 'stop-and-copy';
          this.suspendedAtMs = performance.now();
          await this.guest.suspend();
          const last = pages.fetchAndClearDirty();
          const merged = mergeSorted(dirty, last);
          this.stats.stopPagesSent = merged.length;
          await this.sendPages(merged, round + 1, req.maxBandwidthBytesPerSec > 0 ? req.maxBandwidthBytesPerSec : Infinity);
          const state = packMessage({ kind: 'machineState' }, this.guest.machineState());
          await this.write(state);
          await this.until(() => this.progressMsg.finalReplayed);
          pages.stopDirtyTracking();
          return;
        }
        toSend = dirty;
      }
    } finally {
      stopPing();
      stopMonitor();
    }
  }

  /**
   * The post-copy baseline (Hines et al., VEE 2009): suspend at once, send the machine state;
   * the target resumes the guest immediately and asks for the pages it touches before they have
   * arrived, while we push the rest in order. Commitment at the end: the target checks the pages
   * as received against our digest at suspend. Once the state is sent there is no way back: the
   * guest runs on the target.
   */
  private async postcopyTransfer(): Promise<void> {
    const req = this.request;
    const pages = this.guest.pages!;
    this.setPhase('stop-and-copy');
    this.stats.status = 'stop-and-copy';
    this.openStream();
    this.send({ open: { reservationId: this.reservationId, migrationId: this.id, method: 'postcopy' } });
    const stopPing = this.startPings();
    try {
      // Suspend only once the target accepted the transfer (its first progress report): a refusal
      // must find the guest still running here.
      await this.until(() => this.openAcknowledged);
      this.suspendedAtMs = performance.now();
      await this.guest.suspend();
      const state = packMessage({ kind: 'machineState' }, this.guest.machineState());
      this.checkCancelled();
      if (this.streamError !== null) throw this.streamError;
      this.commitSent = true; // the point of no return: the target resumes on receiving the state
      await this.write(state);
      const stateSentAtMs = performance.now();
      // The digest at suspend, for the commitment; taken while the target already runs the guest.
      const digest = this.guest.digest();
      this.stats.sourceDigest = digest;

      this.setPhase('activation');
      await this.until(() => this.activated !== null, true, this.options.activationTimeoutMs);
      this.stats.downtimeMs = performance.now() - this.suspendedAtMs - this.activated!.resumeToReplyMs;
      this.log.debug({ stateSentMs: stateSentAtMs - this.suspendedAtMs, downtimeMs: this.stats.downtimeMs, resumeToReplyMs: this.activated!.resumeToReplyMs }, 'post-copy switch timing');

      // Push every page, the ones the target asks for first.
      this.setPhase('page-push');
      const sent = new Uint8Array(pages.pageCount);
      let cursor = 0;
      const batchPages = 256;
      const rate = req.maxBandwidthBytesPerSec > 0 ? req.maxBandwidthBytesPerSec : Infinity;
      for (;;) {
        const batch: number[] = [];
        while (this.demandRead < this.demand.length && batch.length < batchPages) {
          const p = this.demand[this.demandRead++];
          if (p < pages.pageCount && sent[p] === 0) {
            sent[p] = 1;
            batch.push(p);
            this.stats.demandPages++;
          }
        }
        while (batch.length < batchPages && cursor < pages.pageCount) {
          if (sent[cursor] === 0) {
            sent[cursor] = 1;
            batch.push(cursor);
          }
          cursor++;
        }
        if (batch.length === 0) break;
        this.stats.remainingBytes = (pages.pageCount - cursor) * PAGE_BYTES;
        await this.sendPageBatch(Uint32Array.from(batch), 0, rate, true);
      }
      await this.until(() => this.progressMsg.missingPages === 0 && this.progressMsg.pageBatchesApplied >= this.pageBatchesSent, true);

      this.setPhase('commitment');
      this.stats.status = 'committing';
      this.send({ commit: { digest: req.faults?.corruptCommitDigest ? flipHex(digest) : digest } });
      await this.until(() => this.commitResult !== null, true, this.options.activationTimeoutMs);
      const result = this.commitResult!;
      this.stats.targetDigest = result.targetDigest;
      if (!result.matched) {
        // The target dropped its guest (see CommitResult): ours is the only copy; resume it.
        this.commitSent = false;
        throw new CorruptDataError(`post-copy commit refused: the pages the target received hash to ${result.targetDigest}, the source had ${digest}`);
      }
      this.committed = true;
      this.stats.totalTimeMs = this.elapsedMs();
      this.refreshStats();
      this.guestDiscarded = true;
      this.guest.discard();
    } finally {
      stopPing();
    }
  }

  /** Sends `list` in batches (window and rate limited); returns the raw page bytes sent. */
  private async sendPages(list: Uint32Array, round: number, rateBytesPerSec: number): Promise<number> {
    const batchPages = 256;
    let raw = 0;
    for (let i = 0; i < list.length; i += batchPages) {
      this.abortAt(round === 0 ? 'checkpoint' : this.stats.phase);
      raw += await this.sendPageBatch(list.subarray(i, Math.min(list.length, i + batchPages)), round, rateBytesPerSec, false);
    }
    return raw;
  }

  /**
   * Sends one batch of pages once the target's window has room; round 0 counts as the
   * checkpoint. `pastCommit`: post-copy's push, which no cancellation stops (and which fault
   * injection leaves alone: the guest already runs on the target). Returns the raw page bytes.
   */
  private async sendPageBatch(batch: Uint32Array, round: number, rateBytesPerSec: number, pastCommit: boolean): Promise<number> {
    await this.until(() => this.pageBatchesSent - this.progressMsg.pageBatchesApplied < this.windows.chunk, pastCommit);
    const bytes = this.guest.pages!.encodePages(batch);
    const message = packMessage({ kind: 'pages', round, pageCount: batch.length }, bytes, !this.request.disableCompression);
    if (!pastCommit && this.request.faults?.corruptChunkIndex === this.pageBatchesSent) corrupt(message);
    this.pageBatchesSent++;
    if (round === 0) {
      this.stats.checkpointBytes += bytes.length;
      this.stats.checkpointWireBytes += message.dataBytes;
      this.stats.checkpointMemoryBytesCovered += batch.length * PAGE_BYTES;
    }
    await this.write(message, rateBytesPerSec);
    return batch.length * PAGE_BYTES;
  }

  private async onFailure(error: unknown): Promise<void> {
    const cancelled = this.cancelController.signal.aborted && !(error instanceof VmMigrateError && !(error instanceof AbortedError));
    const e = error instanceof VmMigrateError ? error : new UnavailableError(error instanceof Error ? error.message : String(error), { cause: error });
    if (!(error instanceof VmMigrateError)) this.log.error({ err: error }, 'unexpected error in a migration');
    this.stats.error = e.message;
    this.stats.errorCode = statusName(grpcCode(e));
    if (this.committed) {
      // The guest runs on the target, which committed; we only lack its confirmation.
      this.stats.status = 'failed';
      this.stats.error = `committed, but the target's activation was not confirmed (${e.message}); the source copy is kept suspended, not discarded`;
      this.log.error({ err: e.message, code: this.stats.errorCode }, this.stats.error);
      return;
    }
    if (this.commitSent) {
      this.stats.status = 'failed';
      this.stats.error = `commit outcome unknown (${e.message}): the guest is kept suspended on the source; check the target before resuming it`;
      this.log.error({ err: e.message, code: this.stats.errorCode }, this.stats.error);
      return;
    }
    // Abort before the commit: the target drops its replica, the guest runs here.
    this.refreshStats();
    this.sendAbort(e.message);
    if (!this.streamOpened && this.reservationId !== '' && this.client !== null) {
      await unary(this.client, this.methods.release, pb.ReleaseRequest.create({ reservationId: this.reservationId, reason: e.message }), this.options.callTimeoutMs, 'release').catch(
        (releaseError: unknown) => this.log.warn({ err: String(releaseError) }, 'could not release the reservation (it expires on its own)'),
      );
    }
    this.guest.recorder!.stopRecording();
    if (this.guest.describe().state === 'suspended') this.guest.resume();
    this.guest.setThrottle(1);
    this.stats.status = cancelled ? 'cancelled' : 'failed';
    this.log.warn({ err: e.message, code: this.stats.errorCode, phase: this.stats.phase }, cancelled ? 'migration cancelled: guest runs on the source' : 'migration failed: guest runs on the source');
  }

  // --- the transfer stream ---------------------------------------------------------------

  private openStream(): void {
    const m = this.methods.transfer;
    const call = this.client!.makeBidiStreamRequest(m.path, m.requestSerialize, m.responseDeserialize) as grpc.ClientDuplexStream<
      InstanceType<typeof pb.SourceMessage> | Preserialized,
      TargetMessage
    >;
    this.call = call;
    this.streamOpened = true;
    call.on('data', (message: TargetMessage) => this.onTargetMessage(message));
    call.on('error', (error: grpc.ServiceError) => {
      if (this.streamError === null) this.streamError = fromStatus(error.code, error.details || error.message, `transfer stream to ${this.request.targetAddress}`);
      this.notify();
    });
    call.on('end', () => {
      if (this.streamError === null && !(this.activated !== null || (this.commitResult !== null && !this.commitResult.matched))) {
        this.streamError = new UnavailableError(`the target ${this.request.targetAddress} closed the transfer stream`);
      }
      this.notify();
    });
  }

  private onTargetMessage(message: TargetMessage): void {
    switch (message.body) {
      case 'progress':
        this.onProgress(message.progress as Progress);
        break;
      case 'stopRequest':
        this.onStopRequest(message.stopRequest as InstanceType<typeof pb.StopRequest>);
        break;
      case 'commitResult':
        // Only an answer to a commit we sent counts.
        if (this.commitSent) this.commitResult = message.commitResult as InstanceType<typeof pb.CommitResult>;
        else this.streamError ??= new InvalidStateError('the target sent a commit result before any commit');
        break;
      case 'activated':
        if (this.commitSent) this.activated = message.activated as InstanceType<typeof pb.Activated>;
        else this.streamError ??= new InvalidStateError('the target reported an activation before the commit');
        break;
      case 'error': {
        const e = message.error!;
        this.streamError = fromStatus(e.code ?? 2, e.message ?? '', `target ${this.request.targetAddress}`);
        break;
      }
      case 'pageRequest':
        this.onPageRequest(message.pageRequest?.pages ?? []);
        break;
      case 'pong': {
        const rtt = performance.now() - (message.pong?.sentMs ?? 0);
        this.stats.rttMs = this.stats.rttMs === 0 ? rtt : 0.8 * this.stats.rttMs + 0.2 * rtt;
        break;
      }
    }
    this.notify();
  }

  private onProgress(progress: Progress): void {
    this.openAcknowledged = true;
    const newlyReplayed = progress.unitsReplayed - this.progressMsg.unitsReplayed;
    for (let i = 0; i < newlyReplayed; i++) this.unitBytesInFlight -= this.unitSizesInFlight.shift() ?? 0;
    this.progressMsg = progress;
    this.stats.unitsReplayed = progress.unitsReplayed;
    this.stats.replayRate = progress.replayRate;
  }

  /**
   * Post-copy: queues the pages the target's guest waits for. Each page is queued at most once
   * (a bitmap), so the queue never holds more than the guest's page count.
   */
  private onPageRequest(pages: number[]): void {
    const pageCount = this.guest.pages!.pageCount;
    this.demandQueued ??= new Uint8Array(pageCount);
    for (const p of pages) {
      if (!Number.isInteger(p) || p < 0 || p >= pageCount) {
        this.streamError ??= new CorruptDataError(`the target asked for page ${p} of a ${pageCount}-page guest`);
        return;
      }
      if (this.demandQueued[p] === 0) {
        this.demandQueued[p] = 1;
        this.demand.push(p);
      }
    }
  }

  private onStopRequest(request: InstanceType<typeof pb.StopRequest>): void {
    if (this.isOver() || this.transportClosed || this.stopGranted || this.stopForced) return;
    this.stats.rounds++;
    if (!this.checkpointDone || this.stats.phase !== 'log-transfer') {
      this.send({ stopDecision: { granted: false, reason: `source is in phase ${this.stats.phase}` } });
      this.stats.stopRequestsDenied++;
      this.emit('round', `round ${this.stats.rounds}: stop request denied: source is in phase ${this.stats.phase}`);
      return;
    }
    const rec = this.guest.recorder!.recordingStats();
    const unsent = rec.bytesQueued + this.heldUnitBytes;
    // Units the target has not replayed include those still in flight, which its queue does not
    // show yet: count from what we recorded.
    const notReplayed = rec.unitsRecorded - this.progressMsg.unitsReplayed;
    const decision = decideStop({
      unsentLogBytes: unsent,
      unitsNotReplayed: notReplayed,
      unitsAllowed: request.remainingUnitsAllowed,
      downtimeLimitMs: this.request.downtimeLimitMs,
      throughputBytesPerSec: this.throughputBytesPerSec,
      rttMs: this.stats.rttMs,
    });
    this.send({ stopDecision: { granted: decision.granted, reason: decision.reason, unsentLogBytes: unsent, unsentLogBytesAllowed: decision.allowedBytes } });
    if (decision.granted) {
      // The digest at commitment is inside the downtime: bring the incremental one up to date now.
      this.guest.digest();
      this.stopGranted = true;
      this.log.info({ remainingUnits: request.remainingUnits, unsentLogBytes: unsent, rounds: this.stats.rounds }, 'stop-and-copy agreed');
    } else {
      this.stats.stopRequestsDenied++;
    }
    this.emit('round', `round ${this.stats.rounds}: the target has ${request.remainingUnits} units to replay; stop ${decision.granted ? 'granted' : `denied: ${decision.reason}`}`);
  }

  private send(body: Record<string, object>): void {
    if (this.transportClosed || this.call === null) return;
    this.call.write(pb.SourceMessage.create(body as never));
  }

  /**
   * Writes one serialized message (packMessage), waiting for the bandwidth limit and then, if the
   * stream's buffer is full, for it to drain. The limit counts the payload's data as sent.
   */
  private async write(message: PackedMessage, rateBytesPerSec = this.request.maxBandwidthBytesPerSec): Promise<void> {
    await this.throttleBandwidth(message.dataBytes, rateBytesPerSec);
    if (this.transportClosed) throw this.streamError ?? new AbortedError('the transfer stream was closed');
    const call = this.call!;
    const ok = call.write(new Preserialized(message.bytes));
    if (!ok) await this.until(() => true, false, undefined, new Promise<void>((resolve) => call.once('drain', () => resolve())));
  }

  private async throttleBandwidth(bytes: number, rate: number): Promise<void> {
    if (!(rate > 0) || rate === Infinity) return;
    // Token bucket holding at most 50 ms of credit.
    const now = performance.now();
    const b = this.bucket;
    b.tokens = Math.min(rate * 0.05, b.tokens + ((now - b.atMs) / 1000) * rate);
    b.atMs = now;
    b.tokens -= bytes;
    if (b.tokens < 0) await this.until(() => true, false, undefined, this.sleep((-b.tokens / rate) * 1000));
  }

  private sendAbort(reason: string): void {
    if (this.call === null || this.transportClosed) return;
    try {
      this.send({ abort: { reason } });
    } catch {
      // The stream is already gone; the target discards on its own.
    }
    this.closeTransport();
  }

  /** Ends the transfer stream (the target then ends its side) and closes the channel. */
  private closeTransport(): void {
    if (!this.transportClosed) {
      this.transportClosed = true;
      try {
        this.call?.end();
      } catch {
        // Already closed.
      }
    }
    this.client?.close();
  }

  // --- the pumps ---------------------------------------------------------------------

  private async pumpCheckpoint(): Promise<void> {
    const faults = this.request.faults;
    // Where the checkpoint's time goes (logged at debug level): making chunks, packing them,
    // waiting for the target's window, handing them to the stream, waiting for the restore.
    const ms = { chunk: 0, pack: 0, window: 0, write: 0, restore: 0 };
    let t = performance.now();
    const lap = (key: keyof typeof ms) => {
      const now = performance.now();
      ms[key] += now - t;
      t = now;
    };
    // The chunk's buffer is reused for the next one: packMessage compresses or copies it first.
    for await (const chunk of this.guest.recorder!.liveCheckpoint({ reuseBuffer: true })) {
      lap('chunk');
      this.abortAt('checkpoint');
      await this.until(() => this.chunksSent - this.progressMsg.chunksApplied < this.windows.chunk);
      lap('window');
      const message = packMessage(
        { kind: 'chunk', index: chunk.index, final: chunk.final, memoryBytesCovered: chunk.memoryBytesCovered },
        chunk.bytes,
        !this.request.disableCompression,
      );
      if (faults?.corruptChunkIndex === chunk.index) corrupt(message);
      lap('pack');
      this.stats.checkpointBytes += chunk.bytes.length;
      this.stats.checkpointWireBytes += message.dataBytes;
      this.stats.checkpointMemoryBytesCovered += chunk.memoryBytesCovered;
      this.chunksSent++;
      await this.write(message);
      lap('write');
    }
    // The target applies chunks as they arrive: wait until it has the whole image.
    await this.until(() => this.progressMsg.checkpointRestored);
    lap('restore');
    this.log.debug({ chunks: this.chunksSent, ...Object.fromEntries(Object.entries(ms).map(([k, v]) => [`${k}Ms`, Math.round(v)])) }, 'checkpoint streamed');
  }

  private async pumpUnits(): Promise<void> {
    const faults = this.request.faults;
    for (;;) {
      const unit = await this.guest.recorder!.nextSealedUnit(this.cancelController.signal);
      if (unit === null) {
        if (this.stats.phase === 'stop-and-copy' || this.stats.phase === 'commitment') return;
        throw new AbortedError('recording ended before the final unit');
      }
      this.heldUnitBytes = unit.bytes.length;
      // A unit larger than the byte window goes alone, once nothing else is in flight.
      await this.until(
        () =>
          this.stats.unitsSent - this.progressMsg.unitsReplayed < this.windows.unit &&
          (this.unitBytesInFlight === 0 || this.unitBytesInFlight + unit.bytes.length <= this.windows.unitBytes),
      );
      const message = packMessage(
        { kind: 'unit', sequence: unit.sequence, final: unit.final, guestNs: unit.guestNs, eventCount: unit.eventCount },
        unit.bytes,
        !this.request.disableCompression,
      );
      if (faults?.corruptUnitSequence === unit.sequence) corrupt(message);
      this.unitSizesInFlight.push(unit.bytes.length);
      this.unitBytesInFlight += unit.bytes.length;
      this.stats.unitsSent++;
      this.heldUnitBytes = 0;
      if (this.suspendedAtMs > 0) this.logWireBytesAfterSuspend += message.dataBytes;
      await this.write(message);
      if (unit.final) return;
    }
  }

  // --- monitoring ----------------------------------------------------------------------

  /**
   * Measures the round trip with small unary calls: each goes on its own HTTP/2 stream, so it does
   * not queue behind checkpoint data as a message on the transfer stream would.
   */
  private startPings(): () => void {
    let inFlight = false;
    const ping = () => {
      if (inFlight || this.client === null) return;
      inFlight = true;
      const sentMs = performance.now();
      unary(this.client, this.methods.getCapacity, pb.CapacityRequest.create(), this.options.callTimeoutMs, 'ping')
        .then(() => {
          const rtt = performance.now() - sentMs;
          this.stats.rttMs = this.stats.rttMs === 0 ? rtt : 0.8 * this.stats.rttMs + 0.2 * rtt;
        })
        .catch(() => {})
        .finally(() => (inFlight = false));
    };
    const timer = setInterval(ping, this.options.pingIntervalMs);
    ping();
    return () => clearInterval(timer);
  }

  /** Samples the backlog, applies the maximum duration and the non-convergence policy. */
  private startMonitor(): () => void {
    const timer = setInterval(() => {
      this.refreshStats();
      this.emit('progress');
      const elapsed = this.elapsedMs();
      // (Pre-copy applies its maximum duration itself, between rounds: it then stops and copies.)
      if (this.stats.phase === 'checkpoint' && this.request.method === 'crtr' && elapsed >= this.request.maxDurationMs) {
        this.streamError ??= new DeadlineExceededError(`migration ran ${elapsed.toFixed(0)} ms, its maximum is ${this.request.maxDurationMs} ms (still in the checkpoint phase)`);
        this.notify();
        return;
      }
      // Keep the incremental digest fresh, so that the one taken at commitment (inside the
      // downtime) only hashes the pages written since.
      if (this.stats.phase === 'log-transfer' || this.stats.phase === 'checkpoint') this.guest.digest();
      if (this.request.method !== 'crtr' || this.stats.phase !== 'log-transfer' || this.stopGranted || this.stopForced) return;
      // The backlog's trend means something only once the target replays: before its first
      // replayed unit the backlog grows by construction.
      if (this.progressMsg.unitsReplayed === 0 && elapsed < this.request.maxDurationMs) return;
      this.backlog.push({ atMs: elapsed, backlogUnits: this.stats.remainingUnits });
      if (this.backlog.length > 200) this.backlog.shift();
      const verdict = judgeConvergence(this.backlog, this.options.convergenceWindowMs, this.progressMsg.remainingUnitsAllowed || 1);
      const throttle = this.stats.throttle;
      const decision = nonConvergenceAction(this.request.policy, verdict, elapsed, this.request.maxDurationMs, throttle);
      switch (decision.action) {
        case 'abort':
          this.streamError ??= new DeadlineExceededError(decision.reason);
          break;
        case 'force':
          this.stopForced = true;
          this.stats.forced = true;
          this.log.warn({ reason: decision.reason }, 'forcing stop-and-copy');
          break;
        case 'throttle': {
          const next = nextThrottle(throttle);
          this.guest.setThrottle(next);
          this.stats.throttle = next;
          this.backlog.length = 0;
          this.log.warn({ throttle: next, reason: decision.reason }, 'throttling the guest to converge');
          break;
        }
        case 'continue':
          break;
      }
      this.notify();
    }, this.options.monitorIntervalMs);
    return () => clearInterval(timer);
  }

  refreshStats(): MigrationStats {
    const s = this.stats;
    const rec = this.guestDiscarded ? null : this.guest.recorder!.recordingStats();
    // Recording counters are monotonic while the recording lasts, and read as zero once it was
    // stopped (abort) or the guest discarded (completion): keep the last real values then.
    if (rec !== null && rec.unitsRecorded >= s.unitsRecorded) {
      s.unitsRecorded = rec.unitsRecorded;
      s.logBytes = rec.logBytes;
      s.stallMs = rec.stallMs;
    }
    s.transferredBytes = this.counter.sent + this.counter.received;
    s.remainingUnits = Math.max(0, s.unitsRecorded - s.unitsReplayed);
    const unsent = (rec?.bytesQueued ?? 0) + this.heldUnitBytes;
    // Pre-copy and post-copy set remainingBytes themselves (the dirty set, the pages not pushed).
    if (this.request.method === 'crtr') s.remainingBytes = Math.max(0, s.memoryBytes - s.checkpointMemoryBytesCovered) + unsent;
    if (!this.committed) s.totalTimeMs = this.elapsedMs();
    s.mbps = (s.transferredBytes * 8) / 1e6 / Math.max(0.001, this.elapsedMs() / 1000);
    const guestSeconds = (s.unitsRecorded * s.unitMs) / 1000;
    s.logRateBytesPerSec = guestSeconds > 0 ? s.logBytes / guestSeconds : 0;
    s.expectedDowntimeMs = expectedDowntimeMs({
      unsentLogBytes: unsent,
      unitsToReplay: s.remainingUnits,
      unitMs: s.unitMs,
      replayRate: s.replayRate,
      throughputBytesPerSec: this.throughputBytesPerSec,
      rttMs: s.rttMs,
    });
    return s;
  }

  // --- helpers -------------------------------------------------------------------------

  private setPhase(phase: MigrationPhase): void {
    this.stats.phase = phase;
    if (phase !== 'done') {
      this.log.info({ phase }, 'phase');
      this.abortAt(phase);
    }
    this.emit('phase', phase);
  }

  private abortAt(phase: MigrationPhase): void {
    if (this.request.faults?.abortAtPhase === phase) {
      this.cancelController.abort(new AbortedError(`fault injection: abort at phase ${phase}`));
      throw new AbortedError(`fault injection: abort at phase ${phase}`);
    }
  }

  private elapsedMs(): number {
    return performance.now() - this.t0;
  }

  private checkCancelled(): void {
    if (this.cancelController.signal.aborted) throw this.cancelController.signal.reason instanceof Error ? this.cancelController.signal.reason : new AbortedError('cancelled');
  }

  private notify(): void {
    const waiters = this.waiters;
    this.waiters = new Set();
    for (const w of waiters) w();
  }

  /**
   * Waits until `predicate` holds, re-checking on every message from the target. Rejects when
   * the stream fails, or (unless `pastCommit`) when the migration is cancelled; with `timeoutMs`,
   * rejects after that long.
   */
  private async until(predicate: () => boolean, pastCommit = false, timeoutMs?: number, extra?: Promise<void>): Promise<void> {
    const deadlineMs = timeoutMs === undefined ? Infinity : performance.now() + timeoutMs;
    let extraDone = extra === undefined;
    void extra?.then(() => {
      extraDone = true;
      this.notify();
    });
    for (;;) {
      if (!pastCommit) this.checkCancelled();
      if (this.streamError !== null) throw this.streamError;
      if (extraDone && predicate()) return;
      if (performance.now() >= deadlineMs) throw new DeadlineExceededError(`no answer from the target within ${timeoutMs} ms (phase ${this.stats.phase})`);
      // Woken by notify() (every message from the target, a drain, a cancellation); the timer is
      // only a backstop, cleared once woken so that a wait per chunk leaves no timer behind.
      let backstop: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.waiters.add(resolve);
        backstop = setTimeout(resolve, Math.min(250, Math.max(1, deadlineMs - performance.now())));
        backstop.unref();
      });
      clearTimeout(backstop);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }
}

/** Union of two ascending page lists, ascending, without duplicates. */
function mergeSorted(a: Uint32Array, b: Uint32Array): Uint32Array {
  const out = new Uint32Array(a.length + b.length);
  let i = 0;
  let j = 0;
  let n = 0;
  while (i < a.length || j < b.length) {
    const next = j >= b.length || (i < a.length && a[i] <= b[j]) ? a[i++] : b[j++];
    if (n === 0 || out[n - 1] !== next) out[n++] = next;
  }
  return out.subarray(0, n);
}

/** Fault injection: flips a byte in the middle of the payload's data, after its xxh64 was taken. */
function corrupt(message: PackedMessage): void {
  message.bytes[message.dataOffset + (message.dataBytes >> 1)] ^= 0xff;
}

function flipHex(digest: string): string {
  return (digest[0] === '0' ? '1' : '0') + digest.slice(1);
}

function grpcCode(error: VmMigrateError): number {
  return grpc.status[error.code as keyof typeof grpc.status] as number;
}
