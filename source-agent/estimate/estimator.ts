// EstimateMigration on the source agent: checks the request, samples the guest (sample-guest.ts)
// and the link to the target (sample-link.ts), and predicts each method's cost (predict.ts).
// Nothing moves: no reservation, no recording. While a guest is sampled its dirty tracking is the
// estimate's, so a migration of it is refused until the estimate ends (isSampling), and a guest
// being migrated is not estimated. Bounded: one estimate per guest, ESTIMATES_MAX at once.

import { type Clock, systemClock } from '../../shared/clock.js';
import { sourceCapabilities } from '../../shared/driver/capabilities.js';
import type { HypervisorDriver, SourceGuest } from '../../shared/driver/types.js';
import { echo, InvalidArgumentError, InvalidStateError, invalidField, LimitExceededError } from '../../shared/errors.js';
import { checkGuestId } from '../../shared/ids.js';
import { PROBE_BYTES_MAX } from '../../shared/protocol.js';
import type { MigrationMethod } from '../../shared/stats.js';
import { type grpc, pb } from '../../shared/transport/grpc.js';
import { createMethod, guestMethods } from '../methods/registry.js';
import { parseStartRequest, type StartDefaults } from '../start-request.js';
import { type Prediction, predictMigration } from './predict.js';
import { type GuestSample, type InputSource, sampleGuest } from './sample-guest.js';
import { type LinkSample, sampleLink } from './sample-link.js';

export const SAMPLE_MS_DEFAULT = 2000;
export const SAMPLE_MS_MIN = 250;
export const SAMPLE_MS_MAX = 30_000;
export const PROBE_BYTES_DEFAULT = 8 * 1024 * 1024;
export const PROBE_BYTES_MIN = 1024 * 1024;
/** Estimates running at once on one agent. */
export const ESTIMATES_MAX = 4;

export interface EstimateRequest {
  guestId: string;
  targetAddress: string;
  downtimeLimitMs: number;
  /** 0: none. */
  maxBandwidthBytesPerSec: number;
  sampleMs: number;
  probeBytes: number;
}

export interface EstimateResult {
  request: EstimateRequest;
  guest: GuestSample;
  link: LinkSample & { bandwidthBytesPerSec: number; bandwidthSource: InputSource };
  prediction: Prediction;
  elapsedMs: number;
}

export interface EstimatorOptions {
  credentials: grpc.ChannelCredentials;
  callTimeoutMs: number;
  /** This agent's instance id: a target answering with it is this agent itself. */
  agentInstanceId?: string;
  clock?: Clock;
}

type EstimateMigrationRequest = { guestId: string; targetAddress: string; downtimeLimitMs: number; maxBandwidthBytesPerSec: number | bigint; sampleMs: number; probeBytes: number | bigint };

/** The request checked field by field; 0 takes the agent's default, as StartMigration does. */
export function parseEstimateRequest(req: EstimateMigrationRequest, defaults: StartDefaults): EstimateRequest {
  checkGuestId(req.guestId, 'guest_id');
  const start = parseStartRequest(
    pb.StartMigrationRequest.create({ guestId: req.guestId, targetAddress: req.targetAddress, downtimeLimitMs: req.downtimeLimitMs, maxBandwidthBytesPerSec: Number(req.maxBandwidthBytesPerSec) }),
    defaults,
  );
  const sampleMs = req.sampleMs || SAMPLE_MS_DEFAULT;
  if (sampleMs < SAMPLE_MS_MIN || sampleMs > SAMPLE_MS_MAX) throw invalidField('sample_ms', `sample_ms ${sampleMs}: expected 0 (the default, ${SAMPLE_MS_DEFAULT}) or ${SAMPLE_MS_MIN} to ${SAMPLE_MS_MAX}`);
  const probeBytes = Number(req.probeBytes) || PROBE_BYTES_DEFAULT;
  if (probeBytes < PROBE_BYTES_MIN || probeBytes > PROBE_BYTES_MAX) {
    throw invalidField('probe_bytes', `probe_bytes ${probeBytes}: expected 0 (the default, ${PROBE_BYTES_DEFAULT}) or ${PROBE_BYTES_MIN} to ${PROBE_BYTES_MAX}`);
  }
  return { guestId: req.guestId, targetAddress: start.targetAddress, downtimeLimitMs: start.downtimeLimitMs, maxBandwidthBytesPerSec: start.maxBandwidthBytesPerSec, sampleMs, probeBytes };
}

export class Estimator {
  /** Guests being sampled now. */
  private readonly sampling = new Set<string>();
  private readonly clock: Clock;

  constructor(
    private readonly driver: HypervisorDriver,
    private readonly options: EstimatorOptions,
    /** The job migrating a guest away now, if any. */
    private readonly activeJobOf: (guestId: string) => { id: string } | undefined,
  ) {
    this.clock = options.clock ?? systemClock;
  }

  /** Whether `guestId` is being sampled (a migration of it must wait). */
  isSampling(guestId: string): boolean {
    return this.sampling.has(guestId);
  }

  async estimate(request: EstimateRequest, signal?: AbortSignal): Promise<EstimateResult> {
    const guest = this.driver.guest(request.guestId);
    this.checkGuest(guest);
    if (this.sampling.size >= ESTIMATES_MAX) {
      throw new LimitExceededError(`${this.sampling.size} estimates in progress on this agent, the limit is ${ESTIMATES_MAX}; try again when one ends`, { metadata: { limit: ESTIMATES_MAX } });
    }
    const startMs = this.clock.now();
    this.sampling.add(guest.id);
    try {
      // The link first: an unreachable target fails the call before the guest is sampled.
      const link = await sampleLink(request.targetAddress, { credentials: this.options.credentials, callTimeoutMs: this.options.callTimeoutMs, probeBytes: request.probeBytes, clock: this.clock, signal });
      this.checkTarget(request, link);
      const sample = await sampleGuest(guest, { periodMs: request.sampleMs, clock: this.clock, signal });
      return this.predict(request, guest, sample, link, this.clock.now() - startMs);
    } finally {
      this.sampling.delete(guest.id);
    }
  }

  private checkGuest(guest: SourceGuest): void {
    const job = this.activeJobOf(guest.id);
    if (job !== undefined) throw new InvalidStateError(`guest '${guest.id}' is being migrated by job ${job.id}; estimate it before or after`, { reason: 'GUEST_BUSY', metadata: { guestId: guest.id, jobId: job.id } });
    if (this.sampling.has(guest.id)) throw new InvalidStateError(`guest '${guest.id}' is already being estimated; wait for that estimate`, { reason: 'GUEST_BUSY', metadata: { guestId: guest.id } });
    const state = guest.describe().state;
    if (state !== 'running' || guest.pagesMissing > 0) {
      throw new InvalidStateError(`guest '${guest.id}' is ${state}${guest.pagesMissing > 0 ? ` with ${guest.pagesMissing} pages still arriving` : ''}; only a running guest is estimated`, {
        reason: 'GUEST_NOT_RUNNING',
        metadata: { guestId: guest.id, state },
      });
    }
  }

  private checkTarget(request: EstimateRequest, link: LinkSample): void {
    if (this.options.agentInstanceId && link.capacity.agentInstanceId === this.options.agentInstanceId) {
      throw new InvalidArgumentError(`target ${echo(request.targetAddress)} is this agent itself; estimate a migration to another agent`, {
        reason: 'TARGET_IS_SELF',
        metadata: { targetAddress: request.targetAddress },
        fieldViolations: [{ field: 'target_address', description: "the target answers with this agent's own instance id" }],
      });
    }
  }

  private predict(request: EstimateRequest, guest: SourceGuest, sample: GuestSample, link: LinkSample, elapsedMs: number): EstimateResult {
    const configured = request.maxBandwidthBytesPerSec;
    const bandwidthSource: InputSource = link.measuredBytesPerSec > 0 ? 'measured' : configured > 0 ? 'configured' : 'unknown';
    const { available, refusal, hybridCatchUp } = this.availability(guest, link);
    // What the guest's driver can do is predicted, whatever the target can (the rest is said not available).
    const methods = guestMethods(guest);
    const prediction = predictMigration({
      memoryBytes: sample.memoryBytes,
      nonZeroFraction: sample.nonZeroFraction,
      pageWireRatio: sample.pageWireRatio,
      compressBytesPerSec: sample.compressBytesPerSec,
      restoreBytesPerSec: 0,
      dirtyWindows: sample.dirtyWindows,
      busyFraction: sample.busyFraction,
      logBytesPerSec: sample.logBytesPerSec,
      unitMs: sample.unitMs,
      linkBytesPerSec: link.measuredBytesPerSec,
      rttMs: link.rttMs,
      maxBandwidthBytesPerSec: configured,
      downtimeLimitMs: request.downtimeLimitMs,
      cowPoolBytes: sample.cowPoolBytes,
      available,
      methods,
      hybridCatchUp,
    });
    if (refusal !== '') prediction.reason = `${refusal}; ${prediction.reason}`;
    const bandwidth = prediction.derived.linkBytesPerSec;
    return { request, guest: sample, link: { ...link, bandwidthBytesPerSec: Number.isFinite(bandwidth) ? bandwidth : 0, bandwidthSource }, prediction, elapsedMs };
  }

  /**
   * The methods both ends can carry out, whether CR/TR would catch up the hybrid way (both make
   * deltas), and why the target would refuse the guest, if it would.
   */
  private availability(guest: SourceGuest, link: LinkSample): { available: MigrationMethod[]; refusal: string; hybridCatchUp: boolean } {
    const capacity = link.capacity;
    const description = guest.describe();
    const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
    if (capacity.driver !== description.driver) return { available: [], refusal: `the target runs driver '${echo(capacity.driver)}', the guest needs '${description.driver}'`, hybridCatchUp: false };
    if (Number(capacity.memoryBytesFree) < description.memoryBytes) {
      return { available: [], refusal: `the target has ${mib(Number(capacity.memoryBytesFree))} free, the guest needs ${mib(description.memoryBytes)}`, hybridCatchUp: false };
    }
    const source = sourceCapabilities(guest);
    // A target that reports no capabilities predates them: its Open refuses what it cannot do.
    const target = capacity.capabilities.length > 0 ? capacity.capabilities : null;
    const available = guestMethods(guest).filter((name) => target === null || createMethod(name).needs.target.every((c) => target.includes(c)));
    const hybridCatchUp = source.includes('delta-checkpoint') && target !== null && target.includes('delta-checkpoint');
    return { available, refusal: '', hybridCatchUp };
  }
}
