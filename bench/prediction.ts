// Prediction before start, in the bench: before the first run of each profile/link/size cell, one
// EstimateMigration with the cell's guest (same profile, size and environment seed as its runs) on
// fresh agents through the cell's link emulator. The answer goes into results.json (`predictions`)
// and report.md sets it against what the cell's runs measured (prediction-report.ts). One estimate
// per cell, not per run: about the guest's boot, the warm-up, the sample (2 s) and the probe.

import { setTimeout as sleep } from 'node:timers/promises';
import type cliProgress from 'cli-progress';
import { messageJson } from '../cli/views.js';
import { controlServiceV2, pb2, unary } from '../shared/transport/grpc.js';
import { MIB_BYTES } from './format.js';
import type { RunSpec } from './run-record.js';
import { RunProcesses } from './run-processes.js';

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

/** One EstimateMigration for `spec`'s cell; failures are recorded, not thrown. */
export async function estimateCell(spec: RunSpec): Promise<CellPrediction> {
  const wallStart = performance.now();
  const out: CellPrediction = { kind: spec.kind, profile: spec.profile, link: spec.link, memoryBytes: spec.memoryBytes, seed: spec.seed, downtimeLimitMs: spec.downtimeLimitMs, status: 'error', error: '', wallMs: 0, estimate: null };
  const processes = new RunProcesses();
  try {
    const { targetAddress, control } = await processes.start(spec);
    const guest = pb2.StartGuestRequest.create({ id: 'bench-guest', profile: spec.profile, memoryBytes: spec.memoryBytes, environmentSeed: spec.seed });
    await unary(control, controlServiceV2.startGuest, guest, 300_000, 'starting the guest');
    await sleep(spec.warmupMs);
    const request = pb2.EstimateMigrationRequest.create({
      guestId: 'bench-guest',
      targetAddress,
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
    await processes.stop();
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
