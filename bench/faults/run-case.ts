// One fault case from start to verdict: a fresh cluster (cluster.ts) in a temporary directory, a
// 64 MiB 'web' guest on the source, a migration by the case's method through the link, the fault
// struck when the case's phase begins (inject.ts), then the job's end, the hosts settled, and the
// invariants judged (invariants.ts). The directory (state dirs, logs) is removed afterwards; the
// logs are copied out first when asked.

import { cpSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { controlServiceV2, migrationService, pb, pb2, unary } from '../../shared/transport/grpc.js';
import { caseChoices, caseId, type FaultCase } from './cases.js';
import { type AgentRole, FaultCluster } from './cluster.js';
import { Injector, enumText, jobStateText } from './inject.js';
import { evaluate } from './invariants.js';
import type { CaseObservation, CaseVerdict, HostView, SourceJobView, TargetJobView } from './observation.js';

export const GUEST_ID = 'vm-fault';
export const GUEST_MEMORY_BYTES = 64 * 2 ** 20;
/** The migration's own maximum duration: every job should end by it, whatever the fault. */
export const MIGRATION_DURATION_MS_MAX = 20_000;
/** From the fault (or the start, if none struck) to the job's end on the source: past the maximum duration. */
export const JOB_END_BOUND_MS = 30_000;
/** From the job's end until every reservation matches the guests held. */
export const SETTLE_BOUND_MS = 10_000;
/** A case that took longer is worth a look even when every invariant held: its logs are kept too. */
export const SLOW_CASE_MS = 15_000;
const POLL_MS = 100;
const CALL_TIMEOUT_MS = 5_000;

const METHOD_ENUM = { crtr: pb2.Method.METHOD_CRTR, precopy: pb2.Method.METHOD_PRECOPY, postcopy: pb2.Method.METHOD_POSTCOPY, 'qemu-native': pb2.Method.METHOD_QEMU_NATIVE } as const;
const ENDED = new Set(['succeeded', 'failed', 'cancelled']);

export interface RunCaseOptions {
  /** The agents' --log-level. */
  logLevel: string;
  /** Where the logs of kept cases are copied, a folder per case. */
  logDir?: string;
  /** Which cases' logs are kept in logDir: every case's, or those with violations, known gaps that explain some, or slow ones. */
  keepLogs: 'always' | 'notable';
}

export interface CaseResult {
  observation: CaseObservation;
  verdict: CaseVerdict;
  /** The folder holding this case's agent logs and state dirs, if they were kept. */
  logsKeptIn: string | null;
}

export async function runCase(c: FaultCase, options: RunCaseOptions): Promise<CaseResult> {
  const dir = mkdtempSync(join(tmpdir(), 'vmmigrate-fault-'));
  const cluster = new FaultCluster(dir, { logLevel: options.logLevel });
  const startedMs = performance.now();
  const choices = caseChoices(c);
  let observation: CaseObservation;
  try {
    await cluster.start();
    observation = { case: c, choices, ...(await drive(cluster, c)), durationMs: 0, harnessError: null };
  } catch (error) {
    const empty: HostView = { guests: [], reservedBytes: 0, heldBytes: 0 };
    const harnessError = error instanceof Error ? error.message : String(error);
    observation = { case: c, choices, injection: null, sourceJob: null, targetJob: null, restarted: { source: false, target: false }, targetReachable: false, hosts: { source: empty, target: empty }, settled: false, durationMs: 0, harnessError };
  }
  await cluster.close().catch(() => undefined);
  observation.durationMs = performance.now() - startedMs;
  const verdict = evaluate(observation);
  let logsKeptIn: string | null = null;
  const notable = verdict.violations.length > 0 || verdict.explained.length > 0 || observation.durationMs > SLOW_CASE_MS;
  if (options.logDir !== undefined && (options.keepLogs === 'always' || notable)) {
    logsKeptIn = keptLogsDir(options.logDir, caseId(c));
    cpSync(dir, logsKeptIn, { recursive: true });
  }
  rmSync(dir, { recursive: true, force: true });
  return { observation, verdict, logsKeptIn };
}

/** A folder of its own for a case's logs: the case's id, numbered when the case ran before. */
function keptLogsDir(logDir: string, id: string): string {
  const base = join(logDir, id.replaceAll('/', '_'));
  let dir = base;
  for (let n = 2; existsSync(dir); n++) dir = `${base}.${n}`;
  return dir;
}

type Driven = Omit<CaseObservation, 'case' | 'choices' | 'durationMs' | 'harnessError'>;

async function drive(cluster: FaultCluster, c: FaultCase): Promise<Driven> {
  const choices = caseChoices(c);
  const source = cluster.control('source');
  await unary(source, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: GUEST_ID, profile: 'web', memoryBytes: GUEST_MEMORY_BYTES, environmentSeed: choices.guestSeed }), 30_000, 'start guest');
  const { jobId } = await unary(
    source,
    controlServiceV2.startMigration,
    pb2.StartMigrationRequest.create({
      guestId: GUEST_ID,
      targetAddress: cluster.targetAddress,
      method: METHOD_ENUM[c.method],
      downtimeLimitMs: 300,
      nonConvergencePolicy: pb2.NonConvergencePolicy.NON_CONVERGENCE_POLICY_FORCE,
      maxDurationMs: MIGRATION_DURATION_MS_MAX,
    }),
    CALL_TIMEOUT_MS,
    'start migration',
  );
  const injector = new Injector(cluster, c, choices, performance.now());
  const injection = await injector.run(jobId);
  const sourceJob = cluster.restarts.source > 0 ? null : await awaitJobEnd(cluster, jobId, injector);
  await injector.lingeringOver();
  const { hosts, settled } = await settle(cluster);
  injector.finish();
  return {
    injection,
    sourceJob,
    targetJob: await targetJobView(cluster, jobId),
    restarted: { source: cluster.restarts.source > 0, target: cluster.restarts.target > 0 },
    targetReachable: await targetReachable(cluster),
    hosts,
    settled,
  };
}

/** Polls the source's job until it ends, or the bound passes (then the job as it is). */
async function awaitJobEnd(cluster: FaultCluster, jobId: string, injector: Injector): Promise<SourceJobView> {
  const until = performance.now() + JOB_END_BOUND_MS;
  let view: SourceJobView | null = null;
  for (;;) {
    try {
      const job = await unary(cluster.control('source'), controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), CALL_TIMEOUT_MS, 'get job');
      const state = jobStateText(job.state);
      if (state === 'in-doubt') injector.inDoubtSeen = true;
      const outcomeQueries = job.source?.outcomeQueries ?? 0;
      view = {
        state,
        phase: enumText(pb2.Phase as unknown as Record<number, string>, job.phase, 'PHASE_'),
        errorMessage: job.errorMessage ?? '',
        errorReason: enumText(pb2.ErrorReason as unknown as Record<number, string>, job.errorReason ?? 0, 'ERROR_REASON_'),
        inDoubtSeen: injector.inDoubtSeen || outcomeQueries > 0,
        outcomeQueries,
        ended: ENDED.has(state),
      };
    } catch (error) {
      view ??= { state: 'unknown', phase: '', errorMessage: `GetJob failed: ${(error as Error).message}`, errorReason: '', inDoubtSeen: injector.inDoubtSeen, outcomeQueries: 0, ended: false };
    }
    if (view.ended || performance.now() > until) return view;
    await sleep(POLL_MS);
  }
}

async function hostView(cluster: FaultCluster, role: AgentRole): Promise<HostView> {
  const control = cluster.control(role);
  const [listed, capacity] = await Promise.all([
    unary(control, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), CALL_TIMEOUT_MS, `list guests (${role})`),
    unary(control, controlServiceV2.getCapacity, pb2.GetCapacityRequest.create(), CALL_TIMEOUT_MS, `capacity (${role})`),
  ]);
  const guests = listed.guests.map((g) => ({ id: g.id ?? '', state: enumText(pb2.GuestState as unknown as Record<number, string>, g.state, 'GUEST_STATE_'), memoryBytes: Number(g.memoryBytes) }));
  const heldBytes = guests.filter((g) => g.state === 'running' || g.state === 'suspended').reduce((sum, g) => sum + g.memoryBytes, 0);
  return { guests, reservedBytes: Number(capacity.memoryBytesReserved), heldBytes };
}

function hostSettled(host: HostView): boolean {
  return host.reservedBytes === host.heldBytes && host.guests.every((g) => g.state === 'running' || g.state === 'suspended');
}

/** Both hosts as they are once their reservations match their guests, or at the bound. */
async function settle(cluster: FaultCluster): Promise<{ hosts: { source: HostView; target: HostView }; settled: boolean }> {
  const until = performance.now() + SETTLE_BOUND_MS;
  for (;;) {
    const [source, target] = await Promise.all([hostView(cluster, 'source'), hostView(cluster, 'target')]);
    const settled = hostSettled(source) && hostSettled(target);
    if (settled || performance.now() > until) return { hosts: { source, target }, settled };
    await sleep(POLL_MS);
  }
}

async function targetJobView(cluster: FaultCluster, jobId: string): Promise<TargetJobView | null> {
  try {
    const job = await unary(cluster.control('target'), controlServiceV2.getJob, pb2.GetJobRequest.create({ jobId }), CALL_TIMEOUT_MS, 'target job');
    const t = job.target;
    return { state: jobStateText(job.state), committed: t?.committed ?? false, activated: t?.activated ?? false, missingPages: Number(t?.missingPages ?? 0), errorMessage: job.errorMessage ?? '' };
  } catch (error) {
    if ((error as { code?: string }).code === 'NOT_FOUND') return null;
    throw error;
  }
}

async function targetReachable(cluster: FaultCluster): Promise<boolean> {
  try {
    await unary(cluster.migrationViaLink(), migrationService.getCapacity, pb.CapacityRequest.create(), CALL_TIMEOUT_MS, 'capacity through the link');
    return true;
  } catch {
    return false;
  }
}
