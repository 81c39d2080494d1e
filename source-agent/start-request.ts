// StartMigration's request, checked field by field into a MigrationRequest: every limit is here,
// and 0 or empty takes the agent's configured default. A field out of its range is refused with a
// field violation naming it as the .proto does. Fault injection is parsed here too, and refused
// unless the agent allows it.

import { NON_CONVERGENCE_POLICIES, type NonConvergencePolicy } from '../shared/convergence.js';
import { echo, invalidField } from '../shared/errors.js';
import { ABORTABLE_PHASES, type MigrationMethod, type MigrationPhase } from '../shared/stats.js';
import type { pb } from '../shared/transport/grpc.js';
import { hostOf, isLoopbackHost } from '../shared/transport/tls.js';
import type { FaultInjection } from './faults.js';
import type { MigrationRequest } from './methods/method.js';
import { createMethod } from './methods/registry.js';

/** The agent's defaults and switches StartMigration applies. */
export interface StartDefaults {
  downtimeLimitMsDefault: number;
  maxDurationMsDefault: number;
  /** Bandwidth cap of a migration that asks for none (0: unlimited). */
  maxBandwidthBytesPerSecDefault: number;
  nonConvergencePolicyDefault: NonConvergencePolicy;
  allowFaultInjection: boolean;
  /** This agent runs without TLS: it migrates guests to loopback targets only. */
  plaintext: boolean;
}

const DOWNTIME_LIMIT_MS_MAX = 600_000;
const MAX_DURATION_MS_MIN = 100;
const MAX_DURATION_MS_MAX = 24 * 3600_000;
/** 1 Mbit/s to 8 Tbit/s. */
const BANDWIDTH_BYTES_PER_SEC_MIN = 125_000;
const BANDWIDTH_BYTES_PER_SEC_MAX = 1e12;

type StartMigrationRequest = InstanceType<typeof pb.StartMigrationRequest>;

/** The request checked; `defaultMethod` is the method when it names none (the guest's driver's, StartMigration). */
export function parseStartRequest(req: StartMigrationRequest, defaults: StartDefaults, defaultMethod: MigrationMethod = 'crtr'): MigrationRequest {
  if (!req.targetAddress) throw invalidField('target_address', 'targetAddress is required (host:port of the target agent)');
  if (defaults.plaintext && !isLoopbackHost(hostOf(req.targetAddress))) {
    throw invalidField(
      'target_address',
      `this agent runs without TLS (tls.plaintext), so it migrates guests to loopback targets only, not to ${echo(req.targetAddress)}; configure mutual TLS`,
      { targetAddress: req.targetAddress },
    );
  }
  const method = createMethod(req.method || defaultMethod).name;
  const policy = (req.nonConvergencePolicy || defaults.nonConvergencePolicyDefault) as NonConvergencePolicy;
  if (!NON_CONVERGENCE_POLICIES.includes(policy)) {
    throw invalidField('non_convergence_policy', `nonConvergencePolicy '${echo(req.nonConvergencePolicy)}': expected ${NON_CONVERGENCE_POLICIES.join(', ')}`);
  }
  const downtimeLimitMs = req.downtimeLimitMs || defaults.downtimeLimitMsDefault;
  if (downtimeLimitMs < 1 || downtimeLimitMs > DOWNTIME_LIMIT_MS_MAX) throw invalidField('downtime_limit_ms', `downtimeLimitMs ${downtimeLimitMs}: expected 1 to ${DOWNTIME_LIMIT_MS_MAX}`);
  const maxDurationMs = req.maxDurationMs || defaults.maxDurationMsDefault;
  if (maxDurationMs < MAX_DURATION_MS_MIN || maxDurationMs > MAX_DURATION_MS_MAX) throw invalidField('max_duration_ms', `maxDurationMs ${maxDurationMs}: expected 100 ms to 24 h`);
  const bandwidth = req.maxBandwidthBytesPerSec || defaults.maxBandwidthBytesPerSecDefault;
  if (bandwidth !== 0 && (bandwidth < BANDWIDTH_BYTES_PER_SEC_MIN || bandwidth > BANDWIDTH_BYTES_PER_SEC_MAX)) {
    throw invalidField('max_bandwidth_bytes_per_sec', `maxBandwidthBytesPerSec ${bandwidth}: expected 0 (unlimited) or 125000 (1 Mbit/s) to 1e12`);
  }
  // CR/TR's own switches, refused with another method rather than ignored.
  if (req.logOnlyCatchUp && method !== 'crtr') throw invalidField('log_only_catch_up', `logOnlyCatchUp chooses how CR/TR catches up; method '${method}' has no catch-up of that kind`);
  if (req.noFinalApproach && method !== 'crtr') throw invalidField('no_final_approach', `noFinalApproach turns off CR/TR's final approach; method '${method}' has none`);
  if (req.nativePostcopy && method !== 'qemu-native') throw invalidField('native_postcopy', `nativePostcopy switches qemu-native to post-copy; method '${method}' has no such switch (use the postcopy method)`);
  return { guestId: req.guestId, targetAddress: req.targetAddress, method, downtimeLimitMs, maxBandwidthBytesPerSec: bandwidth, policy, maxDurationMs, disableCompression: req.disableCompression, logOnlyCatchUp: req.logOnlyCatchUp, noFinalApproach: req.noFinalApproach === true, nativePostcopy: req.nativePostcopy === true };
}

/** The request's fault injection (undefined: none asked for); refused unless allowed. */
export function parseFaultInjection(req: StartMigrationRequest, allowed: boolean): FaultInjection | undefined {
  const f = req.faultInjection;
  if (!f || !(f.abortAtPhase || (f.corruptChunkIndex ?? 0) > 0 || (f.corruptUnitSequence ?? 0) > 0 || f.corruptCommitDigest || f.loseCommitResult || f.loseActivation)) return undefined;
  if (!allowed) throw invalidField('fault_injection', 'fault injection is disabled on this agent (start it with --allow-fault-injection)');
  if (f.abortAtPhase && !ABORTABLE_PHASES.includes(f.abortAtPhase as MigrationPhase)) {
    throw invalidField('fault_injection.abort_at_phase', `abortAtPhase '${echo(f.abortAtPhase)}': expected one of ${ABORTABLE_PHASES.join(', ')}`);
  }
  return {
    abortAtPhase: (f.abortAtPhase || undefined) as MigrationPhase | undefined,
    corruptChunkIndex: (f.corruptChunkIndex ?? 0) > 0 ? (f.corruptChunkIndex ?? undefined) : undefined,
    corruptUnitSequence: (f.corruptUnitSequence ?? 0) > 0 ? (f.corruptUnitSequence ?? undefined) : undefined,
    corruptCommitDigest: f.corruptCommitDigest ?? false,
    loseCommitResult: f.loseCommitResult ?? false,
    loseActivation: f.loseActivation ?? false,
  };
}
