// Fakes for the source side's cores, so that a method, a stream or the lifecycle runs without gRPC
// and without a second process: a transfer channel that records what it is given and lets the
// test play the target, a guest whose recorder and pages the test scripts, and a method context.

import { pino } from 'pino';
import type { ManualClock } from '../../shared/clock.js';
import type { CheckpointChunk, GuestDescription, GuestState, LogRecorder, PageAccess, RecordingStart, RecordingStats, SealedUnit, SourceGuest } from '../../shared/driver/types.js';
import { PAGE_BYTES } from '../../shared/driver/types.js';
import { AbortedError, UnavailableError, UnimplementedError } from '../../shared/errors.js';
import { ClockOffset } from '../../source-agent/clock-offset.js';
import { type PackedMessage, packMessage, type PayloadBody, PROTOCOL_VERSION } from '../../shared/protocol.js';
import { emptyStats, type MigrationMethod, type MigrationPhase, type MigrationStats } from '../../shared/stats.js';
import { pb, streamByteCounter } from '../../shared/transport/grpc.js';
import type { Activated, CommitResult, ControlBody, Progress, StopRequest, TransferChannel } from '../../source-agent/channel.js';
import type { MethodContext, MigrationRequest, TargetWindows } from '../../source-agent/methods/method.js';
import type { TargetPeer } from '../../source-agent/peer.js';
import { FailableWaits } from '../../source-agent/wait.js';

export const quietLog = pino({ level: 'silent' });

/** A transfer channel whose far end is the test: it records what is sent and written. */
export class FakeChannel extends FailableWaits implements TransferChannel {
  progress: Progress = pb.Progress.create();
  acknowledged = false;
  commitResult: CommitResult | null = null;
  activated: Activated | null = null;
  commitDigestSent = '';
  rttMs = 0;
  onStopRequest: ((request: StopRequest) => void) | null = null;
  onPageRequest: ((pages: number[], resend: boolean) => void) | null = null;
  onProgress: (() => void) | null = null;
  /** Control messages sent, in order. */
  readonly sent: ControlBody[] = [];
  /** Payload messages written, in order, with their raw sizes. */
  readonly written: Array<{ body: PayloadBody; rawBytes: number; wireBytes: number; rateBytesPerSec: number }> = [];
  pointOfNoReturn = false;
  closed = false;
  abortReason = '';
  readonly resumes = { resumes: 0, resentMessages: 0, resentBytes: 0, reconnectingMs: 0 };
  private readonly packed = new Map<PackedMessage, PayloadBody>();

  constructor(clock: ManualClock, signal: AbortSignal = new AbortController().signal) {
    super(clock, signal);
  }

  /** Plays the target: merges `fields` into its progress report and wakes the waits. */
  report(fields: Partial<Progress>): void {
    this.acknowledged = true;
    this.progress = pb.Progress.create({ ...this.progress, ...fields } as never);
    this.onProgress?.();
    this.notify();
  }

  /** Plays the target asking to stop; returns the decision sent back. */
  requestStop(remainingUnits: number, remainingUnitsAllowed: number): InstanceType<typeof pb.StopDecision> | undefined {
    const before = this.sent.length;
    this.onStopRequest?.(pb.StopRequest.create({ remainingUnits, remainingUnitsAllowed }));
    this.notify();
    const decision = this.sent.slice(before).find((b) => b.stopDecision);
    return decision?.stopDecision as InstanceType<typeof pb.StopDecision> | undefined;
  }

  writtenOf(kind: PayloadBody['kind']): Array<{ body: PayloadBody; rawBytes: number }> {
    return this.written.filter((w) => w.body.kind === kind);
  }

  send(body: ControlBody): void {
    if (this.closed) return;
    if (body.commit) {
      this.commitDigestSent = body.commit.digest ?? '';
      this.pointOfNoReturn = true;
    }
    this.sent.push(body);
  }

  async packAsync(body: PayloadBody, raw: Uint8Array): Promise<PackedMessage> {
    return this.pack(body, raw);
  }

  pack(body: PayloadBody, raw: Uint8Array): PackedMessage {
    const message = packMessage(body, raw, false);
    this.packed.set(message, body);
    return message;
  }

  async write(message: PackedMessage, rateBytesPerSec: number): Promise<void> {
    if (this.closed) throw this.error ?? new AbortedError('the transfer stream was closed');
    const body = this.packed.get(message);
    if (body === undefined) throw new Error('write of a message this channel did not pack');
    this.packed.delete(message);
    this.written.push({ body, rawBytes: message.rawBytes, wireBytes: message.dataBytes, rateBytesPerSec });
  }

  markPointOfNoReturn(): void {
    this.pointOfNoReturn = true;
  }

  abort(reason: string, _cancelled?: boolean): void {
    this.abortReason = reason;
    this.close();
  }

  close(): void {
    this.closed = true;
  }
}

/** A log recorder the test scripts: a checkpoint of `chunkCount` chunks, and units the test seals. */
export class FakeRecorder implements LogRecorder {
  recording = false;
  private readonly queue: SealedUnit[] = [];
  private waiter: (() => void) | null = null;
  private sequence = 100;
  unitsRecorded = 0;
  logBytes = 0;
  finalSealed = false;

  constructor(
    private readonly chunkCount = 4,
    private readonly chunkBytes = 4096,
  ) {}

  startRecording(): RecordingStart {
    this.recording = true;
    return { firstSequence: this.sequence, position: 0 };
  }

  async *liveCheckpoint(): AsyncIterable<CheckpointChunk> {
    for (let index = 0; index < this.chunkCount; index++) {
      yield { index, final: index === this.chunkCount - 1, bytes: new Uint8Array(this.chunkBytes).fill(index + 1), memoryBytesCovered: this.chunkBytes };
    }
  }

  /** Seals `count` units of `bytes` each (the last one final if `final`). */
  seal(count: number, bytes = 100, final = false): void {
    for (let i = 0; i < count; i++) {
      const isFinal = final && i === count - 1;
      this.queue.push({ sequence: this.sequence++, bytes: new Uint8Array(bytes).fill(7), guestNs: 10e6, eventCount: 1, final: isFinal });
      this.unitsRecorded++;
      this.logBytes += bytes;
      if (isFinal) this.finalSealed = true;
    }
    this.waiter?.();
  }

  async nextSealedUnit(signal?: AbortSignal): Promise<SealedUnit | null> {
    for (;;) {
      const unit = this.queue.shift();
      if (unit !== undefined) return unit;
      if (!this.recording || this.finalSealed) return null;
      if (signal?.aborted) throw signal.reason as Error;
      await new Promise<void>((resolve) => {
        const onAbort = () => resolve();
        signal?.addEventListener('abort', onAbort, { once: true });
        this.waiter = () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        };
      });
      this.waiter = null;
    }
  }

  recordingStats(): RecordingStats {
    const bytesQueued = this.queue.reduce((sum, u) => sum + u.bytes.length, 0);
    return { unitsRecorded: this.unitsRecorded, logBytes: this.logBytes, unitsQueued: this.queue.length, bytesQueued, stallMs: 0 };
  }

  stopRecording(): void {
    this.recording = false;
    this.queue.length = 0;
    this.waiter?.();
  }
}

/** Page access whose dirty sets the test scripts, one per fetch (then none). */
export class FakePages implements PageAccess {
  tracking = false;
  readonly dirtySets: number[][] = [];

  constructor(readonly pageCount: number) {}

  startDirtyTracking(): void {
    this.tracking = true;
  }
  stopDirtyTracking(): void {
    this.tracking = false;
  }
  fetchAndClearDirty(): Uint32Array {
    return Uint32Array.from(this.dirtySets.shift() ?? []);
  }
  readPages(_firstPage: number, count: number, out: Uint8Array): void {
    out.fill(0, 0, count * PAGE_BYTES);
  }
  /** One byte per page: its number's low byte (enough for the counters under test). */
  encodePages(pages: Uint32Array): Uint8Array {
    return Uint8Array.from(pages, (p) => p & 0xff);
  }
}

/** A guest with the capabilities given: a recorder, pages, both or neither. */
export class FakeGuest implements SourceGuest {
  state: GuestState = 'running';
  throttle = 1;
  digests = 0;
  discarded = false;
  resumed = 0;

  constructor(
    readonly id: string,
    readonly recorder?: FakeRecorder,
    readonly pages?: FakePages,
    private readonly memoryBytes = 64 * 2 ** 20,
  ) {}

  get pagesMissing(): number {
    return 0;
  }

  describe(): GuestDescription {
    return { id: this.id, driver: 'fake', memoryBytes: this.memoryBytes, vcpus: 1, unitMs: 10, state: this.state, machineConfig: new Uint8Array(0), summary: 'fake' };
  }
  async suspend(): Promise<void> {
    this.state = 'suspended';
    // The suspend seals the recording's last unit.
    if (this.recorder?.recording) this.recorder.seal(1, 100, true);
  }
  resume(): void {
    this.state = 'running';
    this.resumed++;
  }
  machineState(): Uint8Array {
    return new Uint8Array(64).fill(9);
  }
  setThrottle(factor: number): void {
    this.throttle = factor;
  }
  discard(): void {
    this.state = 'discarded';
    this.discarded = true;
  }
  digest(): string {
    this.digests++;
    return '0123456789abcdef';
  }
}

export interface ContextRecord {
  phases: MigrationPhase[];
  rounds: string[];
  opened: Array<{ firstSequence?: number }>;
}

/** A method context over `channel` and `clock`, recording phases, rounds and opens. */
export function methodContext(
  method: MigrationMethod,
  guest: SourceGuest,
  channel: FakeChannel,
  clock: ManualClock,
  overrides: { request?: Partial<MigrationRequest>; windows?: Partial<TargetWindows>; signal?: AbortSignal; targetCapabilities?: string[] } = {},
): { ctx: MethodContext; record: ContextRecord; stats: MigrationStats; suspend: () => Promise<void> } {
  const record: ContextRecord = { phases: [], rounds: [], opened: [] };
  const stats = emptyStats(method, guest.describe().memoryBytes);
  stats.unitMs = 10;
  const startMs = clock.now();
  let suspendedAtMs = 0;
  let suspended = false;
  let isOpen = false;
  const ctx: MethodContext = {
    guest,
    clock,
    stats,
    log: quietLog,
    signal: overrides.signal ?? new AbortController().signal,
    request: { guestId: guest.id, targetAddress: 'fake:0', method, downtimeLimitMs: 300, maxBandwidthBytesPerSec: 0, policy: 'abort', maxDurationMs: 600_000, ...overrides.request },
    windows: { chunks: 16, units: 4096, unitBytes: 64 * 2 ** 20, ...overrides.windows },
    timings: { convergenceWindowMs: 2_000, monitorIntervalMs: 250, activationTimeoutMs: 60_000, resumeWindowMs: 0 },
    throughputBytesPerSec: 0,
    targetCapabilities: overrides.targetCapabilities ?? [],
    openNativeRelay: () => {
      throw new UnimplementedError('the fake context carries no hypervisor stream');
    },
    open: (fields = {}) => {
      isOpen = true;
      record.opened.push(fields);
    },
    get channel() {
      if (!isOpen) throw new Error('channel used before open');
      return channel;
    },
    get suspended() {
      return suspended;
    },
    get suspendedAtMs() {
      return suspendedAtMs;
    },
    setPhase: (phase) => {
      stats.phase = phase;
      record.phases.push(phase);
    },
    round: (message) => record.rounds.push(message),
    progress: () => {
      stats.unitsReplayed = channel.progress.unitsReplayed;
      stats.remainingUnits = Math.max(0, (guest.recorder?.recordingStats().unitsRecorded ?? 0) - stats.unitsReplayed);
    },
    elapsedMs: () => clock.now() - startMs,
    markPointOfNoReturn: () => channel.markPointOfNoReturn(),
    downtimeTo: (_resumedAtTargetMs, resumeToReplyMs) => clock.now() - suspendedAtMs - resumeToReplyMs,
  };
  // The lifecycle's suspend sequence, for tests that run catchUp then finish.
  const suspend = async () => {
    stats.phase = 'stop-and-copy';
    suspendedAtMs = clock.now();
    suspended = true;
    await guest.suspend();
  };
  return { ctx, record, stats, suspend };
}

/** The target agent's unary side, played by the test; the transfer it opens is a FakeChannel. */
export class FakePeer implements TargetPeer {
  readonly address = 'fake-target:7401';
  readonly wireBytes = streamByteCounter();
  capacityReply = pb.Capacity.create({ driver: 'fake', memoryBytesFree: 2 ** 40, capabilities: ['checkpoint-replay', 'page-restore', 'postcopy-resume'] });
  reserveReply = pb.ReserveResponse.create({ protocolVersion: PROTOCOL_VERSION, reservationId: 'reservation-1', chunkWindow: 16, unitWindow: 4096, unitWindowBytes: 64 * 2 ** 20 });
  readonly reserved: Array<InstanceType<typeof pb.ReserveRequest>> = [];
  readonly released: Array<{ reservationId: string; reason: string }> = [];
  channel: FakeChannel | null = null;
  closed = false;
  readonly clockOffset = new ClockOffset();
  /** The migration ids outcome queries asked about, in order. */
  readonly outcomeQueries: string[] = [];
  /** How the target answers an outcome query (default: unreachable). */
  outcome: (migrationId: string) => Promise<InstanceType<typeof pb.OutcomeResponse>> = async () => {
    throw new UnavailableError('the fake target does not answer outcome queries');
  };

  constructor(private readonly clock: ManualClock) {}

  redialed = 0;
  redial(): void {
    this.redialed++;
  }

  queryOutcome(migrationId: string): Promise<InstanceType<typeof pb.OutcomeResponse>> {
    this.outcomeQueries.push(migrationId);
    return this.outcome(migrationId);
  }

  async capacity(): Promise<InstanceType<typeof pb.Capacity>> {
    return this.capacityReply;
  }
  async reserve(request: InstanceType<typeof pb.ReserveRequest>): Promise<InstanceType<typeof pb.ReserveResponse>> {
    this.reserved.push(request);
    return this.reserveReply;
  }
  async release(reservationId: string, reason: string): Promise<void> {
    this.released.push({ reservationId, reason });
  }
  openTransfer(signal: AbortSignal): TransferChannel {
    this.channel = new FakeChannel(this.clock, signal);
    return this.channel;
  }
  close(): void {
    this.closed = true;
  }
}
