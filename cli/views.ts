// What the CLI shows of the Control API's messages: plain JSON documents (--json) and the lines
// and tables a person reads. Pure functions of the messages, so the views are testable without
// an agent.

import { emptyStats, type MigrationStats } from '../shared/stats.js';
import type { vmmigrate } from '../shared/proto/generated.js';
import { formatBytes, formatInstant, formatMbps, formatMs, table } from './units.js';

// Decoded messages, and the messages nested in them, as their generated types describe them.
type GuestMessage = vmmigrate.v1.Guest.$Properties;
type JobMessage = vmmigrate.v1.Job.$Properties;
type CapacityMessage = vmmigrate.v1.Capacity.$Properties;

export interface GuestJson {
  id: string;
  state: string;
  driver: string;
  memoryBytes: number;
  vcpus: number;
  unitMs: number;
  summary: string;
}

export interface JobJson {
  jobId: string;
  guestId: string;
  targetAddress: string;
  startedAtMs: number;
  stats: MigrationStats;
}

export interface CapacityJson {
  driver: string;
  memoryBytesTotal: number;
  memoryBytesReserved: number;
  memoryBytesFree: number;
  vcpusTotal: number;
  vcpusReserved: number;
  protocolVersion: number;
  agentVersion: string;
}

// A decoded protobufjs message keeps default values on its prototype (JSON.stringify would drop
// them) and types fields of nested messages as optional: every view copies fields explicitly.

export function guestJson(g: GuestMessage): GuestJson {
  const d = g.description ?? {};
  return {
    id: d.id ?? '',
    state: g.state ?? '',
    driver: d.driver ?? '',
    memoryBytes: Number(d.memoryBytes ?? 0),
    vcpus: d.vcpus ?? 0,
    unitMs: d.unitMs ?? 0,
    summary: d.summary ?? '',
  };
}

/** Every MigrationStats field, named as in shared/stats.ts (the same names as the proto's). */
export function statsJson(s: object | null | undefined): MigrationStats {
  const out = emptyStats('crtr', 0) as unknown as Record<string, unknown>;
  const source = (s ?? {}) as Record<string, unknown>;
  for (const key of Object.keys(out)) {
    const value = source[key];
    if (value === undefined || value === null) continue;
    out[key] = typeof out[key] === 'number' ? Number(value) : value;
  }
  return out as unknown as MigrationStats;
}

export function jobJson(j: JobMessage): JobJson {
  return { jobId: j.jobId ?? '', guestId: j.guestId ?? '', targetAddress: j.targetAddress ?? '', startedAtMs: Number(j.startedAtMs ?? 0), stats: statsJson(j.stats) };
}

export function capacityJson(c: CapacityMessage): CapacityJson {
  return {
    driver: c.driver ?? '',
    memoryBytesTotal: Number(c.memoryBytesTotal ?? 0),
    memoryBytesReserved: Number(c.memoryBytesReserved ?? 0),
    memoryBytesFree: Number(c.memoryBytesFree ?? 0),
    vcpusTotal: c.vcpusTotal ?? 0,
    vcpusReserved: c.vcpusReserved ?? 0,
    protocolVersion: c.protocolVersion ?? 0,
    agentVersion: c.agentVersion ?? '',
  };
}

/** A job is over once its status is one of these (source-agent/migration.ts, isOver). */
export const FINAL_STATUSES: readonly string[] = ['completed', 'failed', 'cancelled'];

export function guestsTable(guests: readonly GuestJson[]): string {
  if (guests.length === 0) return 'No guests on this agent.';
  return table(
    ['ID', 'STATE', 'MEMORY', 'SUMMARY'],
    guests.map((g) => [g.id, g.state, formatBytes(g.memoryBytes), g.summary]),
  );
}

export function jobsTable(jobs: readonly JobJson[]): string {
  if (jobs.length === 0) return 'No migration jobs on this agent.';
  return table(
    ['JOB', 'GUEST', 'TARGET', 'METHOD', 'STATUS', 'PHASE', 'DOWNTIME', 'STARTED'],
    jobs.map((j) => [
      j.jobId,
      j.guestId,
      j.targetAddress,
      j.stats.method,
      j.stats.status,
      j.stats.phase,
      j.stats.downtimeMs > 0 ? formatMs(j.stats.downtimeMs) : '-',
      formatInstant(j.startedAtMs),
    ]),
  );
}

export function capacityLines(c: CapacityJson): string[] {
  return [
    `driver:    ${c.driver} (agent ${c.agentVersion}, protocol ${c.protocolVersion})`,
    `memory:    ${formatBytes(c.memoryBytesFree)} free of ${formatBytes(c.memoryBytesTotal)} (${formatBytes(c.memoryBytesReserved)} reserved)`,
    `vcpus:     ${c.vcpusTotal - c.vcpusReserved} free of ${c.vcpusTotal}`,
  ];
}

/** Every statistic of a job, one `name: value` line each, for `status JOB`. */
export function jobLines(j: JobJson): string[] {
  const rows: Array<[string, string]> = [
    ['jobId', j.jobId],
    ['guestId', j.guestId],
    ['targetAddress', j.targetAddress],
    ['startedAt', formatInstant(j.startedAtMs)],
    ...Object.entries(j.stats).map(([k, v]): [string, string] => [k, typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(2) : String(v)]),
  ];
  const width = Math.max(...rows.map(([k]) => k.length)) + 1;
  return rows.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v === '' ? '-' : v}`);
}

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

export function progressView(s: MigrationStats): ProgressView {
  const percent = s.memoryBytes > 0 ? Math.min(100, (100 * s.checkpointMemoryBytesCovered) / s.memoryBytes) : 0;
  let label: string;
  let remaining: string;
  if (s.method === 'precopy') {
    // Round 0 copies all memory (the bar); later rounds copy what was dirtied meanwhile.
    label = s.rounds === 0 ? 'round 1 (all memory)' : `round ${s.rounds + 1}`;
    remaining = `${formatBytes(s.remainingBytes)} dirty`;
  } else if (s.method === 'postcopy') {
    label = 'pages pushed';
    remaining = `${formatBytes(s.remainingBytes)} to push`;
  } else {
    label = 'checkpoint';
    remaining = `${s.remainingUnits} units to replay`;
  }
  // Once the guest was suspended the measured downtime replaces the estimate.
  const downtime = s.downtimeMs > 0 ? `downtime ${formatMs(s.downtimeMs)}` : `expected downtime ${formatMs(s.expectedDowntimeMs)}`;
  // mbps is the average since the migration started, not the current rate.
  return { phase: s.phase, percent, label, remaining, throughput: `avg ${formatMbps(s.mbps)}`, downtime };
}

export function progressLine(s: MigrationStats): string {
  const v = progressView(s);
  return `${v.phase.padEnd(13)} ${v.label} ${v.percent.toFixed(0).padStart(3)}%  ${v.remaining}  ${v.throughput}  ${v.downtime}`;
}

function digestsLine(s: MigrationStats): string {
  if (s.sourceDigest === '' || s.targetDigest === '') return `not compared (source ${s.sourceDigest || 'none'}, target ${s.targetDigest || 'none'})`;
  return `${s.sourceDigest === s.targetDigest ? 'equal' : 'DIFFERENT'} (source ${s.sourceDigest}, target ${s.targetDigest})`;
}

/** What each method calls the bulk copy of memory (checkpointWireBytes). */
const BULK_COPY: Record<string, string> = { crtr: 'checkpoint', precopy: 'first full copy', postcopy: 'pages' };

/** A job's error on one line, without the gRPC code some agents' messages end with. */
function errorMessage(s: MigrationStats): string {
  const message = s.error
    .replace(/\s*Resolution note:\s*(?=\(|$)/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  return (s.errorCode && message.endsWith(`(${s.errorCode})`) ? message.slice(0, -s.errorCode.length - 2).trim() : message) || '-';
}

function errorText(s: MigrationStats): string {
  return s.errorCode ? `${errorMessage(s)} (${s.errorCode})` : errorMessage(s);
}

/** The end-of-migration summary: the three figures, rounds, units, digests, and why it failed. */
export function summaryLines(j: JobJson): string[] {
  const s = j.stats;
  const lines = [
    `Migration ${j.jobId} of guest '${j.guestId}' to ${j.targetAddress} (${s.method}): ${s.status}`,
    `  downtime:          ${s.downtimeMs > 0 ? formatMs(s.downtimeMs) : '-'} (source suspend to target resume)`,
    `  total time:        ${formatMs(s.totalTimeMs)}`,
    `  data transmitted:  ${formatBytes(s.transferredBytes)} (${BULK_COPY[s.method] ?? 'checkpoint'} ${formatBytes(s.checkpointWireBytes)} on the wire for ${formatBytes(s.memoryBytes)} of memory${s.method === 'crtr' ? `, log ${formatBytes(s.logBytes)}` : ''})`,
  ];
  if (s.method === 'precopy') {
    lines.push(`  rounds:            ${s.rounds} pre-copy rounds, ${s.stopPagesSent} pages sent during stop-and-copy`);
  } else if (s.method === 'postcopy') {
    lines.push(`  pages:             ${s.demandPages} fetched on demand by the running guest, the rest pushed`);
  } else {
    lines.push(`  rounds:            ${s.rounds} wait-and-ack`);
    lines.push(`  units:             ${s.unitsRecorded} recorded, ${s.unitsSent} sent, ${s.unitsReplayed} replayed${s.replayRate > 0 ? ` (replay ${s.replayRate.toFixed(1)}x guest speed)` : ''}`);
  }
  lines.push(`  digests:           ${digestsLine(s)}`);
  lines.push(`  forced:            ${s.forced ? 'yes (the non-convergence policy forced stop-and-copy)' : 'no'}`);
  if (s.status !== 'completed') lines.push(`  error:             ${errorText(s)}`);
  // A job can be cancelled only before its commit (CancelJob), so the guest runs on the source.
  if (s.status === 'cancelled') lines.push(`  The guest '${j.guestId}' stays on the source.`);
  return lines;
}

/** The line on stderr for a migration that did not complete (with --json, stdout holds the job). */
export function failureLine(j: JobJson): string {
  return `vmmigrate: migration job ${j.jobId} of guest '${j.guestId}' ${j.stats.status}: ${j.stats.errorCode || '-'}: ${errorMessage(j.stats)}`;
}
