// WatchJob (Control v2): a snapshot first (the job now, the phases it passed), then, on resume, the
// kept events after the watcher's last sequence, then the events as they come until the end.
// Progress events go at the watcher's interval and are skipped, never queued, while it reads
// slowly; the others are never skipped (a watch of one job carries a few dozen of them).

import { pb2, type grpc } from '../../shared/transport/grpc.js';
import type { JobHistory, JobHistoryEvent } from '../job-history.js';
import type { SourceMigration } from '../migration.js';
import { phaseEnum } from './enums.js';
import { incomingJobMessage, sourceJobMessage } from './views.js';
import type { IncomingJob } from '../../shared/incoming-job.js';

type JobEvent = InstanceType<typeof pb2.JobEvent>;
type WatchCall = grpc.ServerWritableStream<InstanceType<typeof pb2.WatchJobRequest>, JobEvent>;

const KIND = pb2.JobEventKind;
const EVENT_KIND: Record<JobHistoryEvent['kind'], number> = { phase: KIND.JOB_EVENT_KIND_PHASE, round: KIND.JOB_EVENT_KIND_ROUND, end: KIND.JOB_EVENT_KIND_END };

/** Writes events; progress is skipped while the watcher is behind. */
class EventWriter {
  private backlogged = false;
  ended = false;

  constructor(private readonly call: WatchCall) {
    call.on('drain', () => (this.backlogged = false));
  }

  write(event: JobEvent): void {
    if (this.ended) return;
    if (event.kind === KIND.JOB_EVENT_KIND_PROGRESS && this.backlogged) return;
    if (!this.call.write(event)) this.backlogged = true;
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.call.end();
  }
}

export function watchSourceJob(call: WatchCall, job: SourceMigration, history: JobHistory, intervalMs: number): void {
  const writer = new EventWriter(call);
  const event = (kind: number, sequence: number, fields: Partial<JobEvent> = {}) => pb2.JobEvent.create({ sequence, kind, job: sourceJobMessage(job, history), ...fields });
  const fromHistory = (e: JobHistoryEvent) => {
    writer.write(event(EVENT_KIND[e.kind], e.sequence, { phase: phaseEnum(e.phase), message: e.message }));
    if (e.kind === 'end') stop();
  };
  const after = Number(call.request.afterSequence ?? 0);
  const { events, gap } = history.since(after);
  const snapshotNote = after > 0 && gap ? `events after ${after} were no longer kept: resumed from the snapshot` : '';
  writer.write(event(KIND.JOB_EVENT_KIND_SNAPSHOT, history.lastSequence, { phase: phaseEnum(job.stats.phase), message: snapshotNote }));
  // One synchronous block: no event can slip in between the snapshot, the replay and the subscription.
  let unsubscribe = () => {};
  let timer: NodeJS.Timeout | undefined;
  const stop = () => {
    unsubscribe();
    clearInterval(timer);
    writer.end();
  };
  if (after > 0) for (const e of events) fromHistory(e);
  if (writer.ended) return;
  if (job.isOver()) {
    // Ended before this watch: the snapshot says how; the end event closes the stream.
    writer.write(event(KIND.JOB_EVENT_KIND_END, history.lastSequence, { phase: phaseEnum(job.stats.phase), message: job.stats.error }));
    return stop();
  }
  unsubscribe = history.subscribe(fromHistory);
  timer = setInterval(() => writer.write(event(KIND.JOB_EVENT_KIND_PROGRESS, history.lastSequence)), intervalMs);
  call.on('cancelled', stop);
}

/**
 * An incoming job (on the target): its events are its phases, numbered in order, and its end;
 * sampled at the watcher's interval.
 */
export function watchIncomingJob(call: WatchCall, read: () => IncomingJob | undefined, intervalMs: number): void {
  const writer = new EventWriter(call);
  let sent = Number(call.request.afterSequence ?? 0);
  const sequenceOf = (job: IncomingJob) => job.phasesPassed.length + (job.state === 'running' ? 0 : 1);
  const tick = (first: boolean) => {
    const job = read();
    if (job === undefined) return stop();
    const message = incomingJobMessage(job);
    if (first) writer.write(pb2.JobEvent.create({ sequence: sequenceOf(job), kind: KIND.JOB_EVENT_KIND_SNAPSHOT, job: message, phase: phaseEnum(job.phase) }));
    // Phases entered since the last one sent (on resume: since the watcher's last sequence).
    for (let i = first ? (sent > 0 ? sent : job.phasesPassed.length) : sent; i < job.phasesPassed.length; i++) {
      writer.write(pb2.JobEvent.create({ sequence: i + 1, kind: KIND.JOB_EVENT_KIND_PHASE, job: message, phase: phaseEnum(job.phasesPassed[i]) }));
    }
    sent = job.phasesPassed.length;
    if (job.state !== 'running') {
      writer.write(pb2.JobEvent.create({ sequence: sequenceOf(job), kind: KIND.JOB_EVENT_KIND_END, job: message, phase: phaseEnum(job.phase), message: job.error }));
      return stop();
    }
    if (!first) writer.write(pb2.JobEvent.create({ sequence: sent, kind: KIND.JOB_EVENT_KIND_PROGRESS, job: message, phase: phaseEnum(job.phase) }));
  };
  const timer = setInterval(() => tick(false), intervalMs);
  const stop = () => {
    clearInterval(timer);
    writer.end();
  };
  call.on('cancelled', stop);
  tick(true);
}
