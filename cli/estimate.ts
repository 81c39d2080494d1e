// `vmmigrate migrate GUEST --to TARGET --dry-run`: asks the source agent to estimate the
// migration (EstimateMigration) and prints what it measured, each method's predicted cost and the
// recommended method. Nothing is migrated.

import type { vmmigrate } from '../shared/proto/generated.js';
import { controlServiceV2, pb2 } from '../shared/transport/grpc.js';
import { EXIT } from './calls.js';
import type { Session } from './session.js';
import { formatBytes, formatMs, table } from './units.js';
import { messageJson, methodWord } from './views.js';

type Estimate = vmmigrate.v2.EstimateMigrationResponse.$Properties;

export interface DryRunOptions {
  to: string;
  downtimeLimitMs?: number;
  maxBandwidth?: number;
  /** How long the agent samples the guest (default: the agent's, 2 s). */
  sampleMs?: number;
}

/** Time for the agent to sample and probe, beyond the sample itself (the probe stops after 10 s). */
const ESTIMATE_TIMEOUT_MS_EXTRA = 30_000;

const SOURCE_WORDS = new Map<number, string>([
  [pb2.InputSource.INPUT_SOURCE_MEASURED, 'measured'],
  [pb2.InputSource.INPUT_SOURCE_CONFIGURED, 'configured'],
  [pb2.InputSource.INPUT_SOURCE_MODELLED, 'modelled from the workload'],
  [pb2.InputSource.INPUT_SOURCE_UNKNOWN, 'not known'],
]);
const sourceWord = (value: number | null | undefined) => SOURCE_WORDS.get(value ?? 0) ?? '-';

const rate = (bytesPerSec: number) => `${(bytesPerSec / 1e6).toFixed(1)} MB/s`;
const time = (ms: number | null | undefined) => (Number.isFinite(ms ?? NaN) ? formatMs(ms ?? 0) : 'never');
const bytes = (n: number | null | undefined) => (Number.isFinite(n ?? NaN) ? formatBytes(Math.round(n ?? 0)) : 'never');

/** What the agent measured, in a few lines. */
export function measuredLines(e: Estimate): string[] {
  const g = e.guest ?? {};
  const l = e.link ?? {};
  const pages = (n: number | null | undefined) => Math.round(Number(n ?? 0)).toLocaleString('en-US');
  const windows = (g.dirtyWindows ?? []).map((w) => `${pages(w.pages)} in ${w.windowMs} ms`).join(', ');
  const bandwidth =
    (l.bandwidthBytesPerSec ?? 0) > 0
      ? `${rate(l.bandwidthBytesPerSec ?? 0)} (${sourceWord(l.bandwidthSource)}${(l.measuredBandwidthBytesPerSec ?? 0) > 0 ? `: ${formatBytes(Number(l.probeBytes ?? 0))} in ${time(l.probeMs)}, ${rate(l.measuredBandwidthBytesPerSec ?? 0)}` : ''})`
      : 'not known, taken as not limiting';
  // A guest whose pages the agent cannot read (qemu): its content is not sampled, and no method
  // predicted for it replays a log.
  const content = (g.sampledPages ?? 0) > 0 ? `${(100 * (g.nonZeroFraction ?? 0)).toFixed(0)}% of pages not zero (${g.sampledPages} sampled), lz4 to ${(g.pageWireRatio ?? 1).toFixed(2)} of their size` : 'its pages not sampled (its driver lends none): every page counted as sent whole';
  const replays = (e.methods ?? []).some((m) => m.method === pb2.Method.METHOD_CRTR);
  return [
    `guest:    ${formatBytes(Number(g.memoryBytes ?? 0))}, ${content}`,
    `dirtying: ${windows || 'not measured'} (${sourceWord(g.dirtySource)}): ${pages(g.dirtyPagesPerSec)} pages/s over a working set of ${pages(g.workingSetPages)} pages`,
    ...(replays ? [`cpu:      busy ${(100 * (g.busyFraction ?? 0)).toFixed(0)}% (${sourceWord(g.busySource)}), so replay at about ${(g.replayRate ?? 0).toFixed(1)}x; log ${rate(g.logBytesPerSec ?? 0)} (${sourceWord(g.logSource)})`] : []),
    `link:     round trip ${time(l.rttMs)} (median of ${l.rttSamples ?? 0}), bandwidth ${bandwidth}${l.note ? `; ${l.note}` : ''}`,
  ];
}

/** The table of predictions, the recommendation and each method's reasoning. */
export function estimateLines(e: Estimate): string[] {
  const label = (m: NonNullable<Estimate['methods']>[number]) => `${methodWord(m.method)}${m.logOnlyCatchUp ? ' (log only)' : ''}`;
  const rows = (e.methods ?? []).map((m) => [
    label(m),
    m.available ? (m.converges ? 'yes' : 'no') : 'not available',
    time(m.downtimeMs),
    time(m.totalTimeMs),
    bytes(m.transferredBytes),
    time(m.disruptionMs),
    String(m.rounds ?? 0),
  ]);
  const recommended = e.recommendedMethod ? methodWord(e.recommendedMethod) : 'none';
  return [
    ...measuredLines(e),
    '',
    `predicted, with a downtime limit of ${e.downtimeLimitMs} ms:`,
    table(['method', 'converges', 'downtime', 'total time', 'data', 'disruption', 'rounds'], rows),
    '',
    `recommended: ${recommended}: ${e.recommendationReason ?? ''}`,
    ...(e.methods ?? []).map((m) => `  ${label(m)}: ${m.reason ?? ''}`),
  ];
}

export async function dryRun(session: Session, guestId: string, opts: DryRunOptions): Promise<number> {
  const request = pb2.EstimateMigrationRequest.create({
    guestId,
    targetAddress: opts.to,
    downtimeLimitMs: opts.downtimeLimitMs ?? 0,
    maxBandwidthBytesPerSec: opts.maxBandwidth ?? 0,
    sampleMs: opts.sampleMs ?? 0,
  });
  const timeoutMs = Math.max(session.options.timeoutMs, (opts.sampleMs ?? 2000) + ESTIMATE_TIMEOUT_MS_EXTRA);
  session.say(`Estimating a migration of guest '${guestId}' from ${session.options.agent} to ${opts.to} (nothing is migrated)...`);
  const estimate = await session.call(controlServiceV2.estimateMigration, request, `estimating the migration of guest '${guestId}' to ${opts.to}`, timeoutMs);
  session.document(messageJson(estimate));
  const next = estimate.recommendedMethod ? `To migrate: the same command without --dry-run, with --method ${methodWord(estimate.recommendedMethod)}.` : 'No method is available between these agents.';
  session.say(...estimateLines(estimate), '', `Took ${time(estimate.elapsedMs)}. ${next}`);
  return EXIT.ok;
}
