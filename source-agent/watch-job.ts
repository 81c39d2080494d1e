// WatchJob: a job's events as a server stream. Phase and final events always go; progress and
// round events are skipped while the watcher has not read the previous ones, so that a slow
// reader never makes the agent buffer without bound.

import { invalidField } from '../shared/errors.js';
import type { MigrationPhase, MigrationStats } from '../shared/stats.js';
import { type grpc, pb } from '../shared/transport/grpc.js';
import type { SourceMigration } from './migration.js';
import { failStream } from '../shared/transport/handlers.js';

/** Progress events at most this often, whatever the watcher asks. */
const WATCH_INTERVAL_MS_MIN = 20;
const WATCH_INTERVAL_MS_DEFAULT = 200;
/** A watcher may ask for progress at most this rarely (a timer over 2^31 ms would fire at once). */
const WATCH_INTERVAL_MS_MAX = 60_000;

type Job = InstanceType<typeof pb.Job>;

export function jobMessage(job: SourceMigration): Job {
  const stats: MigrationStats = job.isOver() ? job.stats : job.refreshStats();
  return pb.Job.create({
    jobId: job.id,
    guestId: job.request.guestId,
    targetAddress: job.request.targetAddress,
    stats: { ...stats },
    startedAtMs: job.startedAtMs,
  });
}

/**
 * The progress interval a watcher asked for: 0 is the default, less than the minimum is raised to
 * it, more than WATCH_INTERVAL_MS_MAX is refused (field interval_ms).
 */
export function watchIntervalMs(requestedMs: number): number {
  if (requestedMs > WATCH_INTERVAL_MS_MAX) {
    throw invalidField('interval_ms', `intervalMs ${requestedMs}: expected at most ${WATCH_INTERVAL_MS_MAX} (0: every ${WATCH_INTERVAL_MS_DEFAULT} ms)`, { limit: WATCH_INTERVAL_MS_MAX });
  }
  return Math.max(WATCH_INTERVAL_MS_MIN, requestedMs || WATCH_INTERVAL_MS_DEFAULT);
}

/** Streams `job`'s events on `call` until the job ends or the watcher goes away. */
export function watchJob(call: grpc.ServerWritableStream<InstanceType<typeof pb.WatchJobRequest>, InstanceType<typeof pb.JobEvent>>, job: SourceMigration): void {
  let intervalMs: number;
  try {
    intervalMs = watchIntervalMs(call.request.intervalMs);
  } catch (error) {
    failStream(call, error);
    return;
  }
  let backlogged = false;
  call.on('drain', () => (backlogged = false));
  const send = (kind: string, message = '') => {
    if ((kind === 'progress' || kind === 'round') && backlogged) return;
    if (!call.write(pb.JobEvent.create({ job: jobMessage(job), kind, message }))) backlogged = true;
  };
  const onPhase = (phase: MigrationPhase) => send('phase', phase);
  const onRound = (what: string) => send('round', what);
  const timer = setInterval(() => send('progress'), intervalMs);
  const stop = () => {
    clearInterval(timer);
    job.off('phase', onPhase);
    job.off('round', onRound);
  };
  const finish = () => {
    stop();
    const s = job.stats.status;
    send(s === 'completed' ? 'completed' : s === 'cancelled' ? 'cancelled' : 'failed', job.stats.error);
    call.end();
  };
  job.on('phase', onPhase);
  job.on('round', onRound);
  call.on('cancelled', () => {
    stop();
    job.off('end', finish);
  });
  send('progress');
  if (job.isOver()) finish();
  else job.once('end', finish);
}
