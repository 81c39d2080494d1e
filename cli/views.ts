// What the CLI shows of the Control API v2's messages: the words a person reads for each enum
// value (written once, here), the lines and tables of each command, and the JSON documents of
// --json (the messages as they are, enum values by name). Pure functions of the messages, so the
// views are testable without an agent.

import { PAGE_BYTES } from '../shared/driver/types.js';
import type { vmmigrate } from '../shared/proto/generated.js';
import type { MigrationMethod, MigrationPhase } from '../shared/stats.js';
import { pb2 } from '../shared/transport/grpc.js';
import { formatBytes, formatInstant, formatMbps, formatMs, table } from './units.js';
import { type JsonValue, messageJson } from './json-view.js';

// --json's view of the messages (json-view.ts), for the commands that print one.
export { type JsonValue, messageJson } from './json-view.js';

// Decoded messages, and the messages nested in them, as their generated types describe them.
export type GuestMessage = vmmigrate.v2.Guest.$Properties;
export type JobMessage = vmmigrate.v2.Job.$Properties;
export type CapacityMessage = vmmigrate.v2.Capacity.$Properties;
type SourceStats = vmmigrate.v2.SourceStats.$Properties;

// --- the words of each enum ------------------------------------------------------------------
//
// The words are the ones the CLI showed before Control v2 where the meaning is the same (phases,
// methods, guest states, the three ends of a job); a value this CLI does not know (a newer agent)
// shows as unknown(N), and UNSPECIFIED as '-'.

const { Method, Phase, JobState, JobRole, GuestState, GuestRole, NonConvergencePolicy } = pb2;

const METHOD_WORDS = new Map<number, MigrationMethod>([
  [Method.METHOD_CRTR, 'crtr'],
  [Method.METHOD_PRECOPY, 'precopy'],
  [Method.METHOD_POSTCOPY, 'postcopy'],
  [Method.METHOD_QEMU_NATIVE, 'qemu-native'],
]);

const PHASE_WORDS = new Map<number, MigrationPhase>([
  [Phase.PHASE_PRE_MIGRATION, 'pre-migration'],
  [Phase.PHASE_RESERVATION, 'reservation'],
  [Phase.PHASE_CHECKPOINT, 'checkpoint'],
  [Phase.PHASE_LOG_TRANSFER, 'log-transfer'],
  [Phase.PHASE_STOP_AND_COPY, 'stop-and-copy'],
  [Phase.PHASE_COMMITMENT, 'commitment'],
  [Phase.PHASE_ACTIVATION, 'activation'],
  [Phase.PHASE_PAGE_PUSH, 'page-push'],
  [Phase.PHASE_DONE, 'done'],
]);

/** A job's state; SUCCEEDED keeps the word the CLI always used for it. */
const JOB_STATE_WORDS = new Map<number, string>([
  [JobState.JOB_STATE_RUNNING, 'running'],
  [JobState.JOB_STATE_CANCELLING, 'cancelling'],
  [JobState.JOB_STATE_SUCCEEDED, 'completed'],
  [JobState.JOB_STATE_FAILED, 'failed'],
  [JobState.JOB_STATE_CANCELLED, 'cancelled'],
  [JobState.JOB_STATE_IN_DOUBT, 'in doubt (vmmigrate resolve)'],
]);

const JOB_ROLE_WORDS = new Map<number, string>([
  [JobRole.JOB_ROLE_SOURCE, 'outgoing'],
  [JobRole.JOB_ROLE_TARGET, 'incoming'],
]);

const GUEST_STATE_WORDS = new Map<number, string>([
  [GuestState.GUEST_STATE_RUNNING, 'running'],
  [GuestState.GUEST_STATE_BLOCKED, 'blocked'],
  [GuestState.GUEST_STATE_SUSPENDED, 'suspended'],
  [GuestState.GUEST_STATE_RESTORING, 'restoring'],
  [GuestState.GUEST_STATE_REPLICA, 'replica'],
  [GuestState.GUEST_STATE_DISCARDED, 'discarded'],
]);

const GUEST_ROLE_WORDS = new Map<number, string>([
  [GuestRole.GUEST_ROLE_NONE, '-'],
  [GuestRole.GUEST_ROLE_MIGRATING_OUT, 'migrating-out'],
  [GuestRole.GUEST_ROLE_MIGRATING_IN, 'migrating-in'],
  [GuestRole.GUEST_ROLE_PROTECTED, 'protected'],
  [GuestRole.GUEST_ROLE_STANDBY, 'standby'],
]);

const POLICY_VALUES = new Map<string, number>([
  ['abort', NonConvergencePolicy.NON_CONVERGENCE_POLICY_ABORT],
  ['force', NonConvergencePolicy.NON_CONVERGENCE_POLICY_FORCE],
  ['throttle', NonConvergencePolicy.NON_CONVERGENCE_POLICY_THROTTLE],
]);

function wordOf(words: ReadonlyMap<number, string>, value: number | null | undefined): string {
  if (!value) return '-';
  return words.get(value) ?? `unknown(${value})`;
}

export const methodWord = (value: number | null | undefined): string => wordOf(METHOD_WORDS, value);
export const phaseWord = (value: number | null | undefined): string => wordOf(PHASE_WORDS, value);
export const jobStateWord = (value: number | null | undefined): string => wordOf(JOB_STATE_WORDS, value);
export const jobRoleWord = (value: number | null | undefined): string => wordOf(JOB_ROLE_WORDS, value);
export const guestStateWord = (value: number | null | undefined): string => wordOf(GUEST_STATE_WORDS, value);
export const guestRoleWord = (value: number | null | undefined): string => wordOf(GUEST_ROLE_WORDS, value);

/** A method's enum value from its word ('crtr', 'precopy', 'postcopy'); UNSPECIFIED (the agent's default) for none. */
export function methodValue(word: string | undefined): number {
  for (const [value, w] of METHOD_WORDS) if (w === word) return value;
  return Method.METHOD_UNSPECIFIED;
}

/** A non-convergence policy's enum value from its word; UNSPECIFIED (the agent's default) for none. */
export function policyValue(word: string | undefined): number {
  return (word !== undefined ? POLICY_VALUES.get(word) : undefined) ?? NonConvergencePolicy.NON_CONVERGENCE_POLICY_UNSPECIFIED;
}

/** Whether a job has ended (succeeded, failed or cancelled): nothing about it changes any more. */
export function jobEnded(job: JobMessage): boolean {
  const s = job.state;
  return s === JobState.JOB_STATE_SUCCEEDED || s === JobState.JOB_STATE_FAILED || s === JobState.JOB_STATE_CANCELLED;
}

// --- guests and capacity ---------------------------------------------------------------------

/**
 * What the guest is, in one phrase, in its driver's terms: a `sim` guest's workload, log units and
 * pages (`sim web, 256 MiB, 10 ms units, 65536 pages`); a real hypervisor's guest, which has
 * neither, its vCPUs and the hypervisor's own word when it says more than the state
 * (`qemu, 128 MiB, 1 vCPU, QEMU: running, migration postcopy-paused`).
 */
export function guestSummary(g: GuestMessage): string {
  const memoryBytes = Number(g.memoryBytes ?? 0);
  const driver = g.driver ?? '';
  if (g.sim || driver === 'sim') {
    const what = g.sim ? `${driver} ${g.sim.profile ?? ''}` : driver;
    const units = g.unitMs ? `, ${g.unitMs} ms units` : '';
    return `${what}, ${memoryBytes / 2 ** 20} MiB${units}, ${memoryBytes / PAGE_BYTES} pages`;
  }
  const vcpus = g.vcpus ? `, ${g.vcpus} vCPU${g.vcpus === 1 ? '' : 's'}` : '';
  const said = g.hypervisorStatus && g.hypervisorStatus !== guestStateWord(g.state) ? `, ${driver === 'qemu' ? 'QEMU' : 'hypervisor'}: ${g.hypervisorStatus}` : '';
  return `${driver}, ${memoryBytes / 2 ** 20} MiB${vcpus}${said}`;
}

/** The guest's role and the job behind it: `migrating-out 05a11cf8-...`, or '-'. */
export function guestRoleText(g: GuestMessage): string {
  const role = guestRoleWord(g.role);
  return g.jobId ? `${role} ${g.jobId}` : role;
}

export function guestsTable(guests: readonly GuestMessage[]): string {
  if (guests.length === 0) return 'No guests on this agent.';
  return table(
    ['ID', 'STATE', 'ROLE', 'MEMORY', 'SUMMARY'],
    guests.map((g) => [g.id ?? '', guestStateWord(g.state), guestRoleText(g), formatBytes(Number(g.memoryBytes ?? 0)), guestSummary(g)]),
  );
}

export function capacityLines(c: CapacityMessage): string[] {
  const total = Number(c.memoryBytesTotal ?? 0);
  const vcpus = c.vcpusTotal ?? 0;
  const methods = (c.methods ?? []).map(methodWord);
  return [
    `driver:    ${c.driver ?? ''} (agent ${c.agentVersion ?? ''}, protocol ${c.protocolVersion ?? 0})`,
    `memory:    ${formatBytes(Number(c.memoryBytesFree ?? 0))} free of ${formatBytes(total)} (${formatBytes(Number(c.memoryBytesReserved ?? 0))} reserved)`,
    `vcpus:     ${vcpus - (c.vcpusReserved ?? 0)} free of ${vcpus}`,
    `methods:   ${methods.length > 0 ? methods.join(', ') : '-'}`,
  ];
}

// --- jobs ------------------------------------------------------------------------------------

/** Where the guest goes: the target's address on the source; on the target, this agent itself. */
function targetText(j: JobMessage): string {
  if (j.role === JobRole.JOB_ROLE_TARGET) return 'this agent';
  return j.peerAddress || '-';
}

export function jobsTable(jobs: readonly JobMessage[]): string {
  if (jobs.length === 0) return 'No migration jobs on this agent.';
  return table(
    ['JOB', 'GUEST', 'ROLE', 'TARGET', 'METHOD', 'STATUS', 'PHASE', 'DOWNTIME', 'STARTED'],
    jobs.map((j) => {
      const downtimeMs = j.source?.downtimeMs ?? 0;
      return [
        j.jobId ?? '',
        j.guestId ?? '',
        jobRoleWord(j.role),
        targetText(j),
        methodWord(j.method),
        jobStateWord(j.state),
        phaseWord(j.phase),
        downtimeMs > 0 ? formatMs(downtimeMs) : '-',
        formatInstant(Number(j.startedAtMs ?? 0)),
      ];
    }),
  );
}

/** `name: value` rows of a JSON document, nested names joined by dots. */
function flatten(value: JsonValue, prefix: string, rows: Array<[string, string]>): void {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, rows);
    return;
  }
  const text = Array.isArray(value) ? value.join(', ') : typeof value === 'number' && !Number.isInteger(value) ? value.toFixed(2) : String(value);
  rows.push([prefix, text]);
}

/** Every field of a job, one `name: value` line each (named as in --json), for `status JOB`. */
export function jobLines(j: JobMessage): string[] {
  const rows: Array<[string, string]> = [
    ['jobId', j.jobId ?? ''],
    ['role', jobRoleWord(j.role)],
    ['guestId', j.guestId ?? ''],
    ['peerAddress', j.peerAddress ?? ''],
    ['method', methodWord(j.method)],
    ['state', jobStateWord(j.state)],
    ['phase', phaseWord(j.phase)],
    ['phasesPassed', (j.phasesPassed ?? []).map(phaseWord).join(', ')],
    ['startedAt', formatInstant(Number(j.startedAtMs ?? 0))],
    ['endedAt', formatInstant(Number(j.endedAtMs ?? 0))],
    ['errorReason', j.errorReason ? (pb2.ErrorReason[j.errorReason] ?? String(j.errorReason)) : ''],
    ['errorMessage', oneLine(j.errorMessage ?? '')],
  ];
  if (j.source) flatten(messageJson(j.source), 'source', rows);
  if (j.target) flatten(messageJson(j.target), 'target', rows);
  const width = Math.max(...rows.map(([k]) => k.length)) + 1;
  return rows.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v === '' ? '-' : v}`);
}

// --- a migration being watched ---------------------------------------------------------------

/** What the progress bar and the per-phase lines show of a running migration. */
export interface ProgressView {
  phase: string;
  /** 0-100: the checkpoint sent (crtr), the first full copy (precopy) or the pages pushed (postcopy). */
  percent: number;
  /** What `percent` measures, e.g. "checkpoint" or "round 3". */
  label: string;
  remaining: string;
  throughput: string;
  downtime: string;
}

/** Megabits per second from bytes per second. */
const mbpsOf = (bytesPerSec: number): number => (bytesPerSec * 8) / 1e6;

export function progressView(j: JobMessage): ProgressView {
  const s: SourceStats = j.source ?? {};
  const remainingBytes = Number(s.remainingBytes ?? 0);
  let label: string;
  let remaining: string;
  if (j.method === Method.METHOD_PRECOPY) {
    // Round 0 copies all memory (the bar); later rounds copy what was dirtied meanwhile.
    const rounds = s.precopy?.rounds ?? 0;
    label = rounds === 0 ? 'round 1 (all memory)' : `round ${rounds + 1}`;
    remaining = `${formatBytes(remainingBytes)} dirty`;
  } else if (j.method === Method.METHOD_POSTCOPY) {
    label = 'pages pushed';
    remaining = `${formatBytes(remainingBytes)} to push`;
  } else if (j.method === Method.METHOD_QEMU_NATIVE) {
    const q = s.qemuNative ?? {};
    label = q.postcopy ? 'QEMU post-copy' : `QEMU pass ${Math.max(1, q.rounds ?? 0)}`;
    remaining = `${formatBytes(remainingBytes)} left (QEMU ${q.status || 'starting'})`;
  } else {
    label = 'checkpoint';
    remaining = `${s.crtr?.remainingUnits ?? 0} units to replay`;
  }
  // Once the guest was suspended the measured downtime replaces the estimate.
  const downtimeMs = s.downtimeMs ?? 0;
  const downtime = downtimeMs > 0 ? `downtime ${formatMs(downtimeMs)}` : `expected downtime ${formatMs(s.expectedDowntimeMs ?? 0)}`;
  // The throughput is the average since the migration started, not the current rate.
  const throughput = `avg ${formatMbps(mbpsOf(Number(s.throughputBytesPerSec ?? 0)))}`;
  return { phase: phaseWord(j.phase), percent: Math.min(100, s.checkpointPercent ?? 0), label, remaining, throughput, downtime };
}

export function progressLine(j: JobMessage): string {
  const v = progressView(j);
  return `${v.phase.padEnd(13)} ${v.label} ${v.percent.toFixed(0).padStart(3)}%  ${v.remaining}  ${v.throughput}  ${v.downtime}`;
}

function digestsLine(s: SourceStats): string {
  const source = s.sourceDigest ?? '';
  const target = s.targetDigest ?? '';
  if (source === '' || target === '') return `not compared (source ${source || 'none'}, target ${target || 'none'})`;
  return `${source === target ? 'equal' : 'DIFFERENT'} (source ${source}, target ${target})`;
}

function oneLine(text: string): string {
  // grpc-js ends some UNAVAILABLE details with an empty "Resolution note:".
  return text
    .replace(/\s*Resolution note:\s*(?=\(|$)/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
}

/** The ErrorReason name of a job that did not succeed, or '' when the agent gave none. */
function reasonOf(j: JobMessage): string {
  return j.errorReason ? (pb2.ErrorReason[j.errorReason] ?? `unknown(${j.errorReason})`) : '';
}

/** A job's error on one line, with its reason (an ErrorReason name) when the agent gave one. */
function errorText(j: JobMessage): string {
  const message = oneLine(j.errorMessage ?? '') || '-';
  const reason = reasonOf(j);
  return reason ? `${message} (${reason})` : message;
}

/** The data transmitted: in total, the bulk copy of memory on the wire, and CR/TR's log. */
function dataLine(j: JobMessage, s: SourceStats): string {
  const bytes = s.bytes ?? {};
  const memory = formatBytes(Number(s.memoryBytes ?? 0));
  const total = formatBytes(Number(bytes.transferredBytes ?? 0));
  if (j.method === Method.METHOD_CRTR) {
    return `${total} (checkpoint ${formatBytes(Number(bytes.checkpoint?.wireBytes ?? 0))} on the wire for ${memory} of memory, log ${formatBytes(Number(s.crtr?.logBytes ?? 0))})`;
  }
  if (j.method === Method.METHOD_QEMU_NATIVE) return `${total} (QEMU's stream ${formatBytes(Number(bytes.native?.rawBytes ?? 0))} relayed for ${memory} of memory)`;
  // Pre-copy's rounds and post-copy's pushed and fetched pages, with the machine state.
  return `${total} (pages ${formatBytes(Number(bytes.pages?.wireBytes ?? 0))} on the wire for ${memory} of memory)`;
}

/** CR/TR's catch-up: by the log only, or hybrid with its delta checkpoints. */
function catchUpLine(c: vmmigrate.v2.ICrtrStats): string {
  if (!c.hybrid) return 'log replay only';
  const deltas = c.deltaRounds ?? 0;
  if (deltas === 0) return 'hybrid: no delta checkpoint was cheaper than replaying the log';
  return `hybrid: ${deltas} delta checkpoint${deltas === 1 ? '' : 's'} (${Number(c.deltaPages ?? 0)} pages, ${formatBytes(Number(c.deltaWireBytes ?? 0))} on the wire), then the log`;
}

/** The guest's lost progress against its schedule, with its terms (README, "Guest disruption"). */
function disruptionText(s: SourceStats): string {
  const d = s.disruption ?? {};
  const stallMs = (d.sourceStallMs ?? 0) + (d.targetStallMs ?? 0);
  const units = Number(d.unitsDue ?? 0) > 0 ? `; ${Number(d.unitsRun ?? 0)} of ${Number(d.unitsDue)} units run` : '';
  return `${formatMs(d.disruptionMs ?? 0)} (downtime + stalls ${formatMs(stallMs)} + throttled ${formatMs(d.throttledMs ?? 0)} + lost schedule ${formatMs(d.lostScheduleMs ?? 0)}${units})`;
}

/** The end-of-migration summary: the three figures, rounds, units, digests, and why it failed. */
export function summaryLines(j: JobMessage): string[] {
  const s: SourceStats = j.source ?? {};
  const downtimeMs = s.downtimeMs ?? 0;
  const state = jobStateWord(j.state);
  const lines = [
    `Migration ${j.jobId} of guest '${j.guestId}' to ${j.peerAddress} (${methodWord(j.method)}): ${state}`,
    `  downtime:          ${downtimeMs > 0 ? formatMs(downtimeMs) : '-'} (source suspend to target resume)`,
    `  disruption:        ${disruptionText(s)}`,
    `  total time:        ${formatMs(s.totalTimeMs ?? 0)}`,
    `  data transmitted:  ${dataLine(j, s)}`,
  ];
  if (s.precopy) {
    lines.push(`  rounds:            ${s.precopy.rounds ?? 0} pre-copy rounds, ${Number(s.precopy.stopPagesSent ?? 0)} pages sent during stop-and-copy`);
  } else if (s.postcopy) {
    lines.push(`  pages:             ${Number(s.postcopy.demandPages ?? 0)} fetched on demand by the running guest, the rest pushed`);
  } else if (s.qemuNative) {
    const q = s.qemuNative;
    const how = q.postcopy ? `post-copy, ${Number(q.demandPages ?? 0)} pages asked for by the guest on the target` : `${q.rounds ?? 0} pre-copy passes`;
    // A job that failed before QEMU's migration began has no figures of QEMU to show.
    if (q.status) lines.push(`  QEMU:              ${q.status}, ${how}; its own downtime ${formatMs(q.qemuDowntimeMs ?? 0)}, total ${formatMs(q.qemuTotalTimeMs ?? 0)}`);
    else lines.push('  QEMU:              its migration never began');
  } else {
    const c = s.crtr ?? {};
    const replayRate = c.replayRate ?? 0;
    lines.push(`  rounds:            ${c.stopRequests ?? 0} wait-and-ack`);
    lines.push(`  catch-up:          ${catchUpLine(c)}`);
    const superseded = c.unitsSuperseded ? `, ${c.unitsSuperseded} superseded by deltas` : '';
    lines.push(`  units:             ${c.unitsRecorded ?? 0} recorded, ${c.unitsSent ?? 0} sent, ${c.unitsReplayed ?? 0} replayed${superseded}${replayRate > 0 ? ` (replay ${replayRate.toFixed(1)}x guest speed)` : ''}`);
  }
  lines.push(`  digests:           ${digestsLine(s)}`);
  lines.push(`  forced:            ${s.crtr?.forced || s.qemuNative?.forced ? 'yes (the non-convergence policy forced stop-and-copy)' : 'no'}`);
  if (j.state !== JobState.JOB_STATE_SUCCEEDED) lines.push(`  error:             ${errorText(j)}`);
  // A job can be cancelled only before its commit (CancelJob), so the guest runs on the source.
  if (j.state === JobState.JOB_STATE_CANCELLED) lines.push(`  The guest '${j.guestId}' stays on the source.`);
  return lines;
}

/** The line on stderr for a migration that did not complete (with --json, stdout holds the job). */
export function failureLine(j: JobMessage): string {
  return `vmmigrate: migration job ${j.jobId} of guest '${j.guestId}' ${jobStateWord(j.state)}: ${reasonOf(j) || '-'}: ${oneLine(j.errorMessage ?? '') || '-'}`;
}
