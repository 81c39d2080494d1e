// The transfer channel: the Transfer stream from the source agent to the target agent, as the
// methods and streams use it. It writes messages with backpressure and the bandwidth limit,
// keeps what the target last said (progress, commit result, activation), hands the target's
// requests (stop-and-copy, pages) to whoever handles them, measures the round trip, resumes the
// transfer on a new stream after a lost link (numbering what it sends and keeping it until the
// target counted it: retransmit.ts), and fails every wait on it once the stream fails for good or
// the migration is cancelled.
//
// Methods and streams see only the TransferChannel interface: tests drive them through a fake.

import { type Clock, type Timer } from '../shared/clock.js';
import { AbortedError, InvalidStateError, UnavailableError, VmMigrateError } from '../shared/errors.js';
import { inlinePacker } from '../shared/pack-pool.js';
import { type PackedMessage, packMessage, type PayloadBody } from '../shared/protocol.js';
import { fromStatus, type grpc, pb, Preserialized, type StreamName } from '../shared/transport/grpc.js';
import { detailsFromMetadata, isErrorReason } from '../shared/transport/status.js';
import { RetransmitLog } from './retransmit.js';
import { TokenBucket } from './token-bucket.js';
import { FailableWaits } from './wait.js';
import type { Activated, CommitResult, ControlBody, Progress, ResumeCounters, StopRequest, TransferChannel, TransferChannelOptions } from './channel-types.js';

export type { WaitOptions } from './wait.js';

export type { Activated, CommitResult, ControlBody, Progress, ResumeCounters, StopRequest, TransferChannel, TransferChannelOptions } from './channel-types.js';
type SourceMessage = InstanceType<typeof pb.SourceMessage>;
type TargetMessage = InstanceType<typeof pb.TargetMessage>;

/** A resume attempt waits this long for the target's Resumed. */
const RESUME_ATTEMPT_MS = 3_000;
/** Between resume attempts while the guest is stopped: a link back sooner shortens the downtime. */
const URGENT_BACKOFF_MS = 50;
/** With sent messages not yet counted, no message from the target for this long is a stalled link: the stream is dropped and resumed. */
export const STALL_MS = 5_000;
/** The throughput the stall detector assumes until the target acknowledged some (bytes/s). */
const STALL_RATE_UNKNOWN = 1_000_000;

/** Smoothed round trip: the first sample, then an exponential average weighing a new sample 0.2. */
export function smoothRttMs(previousMs: number, sampleMs: number): number {
  return previousMs === 0 ? sampleMs : 0.8 * previousMs + 0.2 * sampleMs;
}

/** The stream each payload's bytes count in. */
const STREAM_OF: Record<PayloadBody['kind'], StreamName> = { chunk: 'checkpoint', unit: 'log', pages: 'pages', machineState: 'pages' };

export type TransferCall = grpc.ClientDuplexStream<SourceMessage | Preserialized, TargetMessage>;
type Call = TransferCall;

export class GrpcTransferChannel extends FailableWaits implements TransferChannel {
  progress: Progress = pb.Progress.create();
  acknowledged = false;
  commitResult: CommitResult | null = null;
  activated: Activated | null = null;
  commitDigestSent = '';
  rttMs = 0;
  onStopRequest: ((request: StopRequest) => void) | null = null;
  onPageRequest: ((pages: number[], resend: boolean) => void) | null = null;
  onProgress: (() => void) | null = null;
  private closed = false;
  /** A commit was sent, or post-copy's machine state: the target may activate from here on. */
  private pointOfNoReturnPassed = false;
  private readonly bucket: TokenBucket;
  private readonly pinger: Timer;
  private call!: Call;
  /** Events of streams replaced by a resume are ignored. */
  private callGeneration = 0;
  private readonly log = new RetransmitLog();
  private open: InstanceType<typeof pb.Open> | null = null;
  /** The target ended the transfer on purpose (TargetError): no resume. */
  private targetEnded = false;
  private reconnecting = false;
  private attemptError: VmMigrateError | null = null;
  private resumed: InstanceType<typeof pb.Resumed> | null = null;
  /** The bandwidth limit of the last write (0: none), and the throughput acknowledged: what the stall detector allows for. */
  private rateBytesPerSec = 0;
  private ackedRate = 0;
  private ackedBytesThen = 0;
  private ackedAtMs = 0;
  /** Resume attempts so far, numbered on the wire. */
  private resumeAttempts = 0;
  private lastHeardMs: number;
  readonly resumes: ResumeCounters = { resumes: 0, resentMessages: 0, resentBytes: 0, reconnectingMs: 0 };

  constructor(
    call: Call,
    private readonly options: TransferChannelOptions & { address: string; signal: AbortSignal; ping: () => Promise<void>; clock: Clock; reopen?: (stalled: boolean) => Call },
  ) {
    super(options.clock, options.signal);
    this.bucket = new TokenBucket(this.clock);
    this.lastHeardMs = this.clock.now();
    this.attach(call);
    this.pinger = this.startPings();
  }

  get linkDown(): boolean {
    return this.reconnecting;
  }

  restart(cause: VmMigrateError): void {
    // A resume under way replaces the stream already.
    if (this.reconnecting) return;
    const damaged = this.call;
    this.broken(cause);
    try {
      damaged.cancel();
    } catch {
      // Gone already.
    }
  }

  /** Listens to `call`, from now on the transfer's stream. */
  private attach(call: Call): void {
    const generation = ++this.callGeneration;
    const current = () => generation === this.callGeneration;
    this.call = call;
    call.on('data', (message: TargetMessage) => current() && this.onMessage(message));
    call.on('error', (error: grpc.ServiceError) => current() && this.broken(fromStatus(error.code, error.details || error.message, `transfer stream to ${this.options.address}`, detailsFromMetadata(error.metadata))));
    call.on('end', () => {
      if (!current()) return;
      const finished = this.activated !== null || (this.commitResult !== null && !this.commitResult.matched);
      if (!finished) this.broken(new UnavailableError(`the target ${this.options.address} closed the transfer stream`));
      this.notify();
    });
  }

  /** The stream failed: resumed on a new one if it may be, else every wait fails. */
  private broken(error: VmMigrateError): void {
    if (this.reconnecting) {
      this.attemptError ??= error;
      this.notify();
      return;
    }
    // A status the target chose (bad data, a limit, a refusal) is not a lost link.
    const lostLink = error.code === 'UNAVAILABLE' || error.code === 'ABORTED' || error.reason === 'INTERNAL_ERROR';
    const resumable = lostLink && !this.closed && (this.options.resumeWindowMs ?? 0) > 0 && this.options.reopen !== undefined && this.open !== null && this.commitDigestSent === '' && !this.targetEnded && this.error === null && !this.options.signal.aborted;
    if (!resumable) return this.fail(error);
    // A resume that throws (the migration failed meanwhile) fails every wait, as the break would have.
    this.resume(error).catch((failure: unknown) => this.fail(failure instanceof VmMigrateError ? failure : error));
  }

  send(body: ControlBody): void {
    if (this.closed) return;
    if (body.commit) {
      this.commitDigestSent = body.commit.digest ?? '';
      this.pointOfNoReturnPassed = true;
    }
    const message = pb.SourceMessage.create(body as never);
    if (body.open) {
      this.open = message.open as InstanceType<typeof pb.Open>;
      this.call.write(message);
      return;
    }
    // Numbered and kept for a resume; written now unless a resume is under way (it sends it then).
    if (this.resumable) this.log.add(message, 64);
    if (!this.reconnecting) this.call.write(message);
  }

  private get resumable(): boolean {
    return (this.options.resumeWindowMs ?? 0) > 0;
  }

  pack(body: PayloadBody, raw: Uint8Array): PackedMessage {
    return packMessage(body, raw, this.options.compress);
  }

  packAsync(body: PayloadBody, raw: Uint8Array): Promise<PackedMessage> {
    return (this.options.packer ?? inlinePacker).pack(body, raw, this.options.compress);
  }

  async write(message: PackedMessage, rateBytesPerSec: number): Promise<void> {
    this.rateBytesPerSec = rateBytesPerSec;
    const waitMs = this.bucket.take(message.dataBytes, rateBytesPerSec);
    if (waitMs > 0) await this.sleep(waitMs);
    if (this.reconnecting) await this.until(() => !this.reconnecting);
    if (this.closed) throw this.error ?? new AbortedError('the transfer stream was closed');
    const pre = new Preserialized(message.bytes, STREAM_OF[message.kind], message.rawBytes);
    const release = message.release;
    let written: boolean;
    if (this.resumable) {
      // Kept (its packer's buffer too) until the target counted it, to send it again after a resume.
      this.log.add(pre, message.bytes.length, release);
      written = this.call.write(pre);
    } else {
      // The write's callback comes once gRPC framed the message into a buffer of its own and handed
      // it on: a packer's buffer can then be reused.
      written = release === undefined ? this.call.write(pre) : this.call.write(pre, () => release());
    }
    if (!written) await this.drained(this.call);
  }

  /**
   * Waits for `call` to take more, or for a resume to replace it: a stream that broke never drains,
   * and what it held is sent again on the new one from the log.
   */
  private async drained(call: Call): Promise<void> {
    let drained = false;
    const onDrain = () => {
      drained = true;
      this.notify();
    };
    call.once('drain', onDrain);
    try {
      await this.until(() => drained || this.call !== call || this.closed);
    } finally {
      call.removeListener('drain', onDrain);
    }
  }

  /**
   * Resumes the transfer on a new stream: Resume, then everything the target had not counted, in
   * order, before anything new goes. Tries until the window passes, the target refuses, or the
   * migration ends; then fails every wait with `cause`.
   */
  private async resume(cause: VmMigrateError): Promise<void> {
    this.options.onResumeAttempt?.(0, cause);
    this.reconnecting = true;
    const startMs = this.clock.now();
    // Post-copy past its hand-over: the guest on the target waits for pages only we have; we try
    // for as long as we live, until the target says the transfer is gone.
    const deadlineMs = this.pointOfNoReturnPassed || this.options.resumeForever === true ? Number.POSITIVE_INFINITY : startMs + (this.options.resumeWindowMs ?? 0);
    const stalled = cause.message.includes('stalled');
    let backoffMs = 100;
    let attempts = 0;
    let last: VmMigrateError = cause;
    while (this.clock.now() < deadlineMs && !this.closed && !this.options.signal.aborted) {
      attempts++;
      this.attemptError = null;
      this.resumed = null;
      const call = this.options.reopen!(stalled || attempts > 1);
      this.attach(call);
      call.write(pb.SourceMessage.create({ resume: { reservationId: this.open!.reservationId, migrationId: this.open!.migrationId, attempt: ++this.resumeAttempts, open: this.open! } }));
      const timeoutMs = Math.max(1, Math.min(RESUME_ATTEMPT_MS, deadlineMs - this.clock.now()));
      if (attempts > 1 && attempts % 10 === 0) this.options.onResumeAttempt?.(attempts, last);
      await this.wakeups.until(() => this.resumed !== null || this.attemptError !== null || this.closed, () => {}, timeoutMs).catch(() => {});
      const answer = this.resumed as InstanceType<typeof pb.Resumed> | null;
      if (answer !== null && this.attemptError === null && (await this.resend(call, Number(answer.messagesReceived)))) {
        this.resumes.resumes++;
        this.resumes.reconnectingMs += this.clock.now() - startMs;
        this.reconnecting = false;
        this.lastHeardMs = this.clock.now();
        this.notify();
        return;
      }
      last = this.attemptError ?? new UnavailableError(`no answer to Resume within ${timeoutMs} ms`);
      try {
        call.cancel();
      } catch {
        // Gone already.
      }
      // The target no longer has the transfer (it ended, or the window passed there): no use trying again.
      if (last.code === 'NOT_FOUND' || this.targetEnded) break;
      if (this.options.urgent?.() === true) backoffMs = Math.min(backoffMs, URGENT_BACKOFF_MS);
      await this.clock.sleep(Math.max(0, Math.min(backoffMs, deadlineMs - this.clock.now())));
      backoffMs = Math.min(this.options.urgent?.() === true ? URGENT_BACKOFF_MS : 2_000, backoffMs * 2);
    }
    this.resumes.reconnectingMs += this.clock.now() - startMs;
    this.reconnecting = false;
    this.fail(new UnavailableError(`${cause.message}; the transfer could not be resumed within ${this.options.resumeWindowMs} ms (${attempts} attempt${attempts === 1 ? '' : 's'}, last: ${last.message})`, { reason: cause.reason }));
  }

  /** Sends again, on the resumed stream, every message after the `received` the target counted; false if that stream broke meanwhile. */
  private async resend(call: Call, received: number): Promise<boolean> {
    this.log.ack(received);
    for (const entry of this.log.after(received)) {
      if (call.write(entry.message)) continue;
      let drained = false;
      call.once('drain', () => {
        drained = true;
        this.notify();
      });
      await this.wakeups.until(() => drained || this.attemptError !== null || this.closed, () => {});
      if (!drained) return false;
    }
    this.resumes.resentMessages = this.log.resentMessages;
    this.resumes.resentBytes = this.log.resentBytes;
    return this.attemptError === null;
  }

  markPointOfNoReturn(): void {
    this.pointOfNoReturnPassed = true;
  }

  abort(reason: string, cancelled = false): void {
    if (this.closed) return;
    try {
      this.send({ abort: { reason, cancelled } });
    } catch {
      // The stream is already gone; the target discards on its own.
    }
    this.close();
  }

  close(): void {
    this.pinger.cancel();
    if (this.closed) return;
    this.closed = true;
    this.log.clear();
    this.notify();
    try {
      this.call.end();
    } catch {
      // Already closed.
    }
  }

  private onMessage(message: TargetMessage): void {
    this.lastHeardMs = this.clock.now();
    switch (message.body) {
      case 'progress':
        this.acknowledged = true;
        this.progress = message.progress as Progress;
        this.log.ack(Number(this.progress.messagesReceived ?? 0));
        this.onProgress?.();
        break;
      case 'resumed':
        if (this.reconnecting) this.resumed = message.resumed as InstanceType<typeof pb.Resumed>;
        else this.fail(new InvalidStateError('the target sent Resumed on a stream that was not resumed', { reason: 'PROTOCOL_VIOLATION' }));
        break;
      case 'stopRequest':
        if (!this.closed) this.onStopRequest?.(message.stopRequest as StopRequest);
        break;
      case 'commitResult':
        // Only an answer to a commit we sent counts.
        if (this.commitDigestSent !== '') this.commitResult = message.commitResult as CommitResult;
        else this.fail(new InvalidStateError('the target sent a commit result before any commit', { reason: 'PROTOCOL_VIOLATION' }));
        break;
      case 'activated':
        if (this.pointOfNoReturnPassed) this.activated = message.activated as Activated;
        else this.fail(new InvalidStateError('the target reported an activation before the commit', { reason: 'PROTOCOL_VIOLATION' }));
        break;
      case 'error': {
        const e = message.error!;
        this.targetEnded = true;
        // A target that predates TargetError.reason sends none: the class's default stands.
        const reason = e.reason ?? '';
        this.fail(fromStatus(e.code ?? 2, e.message ?? '', `target ${this.options.address}`, { reason: isErrorReason(reason) ? reason : undefined }));
        break;
      }
      case 'pageRequest':
        this.onPageRequest?.(message.pageRequest?.pages ?? [], message.pageRequest?.resend === true);
        break;
      case 'pong':
        this.rttMs = smoothRttMs(this.rttMs, this.clock.now() - (message.pong?.sentMs ?? 0));
        break;
    }
    this.notify();
  }

  /**
   * Sent messages the target has not counted, and nothing heard from it for STALL_MS more than
   * twice what they take at the bandwidth limit (a 4 MiB chunk takes 8 s at 0.5 MB/s): the link
   * stalled; drop the stream and resume.
   */
  private checkStall(): void {
    // The throughput the target acknowledged over the last ping interval, smoothed; until measured, 1 MB/s.
    const now = this.clock.now();
    if (now > this.ackedAtMs) {
      const sample = ((this.log.ackedBytes - this.ackedBytesThen) * 1000) / (now - this.ackedAtMs);
      if (sample > 0) this.ackedRate = this.ackedRate === 0 ? sample : 0.8 * this.ackedRate + 0.2 * sample;
      [this.ackedBytesThen, this.ackedAtMs] = [this.log.ackedBytes, now];
    }
    const rate = Math.min(this.rateBytesPerSec || Infinity, this.ackedRate || STALL_RATE_UNKNOWN);
    const sendingMs = (2_000 * this.log.bytes) / rate;
    if (this.reconnecting || this.closed || this.log.pending === 0 || this.clock.now() - this.lastHeardMs < STALL_MS + sendingMs) return;
    const call = this.call;
    this.broken(new UnavailableError(`the transfer stream to ${this.options.address} stalled: nothing from the target for ${STALL_MS} ms with ${this.log.pending} messages not yet counted`));
    try {
      call.cancel();
    } catch {
      // Gone already.
    }
  }

  private startPings(): Timer {
    let inFlight = false;
    const ping = () => {
      if (inFlight || this.closed) return;
      inFlight = true;
      const sentMs = this.clock.now();
      this.options
        .ping()
        .then(() => (this.rttMs = smoothRttMs(this.rttMs, this.clock.now() - sentMs)))
        .catch(() => {})
        .finally(() => (inFlight = false));
    };
    const timer = this.clock.interval(this.options.pingIntervalMs, () => {
      ping();
      this.checkStall();
    });
    ping();
    return timer;
  }
}
