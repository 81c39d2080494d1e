// One benchmark run of the harness: fresh source and target agent processes, a link emulator
// between them, a guest booted on the source, one migration driven through the Control API v2 and
// sampled with GetJob (the convergence curve) while a WatchJob stream timestamps the phases; then
// everything is stopped. Used by the matrix (harness.ts) and the data-plane benchmark. The record
// keeps the figures and names it always had, read from the v2 job (figuresOf below).

import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { jobEnded, type JobMessage, jobStateWord, messageJson, methodValue, phaseWord, policyValue } from '../cli/views.js';
import { controlServiceV2, grpc, pb2, unary } from '../shared/transport/grpc.js';
import { LINK_PROFILES } from '../shared/transport/link.js';
import { convergenceSeries } from './curve.js';
import { RunProcesses } from './run-processes.js';
import { type DisruptionTerms, isCrtr, type LinkName, type LowerBound, type ProcessCost, type RunRecord, type RunSpec } from './run-record.js';

/** Reads /proc/<pid>/stat; null when that is not possible (not Linux, process gone). */
export function processCost(pid: number): ProcessCost | null {
  try {
    // Fields after the command name (which may hold spaces): state is field 3, minflt 10, utime 14, stime 15.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticksPerSec = 100; // USER_HZ, 100 on every Linux ABI Node supports
    const userMs = (Number(f[11]) * 1000) / ticksPerSec;
    const systemMs = (Number(f[12]) * 1000) / ticksPerSec;
    return { cpuMs: userMs + systemMs, userMs, systemMs, minorFaults: Number(f[7]) };
  } catch {
    return null;
  }
}

function costBetween(a: ProcessCost | null, b: ProcessCost | null): ProcessCost | null {
  if (a === null || b === null) return null;
  return { cpuMs: b.cpuMs - a.cpuMs, userMs: b.userMs - a.userMs, systemMs: b.systemMs - a.systemMs, minorFaults: b.minorFaults - a.minorFaults };
}

export class MethodUnavailableError extends Error {}

/** The figures of a run read from a v2 job (the source's view), under the record's names. */
export interface JobFigures {
  status: string;
  phase: string;
  downtimeMs: number;
  disruptionMs: number;
  disruption: DisruptionTerms;
  totalTimeMs: number;
  transferredBytes: number;
  remainingBytes: number;
  /** Guest memory the checkpoint (pre-copy: round 0; post-copy: the pushed pages) covered. */
  checkpointMemoryBytesCovered: number;
  /** CR/TR: stop requests answered (wait-and-ack rounds); pre-copy: rounds; post-copy: 0. */
  rounds: number;
  /** CR/TR: delta checkpoints sent by the hybrid catch-up. */
  deltaRounds: number;
  remainingUnits: number;
  unitsRecorded: number;
  unitsReplayed: number;
  forced: boolean;
  digestsMatch: boolean;
  /** CR/TR's lower-bound terms at the suspend. */
  stopLogWireBytes: number;
  stopUnitsToReplay: number;
  replayRate: number;
}

export function figuresOf(job: JobMessage): JobFigures {
  const s = job.source ?? {};
  const crtr = s.crtr ?? {};
  const d = s.disruption ?? {};
  const memoryBytes = Number(s.memoryBytes ?? 0);
  // checkpointPercent is covered / memory × 100 as a double: rounding gives the bytes back.
  const covered = Math.round(((s.checkpointPercent ?? 0) * memoryBytes) / 100);
  return {
    status: jobStateWord(job.state),
    phase: phaseWord(job.phase),
    downtimeMs: s.downtimeMs ?? 0,
    disruptionMs: d.disruptionMs ?? 0,
    disruption: {
      sourceStallMs: d.sourceStallMs ?? 0,
      targetStallMs: d.targetStallMs ?? 0,
      throttledMs: d.throttledMs ?? 0,
      lostScheduleMs: d.lostScheduleMs ?? 0,
      unitsDue: Number(d.unitsDue ?? 0),
      unitsRun: Number(d.unitsRun ?? 0),
      windowMs: d.windowMs ?? 0,
    },
    totalTimeMs: s.totalTimeMs ?? 0,
    transferredBytes: Number(s.bytes?.transferredBytes ?? 0),
    remainingBytes: Number(s.remainingBytes ?? 0),
    checkpointMemoryBytesCovered: covered,
    rounds: s.precopy ? (s.precopy.rounds ?? 0) : (crtr.stopRequests ?? 0),
    deltaRounds: crtr.deltaRounds ?? 0,
    remainingUnits: crtr.remainingUnits ?? 0,
    unitsRecorded: crtr.unitsRecorded ?? 0,
    unitsReplayed: crtr.unitsReplayed ?? 0,
    forced: crtr.forced ?? false,
    digestsMatch: (s.sourceDigest ?? '') !== '' && s.sourceDigest === s.targetDigest,
    stopLogWireBytes: Number(crtr.stopLogWireBytes ?? 0),
    stopUnitsToReplay: crtr.stopUnitsToReplay ?? 0,
    // The lower bound's rate: the last units' (replayed after the stop was granted), else the
    // target's recent average (agents that do not report it).
    replayRate: crtr.stopReplayRate || (crtr.replayRate ?? 0),
  };
}

/** The lower bound on CR/TR's downtime from its figures at the suspend and the guest's unit length. */
export function lowerBoundOf(f: Pick<JobFigures, 'stopLogWireBytes' | 'stopUnitsToReplay' | 'replayRate'>, unitMs: number, link: LinkName): LowerBound {
  const profile = link === 'direct' ? LINK_PROFILES.loopback : LINK_PROFILES[link];
  const bw = profile.bandwidthBytesPerSec;
  const logTransferMs = bw > 0 && bw !== Infinity ? (f.stopLogWireBytes / bw) * 1000 : 0;
  const rttMs = profile.rttMs;
  const replayMs = f.replayRate > 0 ? (f.stopUnitsToReplay * unitMs) / f.replayRate : 0;
  return { logTransferMs, rttMs, replayMs, boundMs: logTransferMs + rttMs + replayMs };
}

/**
 * Runs one migration as `spec` says. Throws MethodUnavailableError when the source agent refuses
 * the method as not available (INVALID_ARGUMENT); any other failure is recorded, not thrown.
 */
export async function runOne(spec: RunSpec): Promise<RunRecord> {
  const wallStart = performance.now();
  const processes = new RunProcesses();
  const record: RunRecord = {
    kind: spec.kind,
    profile: spec.profile,
    method: spec.method,
    link: spec.link,
    linkMode: spec.linkMode,
    memoryBytes: spec.memoryBytes,
    repeat: spec.repeat,
    seed: spec.seed,
    downtimeLimitMs: spec.downtimeLimitMs,
    policy: spec.policy,
    disableCompression: spec.disableCompression,
    status: 'error',
    error: '',
    downtimeMs: NaN,
    disruptionMs: NaN,
    disruption: null,
    totalTimeMs: NaN,
    transferredBytes: NaN,
    rounds: 0,
    deltaRounds: 0,
    digestsMatch: false,
    forced: false,
    downtimeLowerBoundMs: null,
    lowerBound: null,
    downtimeOverBound: null,
    phases: [],
    checkpointPhaseMs: null,
    checkpointCost: null,
    wallMs: 0,
    bootMs: 0,
    stats: {},
    curve: [],
    curveMeasure: '',
    curveSource: '',
    linkStats: null,
  };
  let unavailable: MethodUnavailableError | null = null;
  try {
    const { source, target, targetAddress, control: c } = await processes.start(spec);
    const bootStart = performance.now();
    const { guest } = await unary(
      c,
      controlServiceV2.startGuest,
      pb2.StartGuestRequest.create({ id: 'bench-guest', profile: spec.profile, memoryBytes: spec.memoryBytes, environmentSeed: spec.seed }),
      300_000,
      'starting the guest',
    );
    const unitMs = guest?.unitMs ?? 0;
    record.bootMs = performance.now() - bootStart;
    await sleep(spec.warmupMs);

    const t0 = performance.now();
    let jobId: string;
    try {
      ({ jobId } = await unary(
        c,
        controlServiceV2.startMigration,
        pb2.StartMigrationRequest.create({
          guestId: 'bench-guest',
          targetAddress,
          method: methodValue(isCrtr(spec.method) ? 'crtr' : spec.method),
          logOnlyCatchUp: spec.method === 'crtr-log',
          noFinalApproach: isCrtr(spec.method) && spec.noFinalApproach === true,
          downtimeLimitMs: spec.downtimeLimitMs,
          nonConvergencePolicy: policyValue(spec.policy),
          maxDurationMs: spec.maxDurationMs,
          disableCompression: spec.disableCompression,
        }),
        10_000,
        'starting the migration',
      ));
    } catch (error) {
      const e = error as { code?: string; message?: string };
      if (e.code === 'INVALID_ARGUMENT' && /not available/i.test(e.message ?? '')) {
        unavailable = new MethodUnavailableError(e.message ?? 'not available');
        throw unavailable;
      }
      throw error;
    }

    // Phase timestamps from a WatchJob stream (events are pushed as phases change): the phases
    // entered after the snapshot, and `done` at the end event.
    const watch = c.makeServerStreamRequest(
      controlServiceV2.watchJob.path,
      controlServiceV2.watchJob.requestSerialize,
      controlServiceV2.watchJob.responseDeserialize,
      pb2.WatchJobRequest.create({ jobId, intervalMs: 1000 }),
    ) as grpc.ClientReadableStream<InstanceType<typeof pb2.JobEvent>>;
    const costAt: Record<string, { source: ProcessCost | null; target: ProcessCost | null }> = {};
    const { JobEventKind } = pb2;
    watch.on('data', (event: InstanceType<typeof pb2.JobEvent>) => {
      if (event.kind !== JobEventKind.JOB_EVENT_KIND_PHASE && event.kind !== JobEventKind.JOB_EVENT_KIND_END) return;
      const phase = event.kind === JobEventKind.JOB_EVENT_KIND_END ? 'done' : phaseWord(event.phase);
      record.phases.push({ phase, tMs: performance.now() - t0 });
      if (phase === 'checkpoint' || phase === 'log-transfer') costAt[phase] = { source: processCost(source.pid), target: processCost(target.pid) };
    });
    watch.on('error', () => undefined);

    // The curve: GetJob every sampleMs until the job ends (bounded: max duration plus a minute).
    const hardStopMs = spec.maxDurationMs + 60_000;
    let last: JobMessage;
    for (;;) {
      await sleep(spec.sampleMs);
      last = await unary(c, controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), 10_000, 'sampling the job');
      const f = figuresOf(last);
      record.curve.push({
        tMs: Math.round(performance.now() - t0),
        status: f.status,
        phase: f.phase,
        rounds: f.rounds,
        remainingUnits: f.remainingUnits,
        remainingBytes: f.remainingBytes,
        transferredBytes: f.transferredBytes,
        checkpointMemoryBytesCovered: f.checkpointMemoryBytesCovered,
        unitsRecorded: f.unitsRecorded,
        unitsReplayed: f.unitsReplayed,
      });
      if (jobEnded(last)) break;
      if (performance.now() - t0 > hardStopMs) {
        await unary(c, controlServiceV2.cancelJob, pb2.CancelJobRequest.create({ jobId }), 10_000, 'cancelling').catch(() => undefined);
        throw new Error(`the job did not end within ${hardStopMs} ms`);
      }
    }
    watch.cancel();
    const final = figuresOf(last);
    record.stats = messageJson(last);
    record.status = final.status;
    record.error = last.errorMessage ?? '';
    record.downtimeMs = final.downtimeMs;
    record.disruptionMs = final.disruptionMs;
    record.disruption = final.disruption;
    record.totalTimeMs = final.totalTimeMs;
    record.transferredBytes = final.transferredBytes;
    record.rounds = final.rounds;
    record.deltaRounds = final.deltaRounds;
    record.forced = final.forced;
    record.digestsMatch = final.digestsMatch;
    record.checkpointPhaseMs = checkpointPhaseMs(record);
    if (costAt.checkpoint && costAt['log-transfer']) {
      const sourceCost = costBetween(costAt.checkpoint.source, costAt['log-transfer'].source);
      const targetCost = costBetween(costAt.checkpoint.target, costAt['log-transfer'].target);
      if (sourceCost !== null && targetCost !== null) record.checkpointCost = { source: sourceCost, target: targetCost };
    }
    const series = convergenceSeries(record);
    record.curveMeasure = series.measure;
    record.curveSource = series.source;
    series.points.forEach((p, i) => (record.curve[i].remaining = Math.round(p.value)));
    if (isCrtr(spec.method) && final.status === 'completed') {
      const lb = lowerBoundOf(final, unitMs, spec.link);
      record.lowerBound = lb;
      record.downtimeLowerBoundMs = lb.boundMs;
      record.downtimeOverBound = lb.boundMs > 0 ? final.downtimeMs / lb.boundMs : null;
    }
  } catch (error) {
    if (unavailable !== null) throw unavailable;
    record.status = 'error';
    record.error = error instanceof Error ? error.message : String(error);
  } finally {
    record.linkStats = await processes.stop();
    record.wallMs = performance.now() - wallStart;
  }
  return record;
}

/**
 * How long the checkpoint took: crtr, from the 'checkpoint' phase event to 'log-transfer' (the
 * source waits there until the target restored the whole image); precopy, from 'checkpoint' to
 * the first sample with rounds >= 1 (round 0 is the full copy; 100 ms sampling resolution).
 */
function checkpointPhaseMs(r: RunRecord): number | null {
  const start = r.phases.find((p) => p.phase === 'checkpoint')?.tMs;
  if (start === undefined) return null;
  if (isCrtr(r.method)) {
    const end = r.phases.find((p) => p.phase === 'log-transfer')?.tMs;
    return end === undefined ? null : end - start;
  }
  const end = r.curve.find((p) => p.rounds >= 1)?.tMs;
  return end === undefined ? null : end - start;
}

/** FNV-1a of a string, as a non-zero uint32 (environment seeds). */
export function seedOf(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h === 0 ? 1 : h;
}
