// `vmmigrate migrate`: starts a migration on the source agent and watches it to its end (a live
// bar on a terminal, a line per phase otherwise); a job in doubt is said once, with how to
// resolve it, and waited for; Ctrl-C cancels the job and keeps watching, a second Ctrl-C stops
// waiting.

import cliProgress from 'cli-progress';
import { controlServiceV2, grpc, pb2 } from '../shared/transport/grpc.js';
import { CallError, errorLine, EXIT, stream } from './calls.js';
import { failureLine, jobEnded, type JobMessage, messageJson, methodValue, methodWord, phaseWord, policyValue, progressLine, progressView, summaryLines } from './views.js';
import type { Session } from './session.js';
import { dryRun } from './estimate.js';
import { InDoubtNotes } from './in-doubt.js';

export interface MigrateOptions {
  to: string;
  /** Left out: the agent takes one the guest's driver can carry out. */
  method?: string;
  downtimeLimitMs?: number;
  maxBandwidth?: number;
  policy?: string;
  maxDuration?: number;
  /** commander's --no-hybrid: false when given. */
  hybrid?: boolean;
  /** commander's --no-final-approach: false when given. */
  finalApproach?: boolean;
  /** qemu-native: switch to post-copy. */
  postcopy?: boolean;
  wait: boolean;
  /** Estimate each method's cost instead (EstimateMigration); nothing is migrated. */
  dryRun?: boolean;
  /** --dry-run: how long the agent samples the guest. */
  sampleMs?: number;
}

/**
 * How a running migration is shown: a live bar on a terminal, one line per phase change when
 * stdout is a file or pipe, nothing with --json (its one document comes at the end).
 */
class ProgressDisplay {
  private bar: cliProgress.SingleBar | null = null;
  private lastPhase = '';

  constructor(private readonly mode: 'bar' | 'lines' | 'quiet') {}

  update(job: JobMessage): void {
    const phase = phaseWord(job.phase);
    if (phase === 'done' || this.mode === 'quiet') return;
    const v = progressView(job);
    if (this.mode === 'lines') {
      if (phase !== this.lastPhase) process.stdout.write(`${progressLine(job)}\n`);
    } else if (this.bar === null) {
      this.bar = new cliProgress.SingleBar(
        { stream: process.stdout, format: '{phase} [{bar}] {percentage}% {label} | {remaining} | {throughput} | {downtime}', barsize: 20, hideCursor: true, fps: 5 },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(100, Math.round(v.percent), { ...v, phase: v.phase.padEnd(13) });
    } else {
      this.bar.update(Math.round(v.percent), { ...v, phase: v.phase.padEnd(13) });
    }
    this.lastPhase = phase;
  }

  /** A message on stderr that does not garble the bar. */
  note(line: string): void {
    process.stderr.write(this.bar !== null ? `\n${line}\n` : `${line}\n`);
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}

/** Exit code of a process ended by Ctrl-C that stopped waiting (128 + SIGINT). */
const EXIT_INTERRUPTED = 130;

export async function migrate(session: Session, guestId: string, opts: MigrateOptions): Promise<number> {
  if (opts.dryRun) return dryRun(session, guestId, opts);
  const request = pb2.StartMigrationRequest.create({
    guestId,
    targetAddress: opts.to,
    method: methodValue(opts.method),
    downtimeLimitMs: opts.downtimeLimitMs ?? 0,
    maxBandwidthBytesPerSec: opts.maxBandwidth ?? 0,
    nonConvergencePolicy: policyValue(opts.policy),
    maxDurationMs: opts.maxDuration ?? 0,
    logOnlyCatchUp: opts.hybrid === false,
    noFinalApproach: opts.finalApproach === false,
    nativePostcopy: opts.postcopy === true,
  });
  const started = await session.call(controlServiceV2.startMigration, request, `starting the migration of guest '${guestId}' to ${opts.to}`);
  const jobId = started.jobId;
  // The method the agent took (its default for the guest's driver when none was named).
  const method = started.job?.method ? methodWord(started.job.method) : (opts.method ?? 'the agent\'s default');
  if (!opts.wait) {
    session.document({ jobId });
    session.say(`Migration job ${jobId} started (guest '${guestId}' to ${opts.to}); follow it with 'vmmigrate status ${jobId}'.`);
    return EXIT.ok;
  }
  session.say(`Migration job ${jobId} started: guest '${guestId}' from ${session.options.agent} to ${opts.to} (${method}). Ctrl-C cancels it.`);
  const display = new ProgressDisplay(session.options.json ? 'quiet' : process.stdout.isTTY ? 'bar' : 'lines');
  let watchCall: grpc.ClientReadableStream<unknown> | null = null;
  let interrupts = 0;
  // Ctrl-C: ask the agent to cancel (the guest stays on the source) and keep watching until the
  // job ends, so the report says how it ended. A second Ctrl-C stops waiting.
  const onInterrupt = () => {
    interrupts++;
    if (interrupts > 1) {
      watchCall?.cancel();
      return;
    }
    display.note(`vmmigrate: cancelling job ${jobId}; waiting for it to end (Ctrl-C again to stop waiting)`);
    session.call(controlServiceV2.cancelJob, pb2.CancelJobRequest.create({ jobId }), `cancelling job ${jobId}`).then(
      () => {},
      (error: unknown) => display.note(errorLine(error, session.options.agent)),
    );
  };
  process.on('SIGINT', onInterrupt);
  let last: JobMessage | null = null;
  const inDoubt = new InDoubtNotes(jobId);
  try {
    // A snapshot first (the job as it is), then phase, round and progress events, then the end.
    const events = stream(session.control(), controlServiceV2.watchJob, pb2.WatchJobRequest.create({ jobId, intervalMs: 250 }), `watching job ${jobId} on ${session.options.agent}`, (c) => (watchCall = c));
    for await (const event of events) {
      if (event.job) last = event.job;
      if (last === null) continue;
      display.update(last);
      // In doubt, the job waits for the target's decision: say so (once), and wait with it.
      for (const line of inDoubt.next(last)) display.note(line);
    }
  } catch (error) {
    display.stop();
    if (interrupts > 1 && error instanceof CallError && error.code === grpc.status.CANCELLED) {
      process.stderr.write(`vmmigrate: stopped waiting; job ${jobId} may still be ending: 'vmmigrate status ${jobId}' shows it\n`);
      return EXIT_INTERRUPTED;
    }
    throw error;
  } finally {
    process.off('SIGINT', onInterrupt);
    display.stop();
  }
  // The stream ends after the job's final event; should it end early, ask once more.
  if (last === null || !jobEnded(last)) {
    last = await session.call(controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), `getting job ${jobId}`);
  }
  session.document(messageJson(last));
  session.say('', ...summaryLines(last));
  if (last.state === pb2.JobState.JOB_STATE_SUCCEEDED) return EXIT.ok;
  if (session.options.json) process.stderr.write(`${failureLine(last)}\n`);
  return EXIT.failed;
}
