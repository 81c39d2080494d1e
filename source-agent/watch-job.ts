// WatchJob: a job's events as a server stream. Phase and final events always go; progress and
// round events are skipped while the watcher has not read the previous ones, so that a slow
// reader never makes the agent buffer without bound.

import type { MigrationPhase, MigrationStats } from '../shared/stats.js';
import { type grpc, pb } from '../shared/transport/grpc.js';
import type { SourceMigration } from './migration.js';

/** Progress events at most this often, whatever the watcher asks. */
const WATCH_INTERVAL_MS_MIN = 20;
const WATCH_INTERVAL_MS_DEFAULT = 200;

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

/** Streams `job`'s events on `call` until the job ends or the watcher goes away. */
export function watchJob(call: grpc.ServerWritableStream<InstanceType<typeof pb.WatchJobRequest>, InstanceType<typeof pb.JobEvent>>, job: SourceMigration): void {
  const intervalMs = Math.max(WATCH_INTERVAL_MS_MIN, call.request.intervalMs || WATCH_INTERVAL_MS_DEFAULT);
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
