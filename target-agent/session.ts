// One incoming migration on the target, on one Transfer stream: restore the checkpoint (phase 3),
// receive and replay units in order while reporting progress (phase 4), ask for stop-and-copy
// when the remaining units fit the downtime limit (phase 5), check the source's digest (phase 6),
// then resume the guest here and run the activation hooks (phase 7).
//
// Anything that goes wrong before the commit discards the replica and its reservation: the guest
// then only exists on the source, which resumes it.

import { spawn } from 'node:child_process';
import type { Logger } from 'pino';
import { remainingUnitsAllowed } from '../shared/convergence.js';
import { CorruptDataError, InvalidArgumentError, InvalidStateError, LimitExceededError, VmMigrateError } from '../shared/errors.js';
import { unpackPayload } from '../shared/protocol.js';
import { grpc, pb, statusOf } from '../shared/transport/grpc.js';
import type { PostcopyTarget } from '../shared/driver/types.js';
import type { MigrationService, Reservation } from './migration-service.js';

type SourceMessage = InstanceType<typeof pb.SourceMessage>;
/** How long a new transfer stream may go without its Open message. */
const OPEN_TIMEOUT_MS = 30_000;
type TargetMessage = InstanceType<typeof pb.TargetMessage>;

/**
 * - open: waiting for the Open message;
 * - restoring: applying checkpoint chunks (units already queue);
 * - replaying: checkpoint restored, units replayed as they come;
 * - postcopy: the guest runs here already, pages still arriving (post-copy);
 * - committed: digests matched; the guest is ours from here on;
 * - activated: the guest runs here;
 * - ended: aborted or failed; the replica was discarded.
 */
type SessionState = 'open' | 'restoring' | 'replaying' | 'postcopy' | 'committed' | 'activated' | 'ended';

interface QueuedUnit {
  sequence: number;
  bytes: Uint8Array;
  final: boolean;
}

export class TargetSession {
  private state: SessionState = 'open';
  private reservation: Reservation | null = null;
  private readonly queue: QueuedUnit[] = [];
  private queueBytes = 0;
  private chunksApplied = 0;
  /** Where the restore's time went (debug log): decompressing and checking payloads, applying chunks. */
  private readonly restoreTiming = { firstChunkAtMs: 0, unpackMs: 0, applyMs: 0 };
  private pageBatchesApplied = 0;
  private method: 'crtr' | 'precopy' | 'postcopy' = 'crtr';
  /** Post-copy: the guest already runs here; pages still arriving. */
  private postcopy: PostcopyTarget | null = null;
  private readonly pageWaiters: Array<{ pages: Uint32Array; resolve: () => void }> = [];
  private unitsReceived = 0;
  private unitsReplayed = 0;
  private bytesReceived = 0;
  private finalReplayed = false;
  /** Guest seconds per wall second of replay, exponentially weighted. */
  private replayRate = 0;
  private replaying = false;
  private stopRequestPending = false;
  private lastStopRequestMs = 0;
  private lastProgressMs = 0;
  private lastDigestMs = 0;
  private readonly rateWindow: Array<{ guestNs: number; ms: number }> = [];
  private rateGuestNs = 0;
  private rateMs = 0;
  private lastReplayEndMs = 0;
  private progressTimer: NodeJS.Timeout | null = null;
  private openTimer: NodeJS.Timeout | null = null;
  private resolveDone!: () => void;
  readonly done = new Promise<void>((resolve) => (this.resolveDone = resolve));

  constructor(
    private readonly call: grpc.ServerDuplexStream<SourceMessage, TargetMessage>,
    private readonly service: MigrationService,
    private log: Logger,
  ) {
    call.on('data', (message: SourceMessage) => this.onMessage(message));
    // A stream that never says which reservation it is for holds resources for nothing.
    this.openTimer = setTimeout(() => {
      if (this.state === 'open') this.fail(new InvalidStateError(`no Open within ${OPEN_TIMEOUT_MS} ms of the transfer stream's start`));
    }, OPEN_TIMEOUT_MS);
    this.openTimer.unref();
    call.on('end', () => this.onEnd('the source closed the stream'));
    call.on('cancelled', () => this.onEnd('the source cancelled the stream'));
    call.on('error', (error) => this.onEnd(`stream error: ${error.message}`));
  }

  /** Ends the session from outside (agent shutdown): before the commit, the replica is dropped. */
  abort(reason: string): void {
    this.fail(new InvalidStateError(`target agent: ${reason}`));
  }

  private onMessage(message: SourceMessage): void {
    if (this.state === 'ended') return;
    try {
      const payload = message.chunk?.payload ?? message.unit?.payload;
      if (payload?.data) this.bytesReceived += payload.data.length;
      switch (message.body) {
        // Decoded sub-messages are instances: absent scalars read as their proto3 defaults.
        case 'open':
          return this.onOpen(message.open as InstanceType<typeof pb.Open>);
        case 'chunk':
          return this.onChunk(message.chunk as InstanceType<typeof pb.CheckpointChunk>);
        case 'unit':
          return this.onUnit(message.unit as InstanceType<typeof pb.LogUnit>);
        case 'stopDecision':
          return this.onStopDecision(message.stopDecision as InstanceType<typeof pb.StopDecision>);
        case 'commit':
          return this.onCommit(message.commit as InstanceType<typeof pb.Commit>);
        case 'pages':
          return this.onPages(message.pages as InstanceType<typeof pb.PageBatch>);
        case 'machineState':
          return this.onMachineState(message.machineState as InstanceType<typeof pb.MachineState>);
        case 'abort':
          return this.end(`aborted by the source: ${message.abort?.reason ?? ''}`);
        case 'ping':
          return this.send({ pong: { sentMs: message.ping?.sentMs ?? 0 } });
        default:
          throw new CorruptDataError(`unknown message on the transfer stream (${String(message.body)})`);
      }
    } catch (error) {
      this.fail(error);
    }
  }

  private onOpen(open: InstanceType<typeof pb.Open>): void {
    if (this.state !== 'open') throw new InvalidStateError(`Open received twice (session is ${this.state})`);
    if (open.method !== '' && open.method !== 'crtr' && open.method !== 'precopy' && open.method !== 'postcopy') {
      throw new InvalidArgumentError(`transfer method '${open.method}' is not supported by this agent (crtr, precopy, postcopy)`);
    }
    this.method = open.method === '' ? 'crtr' : (open.method as 'crtr' | 'precopy' | 'postcopy');
    this.reservation = this.service.open(open.reservationId, this.method);
    // The source's job id, under the name the source logs it: one id greps across both agents.
    this.log = this.log.child({ jobId: this.reservation.migrationId, guestId: this.reservation.replica.id });
    this.state = 'restoring';
    this.log.info({ firstSequence: open.firstSequence, method: this.method }, 'transfer opened');
    // The first progress report acknowledges the Open: post-copy waits for it before suspending.
    this.progress(true);
  }

  /** Holds its reservation: the transfer opened and has not ended. */
  get opened(): boolean {
    return this.reservation !== null && this.state !== 'ended';
  }

  private requireReservation(what: string): Reservation {
    if (this.reservation === null) throw new InvalidStateError(`${what} before Open`);
    return this.reservation;
  }

  private onChunk(chunk: InstanceType<typeof pb.CheckpointChunk>): void {
    const r = this.requireReservation(`checkpoint chunk ${chunk.index}`);
    if (this.method !== 'crtr') throw new InvalidStateError(`checkpoint chunk ${chunk.index} in a ${this.method} transfer`);
    if (this.state !== 'restoring') throw new InvalidStateError(`checkpoint chunk ${chunk.index} after the checkpoint was restored`);
    const t0 = performance.now();
    if (this.chunksApplied === 0) this.restoreTiming.firstChunkAtMs = t0;
    // Transient: the restore copies the pages into guest memory before it returns.
    const bytes = unpackPayload(chunk.payload, `checkpoint chunk ${chunk.index}`, true);
    const t1 = performance.now();
    r.replica.replay!.restoreChunk({ index: chunk.index, final: chunk.final, bytes, memoryBytesCovered: chunk.memoryBytesCovered });
    this.restoreTiming.unpackMs += t1 - t0;
    this.restoreTiming.applyMs += performance.now() - t1;
    this.chunksApplied++;
    if (r.replica.replay!.restored) {
      this.state = 'replaying';
      // Tell the source first: it waits for this to end its checkpoint phase.
      this.progress(true);
      // Hash the restored image now rather than at commitment, inside the downtime: later digests
      // only rehash pages the replay wrote. Units that arrive meanwhile queue; the replay starts after.
      r.replica.digest();
      const rt = this.restoreTiming;
      this.log.debug(
        { chunks: this.chunksApplied, sinceFirstChunkMs: Math.round(performance.now() - rt.firstChunkAtMs), unpackMs: Math.round(rt.unpackMs), applyMs: Math.round(rt.applyMs) },
        'checkpoint restore timing',
      );
      this.log.info({ chunks: this.chunksApplied, queuedUnits: this.queue.length }, 'checkpoint restored: replaying');
      this.kickReplay();
      return;
    }
    this.progress(true);
  }

  private onPages(batch: InstanceType<typeof pb.PageBatch>): void {
    if (this.postcopy !== null) {
      const bytes = unpackPayload(batch.payload, `page batch ${this.pageBatchesApplied}`);
      this.postcopy.receivePages(bytes);
      this.pageBatchesApplied++;
      for (let i = this.pageWaiters.length - 1; i >= 0; i--) {
        const w = this.pageWaiters[i];
        if (this.postcopy.present(w.pages)) {
          this.pageWaiters.splice(i, 1);
          w.resolve();
        }
      }
      this.progress(this.postcopy.missingPages === 0);
      return;
    }
    const r = this.requireReservation(`page batch of round ${batch.round}`);
    if (this.method !== 'precopy' || this.state !== 'restoring') throw new InvalidStateError(`page batch received in a ${this.method} transfer that is ${this.state}`);
    const bytes = unpackPayload(batch.payload, `page batch ${this.pageBatchesApplied} (round ${batch.round})`);
    r.replica.pageRestore!.applyPages(bytes);
    this.pageBatchesApplied++;
    if (performance.now() - this.lastDigestMs > 250) {
      // Keep the incremental digest fresh (see onChunk): at commitment only the last pages remain.
      r.replica.digest();
      this.lastDigestMs = performance.now();
    }
    this.progress(false);
  }

  private onMachineState(message: InstanceType<typeof pb.MachineState>): void {
    const r = this.requireReservation('machine state');
    if (this.method === 'postcopy') return this.startPostcopy(r, unpackPayload(message.payload, 'machine state'));
    if (this.method !== 'precopy' || this.state !== 'restoring') throw new InvalidStateError(`machine state received in a ${this.method} transfer that is ${this.state}`);
    r.replica.pageRestore!.restoreMachineState(unpackPayload(message.payload, 'machine state'));
    this.state = 'replaying';
    this.finalReplayed = true;
    this.log.info({ pageBatches: this.pageBatchesApplied }, 'pre-copy complete: pages and machine state restored');
    this.progress(true);
  }

  /**
   * Post-copy: the guest resumes here at once with no page yet; each unit it runs first fetches
   * the pages it will touch. From this point the guest is this host's (the source stays
   * suspended); the commitment at the end checks the pages as received against the source.
   */
  private startPostcopy(r: Reservation, state: Uint8Array): void {
    if (this.state !== 'restoring') throw new InvalidStateError(`machine state received while ${this.state}`);
    const resumedAt = performance.now();
    const { postcopy } = r.replica.postcopy!.activatePostcopy(state, (pages: Uint32Array) => this.fetchPages(pages));
    this.postcopy = postcopy;
    this.service.forget(r.id);
    this.state = 'postcopy';
    this.log.info({ missingPages: postcopy.missingPages }, 'post-copy: resumed the guest here; fetching its pages');
    // Confirmed at once: the source must serve page requests while the hooks run.
    this.send({ activated: { resumeToReplyMs: performance.now() - resumedAt, hooks: [] } });
    void this.runHooks(r);
  }

  /** Post-copy: asks the source for `pages` and resolves once they are all here. */
  private fetchPages(pages: Uint32Array): Promise<void> {
    if (this.postcopy === null || this.postcopy.present(pages)) return Promise.resolve();
    for (let i = 0; i < pages.length; i += 4096) this.send({ pageRequest: { pages: Array.from(pages.subarray(i, i + 4096)) } });
    return new Promise((resolve) => this.pageWaiters.push({ pages, resolve }));
  }

  private onUnit(unit: InstanceType<typeof pb.LogUnit>): void {
    this.requireReservation(`unit ${unit.sequence}`);
    if (this.method !== 'crtr') throw new InvalidStateError(`log unit ${unit.sequence} in a ${this.method} transfer`);
    if (this.state !== 'restoring' && this.state !== 'replaying') throw new InvalidStateError(`unit ${unit.sequence} received while ${this.state}`);
    const opts = this.service.options;
    const bytes = unpackPayload(unit.payload, `unit ${unit.sequence}`);
    // A unit larger than the byte window is admitted alone (the source sends it only then).
    if (this.queue.length + 1 > opts.unitWindow || (this.queue.length > 0 && this.queueBytes + bytes.length > opts.unitWindowBytes)) {
      throw new LimitExceededError(
        `unit ${unit.sequence} overflows the unit window: ${this.queue.length} units / ${this.queueBytes} bytes queued, window ${opts.unitWindow} units / ${opts.unitWindowBytes} bytes`,
      );
    }
    this.queue.push({ sequence: unit.sequence, bytes, final: unit.final });
    this.queueBytes += bytes.length;
    this.unitsReceived++;
    this.kickReplay();
  }

  private onStopDecision(decision: InstanceType<typeof pb.StopDecision>): void {
    this.stopRequestPending = false;
    if (!decision.granted) this.log.debug({ reason: decision.reason }, 'stop-and-copy not granted yet');
    else this.log.info({ unsentLogBytes: decision.unsentLogBytes }, 'stop-and-copy granted');
  }

  private onCommit(commit: InstanceType<typeof pb.Commit>): void {
    const r = this.requireReservation('commit');
    if (this.postcopy !== null) return this.onPostcopyCommit(r, commit);
    if (this.state !== 'replaying' || !this.finalReplayed || this.queue.length > 0) {
      throw new InvalidStateError(`commit received before the final unit was replayed (${this.queue.length} units queued, state ${this.state})`);
    }
    const commitStart = performance.now();
    const targetDigest = r.replica.digest();
    const digestMs = performance.now() - commitStart;
    if (targetDigest !== commit.digest) {
      this.log.error({ sourceDigest: commit.digest, targetDigest }, 'commit refused: digests differ');
      this.send({ commitResult: { matched: false, targetDigest } });
      this.end(`digest mismatch: source ${commit.digest}, replica ${targetDigest}`);
      return;
    }
    // The commit point: from here the guest is this host's. It resumes here even if the stream
    // breaks now; the source never resumes its copy after sending the commit.
    this.state = 'committed';
    this.service.metrics?.incomingEnded(this.method, 'committed');
    this.send({ commitResult: { matched: true, targetDigest } });
    const resumedAt = performance.now();
    r.replica.activate();
    this.service.forget(r.id);
    this.state = 'activated';
    this.log.info({ digest: targetDigest, digestMs, commitToResumeMs: performance.now() - commitStart }, 'committed and resumed the guest here');
    void this.runHooks(r).then((hooks) => {
      this.send({ activated: { resumeToReplyMs: performance.now() - resumedAt, hooks } });
      this.finish();
    });
  }

  private onPostcopyCommit(r: Reservation, commit: InstanceType<typeof pb.Commit>): void {
    const postcopy = this.postcopy!;
    if (postcopy.missingPages > 0) throw new InvalidStateError(`post-copy commit received with ${postcopy.missingPages} pages still missing`);
    const targetDigest = postcopy.receivedDigest();
    if (targetDigest !== commit.digest) {
      // The guest running here started from a state the source never had: drop it, so that the
      // source (told so by matched=false) can resume its suspended copy.
      this.log.error({ sourceDigest: commit.digest, targetDigest }, 'post-copy commit refused: digests differ; discarding the guest here');
      this.service.discardGuest(r.replica.id);
      this.service.metrics?.incomingEnded(this.method, 'discarded');
      this.send({ commitResult: { matched: false, targetDigest } });
      this.state = 'ended';
      this.finish();
      return;
    }
    this.service.metrics?.incomingEnded(this.method, 'committed');
    this.send({ commitResult: { matched: true, targetDigest } });
    this.state = 'activated';
    this.log.info({ digest: targetDigest }, 'post-copy complete: every page here, digests match');
    this.finish();
  }

  private async runHooks(r: Reservation): Promise<Array<{ command: string; exitCode: number; error: string }>> {
    const results = [];
    for (const command of this.service.options.activationHooks) {
      results.push(await runHook(command, this.service.options.hookTimeoutMs, { VMMIGRATE_GUEST_ID: r.replica.id, VMMIGRATE_MIGRATION_ID: r.migrationId }));
      const last = results[results.length - 1];
      if (last.exitCode !== 0) this.log.warn({ hook: command, exitCode: last.exitCode, error: last.error }, 'activation hook failed');
    }
    return results;
  }

  /** Replays queued units, yielding to I/O between units, while the checkpoint is restored. */
  private kickReplay(): void {
    if (this.replaying || this.state !== 'replaying') {
      this.progress(false);
      return;
    }
    this.replaying = true;
    setImmediate(() => this.replayLoop());
  }

  private replayLoop(): void {
    const r = this.reservation!;
    try {
      const started = performance.now();
      // Replay for up to 10 ms at a time, then let incoming messages in.
      while (this.state === 'replaying' && this.queue.length > 0 && performance.now() - started < 10) {
        const unit = this.queue.shift()!;
        this.queueBytes -= unit.bytes.length;
        const t0 = performance.now();
        const applied = r.replica.replay!.applyUnit(unit.bytes);
        this.unitsReplayed++;
        this.service.metrics?.unitsReplayed();
        this.recordReplay(applied.guestNs, performance.now() - t0);
        if (applied.final) {
          this.finalReplayed = true;
          this.log.info({ unitsReplayed: this.unitsReplayed }, 'final unit replayed');
        }
      }
    } catch (error) {
      this.replaying = false;
      this.fail(error);
      return;
    }
    if (this.queue.length === 0 && this.state === 'replaying' && !this.finalReplayed && performance.now() - this.lastDigestMs > 200) {
      // Idle: keep the incremental digest fresh (see onChunk).
      this.lastDigestMs = performance.now();
      r.replica.digest();
    }
    this.progress(this.queue.length === 0 || this.finalReplayed);
    if (this.state === 'replaying' && this.queue.length > 0) setImmediate(() => this.replayLoop());
    else this.replaying = false;
  }

  /**
   * Replay rate as a ratio of sums over the last units (an average of per-unit ratios would be
   * biased upward by short units), with the time between units of one batch (decoding, I/O)
   * counted: what the target really achieves, which the stop threshold relies on.
   */
  private recordReplay(guestNs: number, ms: number): void {
    const w = this.rateWindow;
    const now = performance.now();
    const overheadMs = this.lastReplayEndMs > 0 && now - ms - this.lastReplayEndMs < 5 ? now - ms - this.lastReplayEndMs : 0;
    this.lastReplayEndMs = now;
    w.push({ guestNs, ms: ms + overheadMs });
    this.rateGuestNs += guestNs;
    this.rateMs += ms + overheadMs;
    if (w.length > 100) {
      const old = w.shift()!;
      this.rateGuestNs -= old.guestNs;
      this.rateMs -= old.ms;
    }
    if (this.rateMs > 0 && this.rateGuestNs > 0) this.replayRate = this.rateGuestNs / 1e6 / this.rateMs;
  }

  /** Sends progress (at most every progressIntervalMs unless `force`), and a stop request when due. */
  private progress(force: boolean): void {
    if (this.state === 'ended' || this.reservation === null) return;
    if (this.postcopy !== null && this.state !== 'postcopy') return;
    const now = performance.now();
    const interval = this.service.options.progressIntervalMs;
    if (!force && now - this.lastProgressMs < interval) {
      if (this.progressTimer === null) {
        this.progressTimer = setTimeout(() => {
          this.progressTimer = null;
          this.progress(true);
        }, interval);
      }
      return;
    }
    this.lastProgressMs = now;
    const r = this.reservation;
    const allowed = remainingUnitsAllowed(r.downtimeLimitMs, r.unitMs, this.replayRate || 1);
    const restored = this.state !== 'restoring' && this.state !== 'open';
    this.send({
      progress: {
        chunksApplied: this.chunksApplied,
        checkpointRestored: restored,
        unitsReceived: this.unitsReceived,
        unitsReplayed: this.unitsReplayed,
        remainingUnits: this.queue.length,
        remainingUnitBytes: this.queueBytes,
        replayRate: this.replayRate,
        remainingUnitsAllowed: allowed,
        bytesReceived: this.bytesReceived,
        finalReplayed: this.finalReplayed,
        pageBatchesApplied: this.pageBatchesApplied,
        missingPages: this.postcopy?.missingPages ?? 0,
      },
    });
    if (this.state === 'replaying' && !this.finalReplayed && !this.stopRequestPending && this.queue.length <= allowed && now - this.lastStopRequestMs >= 50) {
      this.stopRequestPending = true;
      this.lastStopRequestMs = now;
      this.send({ stopRequest: { remainingUnits: this.queue.length, remainingUnitsAllowed: allowed } });
    }
  }

  private send(body: Partial<Record<NonNullable<TargetMessage['body']>, object>>): void {
    if (this.state === 'ended') return;
    try {
      this.call.write(pb.TargetMessage.create(body as never));
    } catch (error) {
      this.log.warn({ err: error }, 'could not write to the transfer stream');
    }
  }

  private fail(error: unknown): void {
    if (this.state === 'ended') return;
    const code = statusOf(error);
    const message = error instanceof Error ? error.message : String(error);
    if (!(error instanceof VmMigrateError)) this.log.error({ err: error }, 'unexpected error in a transfer');
    this.send({ error: { code, message } });
    this.end(message);
  }

  private onEnd(reason: string): void {
    if (this.state === 'activated') return this.finish();
    if (this.state === 'postcopy') {
      // Post-copy's known weakness: the guest runs here, but part of its memory is still on the
      // source. It waits (stalled on its next missing page) for an operator's decision.
      this.log.error({ reason, missingPages: this.postcopy?.missingPages }, 'post-copy interrupted: the guest here lacks pages and cannot go on');
      return this.finish();
    }
    this.end(reason);
  }

  /** Ends the session; before the commit, the replica and its reservation are discarded. */
  private end(reason: string): void {
    if (this.state === 'ended') return;
    const before = this.state;
    if (before !== 'committed' && before !== 'activated' && before !== 'postcopy' && this.reservation !== null) {
      this.service.release(this.reservation.id, reason);
      this.log.warn({ reason, phase: before }, 'incoming migration ended before commit: replica discarded');
    }
    this.state = 'ended';
    this.finish();
  }

  private finish(): void {
    if (this.openTimer !== null) clearTimeout(this.openTimer);
    if (this.progressTimer !== null) clearTimeout(this.progressTimer);
    this.progressTimer = null;
    try {
      this.call.end();
    } catch {
      // Already closed.
    }
    this.resolveDone();
  }
}

/**
 * Runs one activation hook with `sh -c` in its own process group. Resolves when the shell exits
 * (a background process it left holding stderr does not keep us waiting); on timeout the whole
 * group is killed.
 */
function runHook(command: string, timeoutMs: number, env: Record<string, string>): Promise<{ command: string; exitCode: number; error: string }> {
  return new Promise((resolve) => {
    const child = spawn('sh', ['-c', command], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let stderr = '';
    let timedOut = false;
    child.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 4096) stderr += d.toString();
    });
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ command, exitCode: -1, error: e.message });
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      child.stderr.destroy();
      resolve({
        command,
        exitCode: code ?? -1,
        error: timedOut ? `killed after its ${timeoutMs} ms timeout` : signal ? `killed by ${signal}` : stderr.trim().slice(0, 1024),
      });
    });
  });
}
