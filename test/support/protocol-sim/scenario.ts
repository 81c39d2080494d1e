// What a seed decides before the run starts: the method (unless asked for), whether the target
// keeps its journal across a crash, the link, the migration's limits, and the faults.

import type { NonConvergencePolicy } from '../../../shared/convergence.js';
import { Random } from '../../../shared/random.js';
import type { MigrationMethod } from '../../../shared/stats.js';
import { describeFault, drawFaults, type Fault, logUniform, pick } from './faults.js';
import { mix } from './machine.js';
import type { LinkModel } from './network.js';

/** The methods the simulation carries: the fakes have what CR/TR and pre-copy need. */
export const SIM_METHODS = ['crtr', 'precopy'] as const;
export type SimMethod = (typeof SIM_METHODS)[number];

export interface Scenario {
  seed: number;
  method: SimMethod;
  journalKept: boolean;
  link: LinkModel;
  unitMs: number;
  /** What a unit weighs on the link: with the link's rate, whether the log converges. */
  unitBytes: number;
  downtimeLimitMs: number;
  policy: NonConvergencePolicy;
  faults: Fault[];
  /** A lossy link: each message resets the connection with this probability (0: none), for the run's first lossUntilMs. */
  lossPerMessage: number;
  lossUntilMs: number;
  /** The target host's wall clock minus the source's, within what outcome answers allow (60 s). */
  epochSkewMs: number;
  /** Guest time the target replays per unit of its time (below 1: the replica falls behind). */
  replaySpeed: number;
  /** CR/TR: catch up by the log only (no delta checkpoints). */
  logOnlyCatchUp: boolean;
}

/** The independent random streams of a seed: the plan, the network's jitter, the guest's outside world, the lossy link. */
export function streams(seed: number): { plan: Random; network: Random; world: Random; loss: Random } {
  return { plan: new Random(seed), network: new Random(mix(seed, 1)), world: new Random(mix(seed, 2)), loss: new Random(mix(seed, 3)) };
}

export function drawScenario(seed: number, plan: Random, method?: SimMethod): Scenario {
  const chosen = method ?? pick<SimMethod>(plan, [['crtr', 3], ['precopy', 1]]);
  const latencyMs = logUniform(plan, 1, 40) / 2;
  return {
    seed,
    method: chosen,
    journalKept: plan.nextFloat() < 0.75,
    link: { latencyMs, jitterMs: plan.nextFloat() * latencyMs, bytesPerMs: logUniform(plan, 100, 100_000) },
    unitMs: pick(plan, [[10, 2], [20, 1], [50, 1]]),
    unitBytes: logUniform(plan, 32, 32_768),
    downtimeLimitMs: pick(plan, [[100, 1], [300, 2], [1_000, 1]]),
    policy: pick<NonConvergencePolicy>(plan, [['abort', 1], ['force', 1]]),
    faults: drawFaults(plan, chosen as MigrationMethod),
    lossPerMessage: plan.nextFloat() < 0.1 ? logUniform(plan, 10, 300) / 10_000 : 0,
    lossUntilMs: logUniform(plan, 100, 20_000),
    epochSkewMs: Math.round((plan.nextFloat() - 0.5) * 60_000),
    replaySpeed: logUniform(plan, 7, 300) / 10,
    logOnlyCatchUp: plan.nextFloat() < 0.25,
  };
}

export function describeScenario(s: Scenario): string {
  const link = `latency ${s.link.latencyMs} ms (+${s.link.jitterMs.toFixed(1)}), ${(s.link.bytesPerMs / 1000).toFixed(1)} MB/s`;
  const loss = s.lossPerMessage > 0 ? `, ${(s.lossPerMessage * 100).toFixed(2)}% of messages reset for ${s.lossUntilMs} ms` : '';
  const faults = (s.faults.length === 0 ? 'no faults' : s.faults.map(describeFault).join('; ')) + loss;
  return `${s.method}, journal ${s.journalKept ? 'kept' : 'not kept'}, ${link}, unit ${s.unitMs} ms of ${s.unitBytes} B, replay ${s.replaySpeed}x${s.logOnlyCatchUp ? ' (log only)' : ''}, downtime limit ${s.downtimeLimitMs} ms, policy ${s.policy}, target clock ${s.epochSkewMs} ms off; ${faults}`;
}
