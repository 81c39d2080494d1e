// Prediction before start, in the bench: before the first run of each profile/link/size cell, one
// EstimateMigration with the cell's guest (same profile, size and environment seed as its runs) on
// fresh agents through the cell's link emulator. The answer goes into results.json (`predictions`)
// and report.md sets it against what the cell's runs measured (prediction-report.ts). One estimate
// per cell, not per run: about the guest's boot, the warm-up, the sample (2 s) and the probe.

import type { ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import type cliProgress from 'cli-progress';
import { type AgentProcess, startAgentProcess, stopAgentProcess } from '../cli/agent-process.js';
import { messageJson } from '../cli/views.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';
import { MIB_BYTES } from './format.js';
import { type LinkHandle, startLinkInProcess, startLinkProcess } from './link-process.js';
import type { RunSpec } from './run-record.js';
import { agentArgs, agentNodeArgs } from './run.js';

/** How each cell's guest is sampled: the agent's default period, and an 8 MiB probe. */
export const PREDICTION_SAMPLE_MS = 2000;
export const PREDICTION_PROBE_BYTES = 8 * MIB_BYTES;

/** One cell's estimate, as results.json keeps it. */
export interface CellPrediction {
  kind: RunSpec['kind'];
  profile: string;
  link: RunSpec['link'];
  memoryBytes: number;
  seed: number;
  downtimeLimitMs: number;
  /** 'ok', or 'error' with the message in `error`. */
  status: 'ok' | 'error';
  error: string;
  /** Wall time of the whole cell estimate (agents up to agents down). */
  wallMs: number;
  /** EstimateMigration's answer as `--json` prints it (enum values by name; Infinity as null). */
  estimate: Record<string, unknown> | null;
}

/** The cell a run or a prediction belongs to. */
export function cellKey(x: Pick<RunSpec, 'kind' | 'profile' | 'link' | 'memoryBytes'>): string {
  return `${x.kind}|${x.profile}|${x.link}|${x.memoryBytes}`;
}

/** Cells of `specs`, in the order they first run. */
export function cellsOf(specs: readonly RunSpec[]): Map<string, RunSpec> {
  const cells = new Map<string, RunSpec>();
  for (const spec of specs) if (spec.kind !== 'dataplane' && !cells.has(cellKey(spec))) cells.set(cellKey(spec), spec);
  return cells;
}

/** Processes of the estimate in progress, for killPredictionChildren on an interrupt. */
const liveChildren = new Set<ChildProcess>();

export function killPredictionChildren(): void {
  for (const c of liveChildren) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  liveChildren.clear();
}

async function startLink(spec: RunSpec, targetAddress: string): Promise<LinkHandle | null> {
  if (spec.link === 'direct') return null;
  return spec.linkMode === 'child' ? startLinkProcess(targetAddress, spec.link) : startLinkInProcess(targetAddress, spec.link);
}

/** One EstimateMigration for `spec`'s cell; failures are recorded, not thrown. */
export async function estimateCell(spec: RunSpec): Promise<CellPrediction> {
  const wallStart = performance.now();
  const out: CellPrediction = { kind: spec.kind, profile: spec.profile, link: spec.link, memoryBytes: spec.memoryBytes, seed: spec.seed, downtimeLimitMs: spec.downtimeLimitMs, status: 'error', error: '', wallMs: 0, estimate: null };
  const agents: AgentProcess[] = [];
  let link: LinkHandle | null = null;
  let control: grpc.Client | null = null;
  try {
    const [source, target] = await Promise.all([startAgentProcess('source', agentArgs('source'), agentNodeArgs('source')), startAgentProcess('target', agentArgs('target'), agentNodeArgs('target'))]);
    agents.push(source, target);
    liveChildren.add(source.child).add(target.child);
    link = await startLink(spec, target.address);
    if (link?.child) liveChildren.add(link.child);
    control = makeClient(controlServiceV2, 'Control', source.address, grpc.credentials.createInsecure());
    const guest = pb2.StartGuestRequest.create({ id: 'bench-guest', profile: spec.profile, memoryBytes: spec.memoryBytes, environmentSeed: spec.seed });
    await unary(control, controlServiceV2.startGuest, guest, 300_000, 'starting the guest');
    await sleep(spec.warmupMs);
    const request = pb2.EstimateMigrationRequest.create({
      guestId: 'bench-guest',
      targetAddress: link?.address ?? target.address,
      downtimeLimitMs: spec.downtimeLimitMs,
      sampleMs: PREDICTION_SAMPLE_MS,
      probeBytes: PREDICTION_PROBE_BYTES,
    });
    const estimate = await unary(control, controlServiceV2.estimateMigration, request, PREDICTION_SAMPLE_MS + 60_000, 'estimating the migration');
    out.estimate = messageJson(estimate);
    out.status = 'ok';
  } catch (error) {
    out.error = error instanceof Error ? error.message : String(error);
  } finally {
    control?.close();
    if (link !== null) await link.close().catch(() => null);
    await Promise.all(agents.map((a) => stopAgentProcess(a)));
    for (const a of agents) liveChildren.delete(a.child);
    if (link?.child) liveChildren.delete(link.child);
    out.wallMs = performance.now() - wallStart;
  }
  return out;
}

/** Before `spec` runs: the estimate of its cell, if the cell has none yet. */
export async function predictBefore(spec: RunSpec, cells: ReadonlyMap<string, RunSpec>, predictions: CellPrediction[], bar: cliProgress.SingleBar): Promise<void> {
  const key = cellKey(spec);
  if (!cells.has(key) || predictions.some((p) => cellKey(p) === key)) return;
  const label = `estimate ${spec.profile} ${spec.link} ${spec.memoryBytes / MIB_BYTES} MiB`;
  bar.update({ label });
  const prediction = await estimateCell(spec);
  predictions.push(prediction);
  const recommended = String((prediction.estimate?.recommendedMethod as string | undefined) ?? '').replace('METHOD_', '').toLowerCase();
  bar.increment(1, { label: `${label}: ${prediction.status === 'ok' ? `recommends ${recommended}` : prediction.error.slice(0, 60)}` });
}
