// The replay pipeline of a CR/TR transfer (phases 4 and 5): units queue as they arrive, within the
// window the target granted (by count and by bytes); once the checkpoint is restored they replay
// in order, in slices of at most replaySliceMs so that incoming messages get in between; the
// replay rate is measured as they go; and after each progress report the pipeline asks the source
// for stop-and-copy when the switchover is due: the units still queued fit the downtime limit and
// are as few as they will get (shared/convergence.ts switchoverDue).
//
// It sees the replica only through its checkpoint-replay capability, time only through the Clock,
// and the source only through its feedback sink: tests drive it with fakes and a ManualClock.

import type { Logger } from 'pino';
import type { Clock } from '../shared/clock.js';
import { type BacklogSample, SWITCHOVER_WINDOW_MS, switchoverDue } from '../shared/convergence.js';
import type { CheckpointReplayTarget } from '../shared/driver/types.js';
import { LimitExceededError, UnitOrderError } from '../shared/errors.js';
import type { ProgressCounters } from './feedback.js';
import { ReplayRateMeter } from './replay-rate.js';

export const REPLAY_PIPELINE = {
  /**
   * Replay runs at most this long (the unit it is in finishes) before it lets incoming messages
   * in: a sync standby's receipt, which the primary's outputs wait for, waits behind one unit's
   * replay at most (with 10 ms, two compile units on a busy host: the receipt lag doubled).
   */
  replaySliceMs: 2,
  /** Stop requests are at least this far apart (the source answers each with a StopDecision). */
  stopRequestIntervalMs: 50,
  /** While idle, the replica's incremental digest is refreshed at most this often. */
  digestRefreshIntervalMs: 200,
} as const;

export interface QueuedUnit {
  readonly sequence: number;
  /** The unit in the driver's encoding, as the replica's applyUnit takes it. */
  readonly bytes: Uint8Array;
  readonly final: boolean;
}

export interface StopRequest {
  remainingUnits: number;
  remainingUnitsAllowed: number;
}

/** Where the pipeline's messages to the source go. */
export interface ReplayFeedbackSink {
  /** Asks for a progress report: at once when `force`, otherwise when the interval allows. */
  progress(force: boolean): void;
  stopRequest(request: StopRequest): void;
}

export interface ReplayPipelineOptions {
  /** The unit window granted to the source: units and bytes it may have outstanding. */
  unitWindow: number;
  unitWindowBytes: number;
  /** Clock time from which the maximum duration nears and fitting the limit is enough (Infinity: never). */
  switchoverDeadlineMs: number;
  /** A protection's standby asks for no stop until a planned switchover (standby.ts). */
  stopsHeld?: () => boolean;
  /** A sync protection's standby acknowledges each unit's receipt at once (the primary holds its outputs until then). */
  ackReceipt?: () => boolean;
}

export interface ReplayPipelineDeps {
  /** The replica's checkpoint-replay capability. */
  replay: Pick<CheckpointReplayTarget, 'applyUnit'>;
  /** Rehashes what replay wrote, so that the digest at commitment has little left to do. */
  refreshDigest(): void;
  /** Whether units may replay now: the checkpoint is restored and the transfer not over. */
  replaying(): boolean;
  clock: Clock;
  /** Runs `fn` after pending I/O (setImmediate); tests run it when they choose. */
  defer?: (fn: () => void) => void;
  feedback: ReplayFeedbackSink;
  /** A unit failed to replay: the transfer fails, the replica is discarded. */
  onFailure(error: unknown): void;
  /** Called for every unit replayed (metrics). */
  onUnitReplayed?(): void;
  log: Logger;
}

/** Whether to send a stop request now. The source answers each with a StopDecision. */
export function shouldRequestStop(state: {
  replaying: boolean;
  finalReplayed: boolean;
  /** A request was sent and its decision has not come back. */
  requestPending: boolean;
  /** The switchover rule says now (switchoverDue). */
  switchoverDue: boolean;
  sinceLastRequestMs: number;
}): boolean {
  return state.replaying && !state.finalReplayed && !state.requestPending && state.switchoverDue && state.sinceLastRequestMs >= REPLAY_PIPELINE.stopRequestIntervalMs;
}

export class ReplayPipeline {
  private readonly queue: QueuedUnit[] = [];
  private queueBytes = 0;
  private unitsReceived = 0;
  /** A receipt report is queued (ackReceipt). */
  private receiptAckQueued = false;
  private unitsReplayed = 0;
  /** Units dropped because a delta superseded them (counted in unitsReplayed too: the source's window counts units we are done with). */
  private unitsSuperseded = 0;
  /** Units before this sequence are superseded by a delta: dropped when they arrive. */
  private supersededBelow = 0;
  /** The sequence of the last unit received (null: none yet). */
  private lastSequence: number | null = null;
  private finalUnitReplayed = false;
  private finalUnitReceived = false;
  private readonly rate = new ReplayRateMeter();
  /** The replay rate of the units replayed once the stop was granted: the switchover's own. */
  private stopRate: ReplayRateMeter | null = null;
  /** A replay slice is scheduled or running. */
  private sliceScheduled = false;
  private stopRequestPending = false;
  private lastStopRequestMs = Number.NEGATIVE_INFINITY;
  private lastDigestMs = Number.NEGATIVE_INFINITY;
  private readonly defer: (fn: () => void) => void;
  /** The queue's length at each report while replaying, the last window of them (switchoverDue). */
  private readonly backlog: BacklogSample[] = [];

  constructor(
    private readonly options: ReplayPipelineOptions,
    private readonly deps: ReplayPipelineDeps,
  ) {
    this.defer = deps.defer ?? setImmediate;
  }

  get remainingUnits(): number {
    return this.queue.length;
  }

  /** The final unit (sealed at the source's suspend) arrived: the log is complete here. */
  get finalReceived(): boolean {
    return this.finalUnitReceived;
  }

  /** The final unit (sealed at the source's suspend) was replayed: nothing follows. */
  get finalReplayed(): boolean {
    return this.finalUnitReplayed;
  }

  /** The pipeline's share of a progress report. */
  counters(): ProgressCounters {
    return {
      unitsReceived: this.unitsReceived,
      unitsReplayed: this.unitsReplayed,
      remainingUnits: this.queue.length,
      remainingUnitBytes: this.queueBytes,
      replayRate: this.rate.replayRate,
      finalReplayed: this.finalUnitReplayed,
      unitsSuperseded: this.unitsSuperseded,
      stopReplayRate: this.stopRate?.replayRate ?? 0,
    };
  }

  /**
   * A delta as of the boundary before `firstSequence` begins: queued units before it are dropped,
   * and so are such units arriving later (sent before the source knew). The backlog's history
   * restarts: the delta changed it by construction, not by a trend.
   */
  supersede(firstSequence: number): void {
    this.supersededBelow = Math.max(this.supersededBelow, firstSequence);
    let n = 0;
    while (n < this.queue.length && this.queue[n].sequence < firstSequence) {
      this.queueBytes -= this.queue[n].bytes.length;
      n++;
    }
    this.queue.splice(0, n);
    this.unitsSuperseded += n;
    this.unitsReplayed += n;
    this.backlog.length = 0;
    this.deps.feedback.progress(true);
  }

  /**
   * Queues a unit, refused with LimitExceededError if it overflows the window. A unit larger than
   * the byte window is admitted alone (the source sends it only then).
   */
  enqueue(unit: QueuedUnit): void {
    const { unitWindow, unitWindowBytes } = this.options;
    if (this.queue.length + 1 > unitWindow || (this.queue.length > 0 && this.queueBytes + unit.bytes.length > unitWindowBytes)) {
      throw new LimitExceededError(
        `unit ${unit.sequence} overflows the unit window: ${this.queue.length} units / ${this.queueBytes} bytes queued, window ${unitWindow} units / ${unitWindowBytes} bytes`,
        { reason: 'LIMIT_EXCEEDED', metadata: { limit: 'unitWindow', unitWindow, unitWindowBytes } },
      );
    }
    this.checkOrder(unit.sequence);
    this.unitsReceived++;
    if (unit.sequence < this.supersededBelow) {
      this.unitsSuperseded++;
      this.unitsReplayed++;
      this.deps.feedback.progress(false);
      return;
    }
    this.queue.push(unit);
    this.queueBytes += unit.bytes.length;
    if (unit.final) this.finalUnitReceived = true;
    if (this.options.ackReceipt?.() === true) this.ackReceipt();
    this.kick();
  }

  /**
   * A sync standby's receipt, reported at once: once the units that arrived together are all
   * counted (a primary's log batch), with one report, before anything else runs.
   */
  private ackReceipt(): void {
    if (this.receiptAckQueued) return;
    this.receiptAckQueued = true;
    queueMicrotask(() => {
      this.receiptAckQueued = false;
      this.deps.feedback.progress(true);
    });
  }

  /**
   * Units come in sequence order, one after another; the source skips only the units a delta
   * superseded (up to its first sequence). Anything else is refused as it arrives, before it can
   * make the pipeline drop or hold units it should not.
   */
  private checkOrder(sequence: number): void {
    const last = this.lastSequence;
    this.lastSequence = sequence;
    if (last === null || sequence === last + 1 || (sequence > last && sequence <= this.supersededBelow)) return;
    this.lastSequence = last;
    const kind = sequence <= last ? 'duplicate' : 'gap';
    throw new UnitOrderError(`unit ${sequence} out of order: unit ${last} came before it (${kind})`, kind, last + 1, sequence);
  }

  /** Replays every unit queued now, at once (a standby's failover); returns how many. */
  drain(): number {
    const before = this.unitsReplayed;
    while (this.deps.replaying() && this.queue.length > 0) this.replayNext();
    this.deps.feedback.progress(true);
    return this.unitsReplayed - before;
  }

  /** Starts replaying what queued while the checkpoint was restored (call once replaying() holds). */
  start(): void {
    this.kick();
  }

  /** The source answered the pending stop request. */
  stopDecided(granted = false): void {
    this.stopRequestPending = false;
    if (granted) this.stopRate ??= new ReplayRateMeter();
  }

  /** After each progress report: sends the stop request if it is due (see shouldRequestStop). */
  afterReport(nowMs: number, remainingUnitsAllowed: number): void {
    this.sampleBacklog(nowMs);
    if (this.options.stopsHeld?.() === true) return;
    const switchover = switchoverDue({
      remainingUnits: this.queue.length,
      remainingUnitsAllowed,
      backlog: this.backlog,
      nowMs,
      windowMs: SWITCHOVER_WINDOW_MS,
      deadlineNear: nowMs >= this.options.switchoverDeadlineMs,
    });
    const due = shouldRequestStop({
      replaying: this.deps.replaying(),
      finalReplayed: this.finalUnitReplayed,
      requestPending: this.stopRequestPending,
      switchoverDue: switchover.due,
      sinceLastRequestMs: nowMs - this.lastStopRequestMs,
    });
    if (!due) return;
    this.deps.log.debug({ remainingUnits: this.queue.length, remainingUnitsAllowed, why: switchover.reason }, 'asking for stop-and-copy');
    this.stopRequestPending = true;
    this.lastStopRequestMs = nowMs;
    this.deps.feedback.stopRequest({ remainingUnits: this.queue.length, remainingUnitsAllowed });
  }

  /** Keeps the backlog's recent history: one sample per report once replaying, the last window and a bit. */
  private sampleBacklog(nowMs: number): void {
    if (!this.deps.replaying()) return;
    this.backlog.push({ atMs: nowMs, backlogUnits: this.queue.length });
    while (this.backlog.length > 0 && this.backlog[0].atMs < nowMs - 2 * SWITCHOVER_WINDOW_MS) this.backlog.shift();
  }

  /** Schedules a replay slice unless one is scheduled, or reports progress while units only queue. */
  private kick(): void {
    if (this.sliceScheduled || !this.deps.replaying()) {
      this.deps.feedback.progress(false);
      return;
    }
    this.sliceScheduled = true;
    this.defer(() => this.replaySlice());
  }

  /** Replays queued units for up to replaySliceMs, then yields to I/O and comes back if any remain. */
  private replaySlice(): void {
    try {
      this.replayFor(REPLAY_PIPELINE.replaySliceMs);
    } catch (error) {
      // A unit that failed to replay, or a bug: this transfer fails, and nothing else.
      this.sliceScheduled = false;
      this.deps.onFailure(error);
    }
  }

  private replayFor(sliceMs: number): void {
    const { clock } = this.deps;
    const sliceStartMs = clock.now();
    while (this.deps.replaying() && this.queue.length > 0 && clock.now() - sliceStartMs < sliceMs) this.replayNext();
    const idle = this.queue.length === 0;
    if (idle && this.deps.replaying() && !this.finalUnitReplayed && clock.now() - this.lastDigestMs > REPLAY_PIPELINE.digestRefreshIntervalMs) {
      // Idle: keep the incremental digest fresh, so that the one at commitment is quick.
      this.lastDigestMs = clock.now();
      this.deps.refreshDigest();
    }
    this.deps.feedback.progress(idle || this.finalUnitReplayed);
    if (this.deps.replaying() && this.queue.length > 0) this.defer(() => this.replaySlice());
    else this.sliceScheduled = false;
  }

  private replayNext(): void {
    const unit = this.queue.shift()!;
    this.queueBytes -= unit.bytes.length;
    const startMs = this.deps.clock.now();
    const applied = this.deps.replay.applyUnit(unit.bytes);
    this.unitsReplayed++;
    this.deps.onUnitReplayed?.();
    this.rate.record(applied.guestNs, startMs, this.deps.clock.now());
    this.stopRate?.record(applied.guestNs, startMs, this.deps.clock.now());
    if (applied.final) {
      this.finalUnitReplayed = true;
      this.deps.log.info({ unitsReplayed: this.unitsReplayed }, 'final unit replayed');
    }
  }
}
