// The Control API v2's messages, built from the agent's own objects: a job seen from the source
// (SourceMigration and its history) or from the target (an incoming job), a guest with its role,
// the host's capacity.

import type { GuestDescription, HostCapacity } from '../../shared/driver/types.js';
import type { IncomingJob } from '../../shared/incoming-job.js';
import { PAGE_BYTES } from '../../shared/driver/types.js';
import { AGENT_VERSION, PROTOCOL_VERSION } from '../../shared/protocol.js';
import type { MigrationMethod, MigrationStats } from '../../shared/stats.js';
import { pb2, STREAM_NAMES, type StreamBytes, type StreamName } from '../../shared/transport/grpc.js';
import type { JobHistory } from '../job-history.js';
import type { SourceMigration } from '../migration.js';
import { errorReasonEnum, guestStateEnum, jobStateOf, methodEnum, phaseEnum } from './enums.js';

type Job = InstanceType<typeof pb2.Job>;

/** An outgoing job as Control v2 shows it. */
export function sourceJobMessage(job: SourceMigration, history: JobHistory): Job {
  const s: MigrationStats = job.isOver() ? job.stats : job.refreshStats();
  const errorReason = s.status === 'completed' && downtimeLimitExceeded(job, s) ? 'DOWNTIME_LIMIT_EXCEEDED' : s.errorReason;
  return pb2.Job.create({
    jobId: job.id,
    role: pb2.JobRole.JOB_ROLE_SOURCE,
    guestId: job.request.guestId,
    peerAddress: job.request.targetAddress,
    method: methodEnum(job.request.method),
    state: jobStateOf(s.status),
    phase: phaseEnum(s.phase),
    phasesPassed: history.phasesPassed.map(phaseEnum),
    startedAtMs: Math.round(job.startedAtMs),
    endedAtMs: Math.round(history.endedAtMs),
    errorReason: errorReasonEnum(errorReason),
    errorMessage: s.error,
    source: sourceStats(job, s),
  });
}

function downtimeLimitExceeded(job: SourceMigration, s: MigrationStats): boolean {
  return s.downtimeMs > job.request.downtimeLimitMs;
}

function sourceStats(job: SourceMigration, s: MigrationStats): InstanceType<typeof pb2.SourceStats> {
  const seconds = Math.max(0.001, s.totalTimeMs / 1000);
  const stats = pb2.SourceStats.create({
    setupTimeMs: s.setupTimeMs,
    totalTimeMs: s.totalTimeMs,
    downtimeMs: s.downtimeMs,
    expectedDowntimeMs: s.expectedDowntimeMs,
    downtimeLimitMs: job.request.downtimeLimitMs,
    downtimeLimitExceeded: s.status === 'completed' && downtimeLimitExceeded(job, s),
    checkpointPercent: s.memoryBytes > 0 ? Math.min(100, (100 * s.checkpointMemoryBytesCovered) / s.memoryBytes) : 0,
    remainingBytes: s.remainingBytes,
    memoryBytes: s.memoryBytes,
    throughputBytesPerSec: Math.round(s.transferredBytes / seconds),
    rttMs: s.rttMs,
    sourceDigest: s.sourceDigest,
    targetDigest: s.targetDigest,
    bytes: transferBytes(job.wireBytes.streams),
    disruption: disruptionOf(s),
    reservationMs: s.reservationMs,
    inDoubtMs: s.inDoubtMs,
    outcomeQueries: s.outcomeQueries,
    resumes: s.resumes,
    resentBytes: s.resentBytes,
  });
  if (s.method === 'crtr') stats.crtr = crtrStats(s);
  else if (s.method === 'qemu-native') stats.qemuNative = qemuNativeStats(s);
  else if (s.method === 'precopy') stats.precopy = pb2.PrecopyStats.create({ rounds: s.rounds, pagesSent: s.pagesSent, stopPagesSent: s.stopPagesSent, dirtyPages: Math.round(s.remainingBytes / PAGE_BYTES) });
  else stats.postcopy = pb2.PostcopyStats.create({ demandPages: s.demandPages, pushedPages: Math.max(0, s.pagesSent - s.demandPages), missingPages: s.missingPages });
  return stats;
}

function crtrStats(s: MigrationStats): InstanceType<typeof pb2.CrtrStats> {
  return pb2.CrtrStats.create({
    unitsRecorded: s.unitsRecorded,
    unitsSent: s.unitsSent,
    unitsReplayed: s.unitsReplayed,
    remainingUnits: s.remainingUnits,
    logBytes: s.logBytes,
    logRateBytesPerSec: Math.round(s.logRateBytesPerSec),
    replayRate: s.replayRate,
    stopRequests: s.rounds,
    stopRequestsDenied: s.stopRequestsDenied,
    stopUnitsToReplay: s.stopUnitsToReplay,
    stopLogWireBytes: s.stopLogBytesUnsent,
    stallMs: Math.round(s.stallMs),
    throttle: s.throttle,
    forced: s.forced,
    unitMs: s.unitMs,
    hybrid: s.hybrid,
    deltaRounds: s.deltaRounds,
    deltaPages: s.deltaPages,
    deltaWireBytes: s.deltaWireBytes,
    unitsSuperseded: s.unitsSuperseded,
    stopReplayRate: s.stopReplayRate,
  });
}

function qemuNativeStats(s: MigrationStats): InstanceType<typeof pb2.QemuNativeStats> {
  return pb2.QemuNativeStats.create({
    status: s.nativeStatus,
    postcopy: s.nativePostcopy,
    qemuSetupTimeMs: s.nativeSetupTimeMs,
    qemuTotalTimeMs: s.nativeTotalTimeMs,
    qemuDowntimeMs: s.nativeDowntimeMs,
    qemuTransferredBytes: s.nativeTransferredBytes,
    dirtyPagesPerSec: s.dirtyPagesPerSec,
    rounds: s.rounds,
    pagesSent: s.pagesSent,
    demandPages: s.demandPages,
    throttle: s.throttle,
    forced: s.forced,
  });
}

function disruptionOf(s: MigrationStats): InstanceType<typeof pb2.GuestDisruption> {
  return pb2.GuestDisruption.create({
    disruptionMs: s.disruptionMs,
    sourceStallMs: s.stallMs,
    targetStallMs: s.targetStallMs,
    throttledMs: s.throttledMs,
    unitsDue: s.unitsDue,
    unitsRun: s.unitsRun,
    lostScheduleMs: s.lostScheduleMs,
    windowMs: s.disruptionWindowMs,
  });
}

/** Bytes by stream; their wire bytes add up to the bytes transferred. */
function transferBytes(streams: Record<StreamName, StreamBytes>): InstanceType<typeof pb2.TransferBytes> {
  const message = pb2.TransferBytes.create({ transferredBytes: STREAM_NAMES.reduce((sum, n) => sum + streams[n].wireBytes, 0) });
  for (const name of STREAM_NAMES) message[name] = pb2.StreamBytes.create(streams[name]);
  return message;
}

/** An incoming job as Control v2 shows it on the target. */
export function incomingJobMessage(job: IncomingJob): Job {
  const c = job.counters;
  const state = {
    running: pb2.JobState.JOB_STATE_RUNNING,
    succeeded: pb2.JobState.JOB_STATE_SUCCEEDED,
    failed: pb2.JobState.JOB_STATE_FAILED,
    cancelled: pb2.JobState.JOB_STATE_CANCELLED,
  }[job.state];
  return pb2.Job.create({
    jobId: job.jobId,
    role: pb2.JobRole.JOB_ROLE_TARGET,
    guestId: job.guestId,
    method: methodEnum(job.method),
    state,
    phase: phaseEnum(job.phase),
    phasesPassed: job.phasesPassed.map(phaseEnum),
    startedAtMs: Math.round(job.startedAtMs),
    endedAtMs: Math.round(job.endedAtMs),
    errorMessage: job.error,
    target: pb2.TargetStats.create({
      reservationId: job.reservationId,
      reservedMemoryBytes: job.reservedMemoryBytes,
      memoryReadyMs: job.memoryReadyMs,
      chunksApplied: c.chunksApplied ?? 0,
      checkpointRestored: c.checkpointRestored ?? false,
      unitsReceived: c.unitsReceived ?? 0,
      unitsReplayed: c.unitsReplayed ?? 0,
      remainingUnits: c.remainingUnits ?? 0,
      replayRate: c.replayRate ?? 0,
      pageBatchesApplied: c.pageBatchesApplied ?? 0,
      missingPages: c.missingPages ?? 0,
      receivedWireBytes: c.bytesReceived ?? 0,
      committed: job.committed,
      activated: job.activated,
    }),
  });
}

/** A guest's role: what job, if any, moves it in or out. */
export interface GuestRoleOf {
  role: 'none' | 'migrating-out' | 'migrating-in' | 'protected' | 'standby';
  jobId: string;
}

const ROLES = {
  none: pb2.GuestRole.GUEST_ROLE_NONE,
  'migrating-out': pb2.GuestRole.GUEST_ROLE_MIGRATING_OUT,
  'migrating-in': pb2.GuestRole.GUEST_ROLE_MIGRATING_IN,
  protected: pb2.GuestRole.GUEST_ROLE_PROTECTED,
  standby: pb2.GuestRole.GUEST_ROLE_STANDBY,
} as const;

export function guestMessage(d: GuestDescription, role: GuestRoleOf): InstanceType<typeof pb2.Guest> {
  const guest = pb2.Guest.create({
    id: d.id,
    driver: d.driver,
    memoryBytes: d.memoryBytes,
    vcpus: d.vcpus,
    unitMs: d.unitMs,
    state: guestStateEnum(d.state),
    role: ROLES[role.role],
    jobId: role.jobId,
    hypervisorStatus: d.hypervisorStatus ?? '',
  });
  if (d.workload !== undefined) guest.sim = pb2.SimWorkload.create({ profile: d.workload.profile, rates: { ...d.workload.rates } });
  return guest;
}

export function capacityMessage(c: HostCapacity, agentInstanceId: string, methods: readonly MigrationMethod[]): InstanceType<typeof pb2.Capacity> {
  return pb2.Capacity.create({
    driver: c.driver,
    capabilities: [...c.capabilities],
    methods: methods.map(methodEnum),
    memoryBytesTotal: c.memoryBytesTotal,
    memoryBytesReserved: c.memoryBytesReserved,
    memoryBytesFree: c.memoryBytesFree,
    vcpusTotal: c.vcpusTotal,
    vcpusReserved: c.vcpusReserved,
    protocolVersion: PROTOCOL_VERSION,
    agentVersion: AGENT_VERSION,
    agentInstanceId,
  });
}
