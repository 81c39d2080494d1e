// One seed of the protocol simulation: the source's real lifecycle (SourceMigration, its method,
// streams, commitment and in-doubt resolution) and the target's real MigrationService, in one
// process, on one ManualClock, over the simulated network, with the seed's faults. The run goes
// on until the job ended (or a bound passed), then lets the target's bounded timeouts pass, and
// checks the invariants (invariants.ts). The same seed replays exactly: same trace, same digest.

import { pino, type Logger } from 'pino';
import { type Clock, ManualClock } from '../../../shared/clock.js';
import { pb, streamByteCounter } from '../../../shared/transport/grpc.js';
import { SOURCE_DEFAULTS, SourceMigration } from '../../../source-agent/migration.js';
import { FaultInjector } from './faults.js';
import { checkEnd, Placement, type RunOutcome } from './invariants.js';
import { SimNetwork } from './network.js';
import { SimTargetPeer, TARGET_ADDRESS } from './peer.js';
import { describeScenario, drawScenario, type Scenario, type SimMethod, streams } from './scenario.js';
import { SimSourceGuest } from './source-guest.js';
import { SimTarget } from './target.js';
import { SimHost } from './target-driver.js';
import { Trace } from './trace.js';
import { SimWire } from './wire.js';

/** Longest a job may take, faults included, before the run calls it stuck. */
export const RUN_LIMIT_MS = 600_000;
/** Simulated time advanced per step of the run loop (timers inside fire in order). */
const STEP_MS = 1_000;
/** Calm that resolves any doubt: the source's slowest backoff (5 s), a call's deadline (10 s), and some. */
const DOUBT_CALM_MS = 20_000;
/** The migration's own maximum duration. */
const MAX_DURATION_MS = 30_000;
/**
 * A link stalled this long breaks the connection: gRPC's keepalive (a ping every 30 s, 10 s for its
 * answer) finds the peer silent.
 */
const KEEPALIVE_BREAK_MS = 40_000;
/** After the job ended: the target's reservation timeout (60 s) and session open timeout (30 s) pass, and some. */
export const QUIET_MS = 100_000;

export interface SimRunOptions {
  /** Only this method (default: the seed picks). */
  method?: SimMethod;
  /** The scenario as the seed draws it, with these parts replaced (directed tests: their own faults). */
  override?: Partial<Omit<Scenario, 'seed' | 'method'>>;
  /** Keep the trace's lines (for printing a failing seed). */
  keepTrace?: boolean;
  /** The agents' logs, given the simulation's clock (default: silent). */
  log?: (clock: Clock) => Logger;
}

export interface SeedResult {
  seed: number;
  scenario: string;
  method: SimMethod;
  outcome: RunOutcome;
  errorReason: string;
  /** Whether the guest runs on the target at the end (an in-doubt job's guest may). */
  targetRuns: boolean;
  /** Outcome queries the source made: more than 0, the job was in doubt at some point. */
  outcomeQueries: number;
  /** When the job ended (null: it did not). */
  endedAtMs: number | null;
  violations: string[];
  faultsFired: string[];
  simMs: number;
  events: number;
  traceDigest: string;
  trace: string[] | null;
}

const silent = pino({ level: 'silent' });

interface World {
  clock: ManualClock;
  trace: Trace;
  placement: Placement;
  host: SimHost;
  target: SimTarget;
  wire: SimWire;
  job: SourceMigration;
  guest: SimSourceGuest;
  /** When the job ended (null: not yet). */
  ended: { atMs: number | null };
  net: SimNetwork;
  faults: FaultInjector;
}

function buildWorld(scenario: Scenario, options: SimRunOptions): World {
  const { network, world: outside, loss } = streams(scenario.seed);
  const clock = new ManualClock(0);
  const log = options.log?.(clock) ?? silent;
  const trace = new Trace(clock, options.keepTrace === true);
  const note = (text: string) => trace.add(text);
  const placement = new Placement(clock, trace);
  const host = new SimHost(64 * 2 ** 20, placement);
  const target = new SimTarget(clock, host, { journalKept: scenario.journalKept, epochSkewMs: scenario.epochSkewMs, replaySpeed: scenario.replaySpeed }, log, note);
  target.start();
  const net = new SimNetwork(clock, network, scenario.link);
  let job: SourceMigration | null = null;
  const faults = new FaultInjector(
    scenario.faults,
    {
      crash: (downMs) => target.crash(downMs),
      stall: (direction, ms) => {
        net.stall(direction, ms);
        if (ms > KEEPALIVE_BREAK_MS) clock.timeout(KEEPALIVE_BREAK_MS, () => (note('KEEPALIVE the stalled connection breaks'), target.resetConnection()));
      },
      reset: () => target.resetConnection(),
      cancel: () => cancel(job, note),
      journalFails: () => target.journalFails(),
    },
    clock,
    note,
    scenario.lossPerMessage > 0 ? { probability: scenario.lossPerMessage, untilMs: scenario.lossUntilMs, random: loss } : null,
  );
  const counter = streamByteCounter();
  const wire = new SimWire(clock, net, target, faults, trace, counter);
  const peer = new SimTargetPeer(wire, clock, SOURCE_DEFAULTS.callTimeoutMs, counter);
  const guest = new SimSourceGuest('vm-sim', clock, outside, { unitMs: scenario.unitMs, unitQueueMax: 256, unitFillerBytes: scenario.unitBytes }, placement);
  const request = { guestId: guest.id, targetAddress: TARGET_ADDRESS, method: scenario.method, downtimeLimitMs: scenario.downtimeLimitMs, maxBandwidthBytesPerSec: 0, policy: scenario.policy, maxDurationMs: MAX_DURATION_MS, disableCompression: true, logOnlyCatchUp: scenario.logOnlyCatchUp };
  job = new SourceMigration(guest, request, SOURCE_DEFAULTS, log, { peer, clock, hooks: { onPhase: (phase) => faults.onPhase(phase) } });
  job.on('phase', (phase) => note(`PHASE ${phase}`));
  const ended = { atMs: null as number | null };
  job.on('end', () => (ended.atMs = clock.now()));
  return { clock, trace, placement, host, target, wire, job, guest, ended, net, faults };
}

/** The operator's cancel: refused past the commit point, as CancelJob is. */
function cancel(job: SourceMigration | null, note: (text: string) => void): void {
  try {
    job?.cancel('cancelled by the simulated operator');
    note('CANCEL asked');
  } catch (error) {
    note(`CANCEL refused: ${(error as { reason?: string }).reason ?? 'error'}`);
  }
}

/**
 * In doubt for good: the target kept no journal, answered UNKNOWN, and no fault is left to change
 * anything (a run of the target without the record answers UNKNOWN ever after). The run stops
 * waiting; the invariants judge it.
 */
function settledInDoubt(w: World, scenario: Scenario): boolean {
  const forOperator = (!scenario.journalKept && w.wire.lastOutcome === pb.OutcomeResponse.Outcome.UNKNOWN) || w.wire.lastGuestLost;
  return w.job.stats.status === 'in-doubt' && forOperator && w.wire.faults.pendingCount === 0;
}

/**
 * Watches that a doubt resolves once the world is calm (the target up, the link neither stalled nor
 * lossy, no fault since): the source asks at least every 5 s, so a doubt that outlasts
 * DOUBT_CALM_MS of calm is a violation, unless the target answered UNKNOWN (it cannot tell).
 */
class DoubtWatch {
  private calmSinceMs = 0;
  violation: string | null = null;

  step(w: World): void {
    const { clock, target, net, faults } = w;
    const calm = target.up && !net.stalled('toTarget') && !net.stalled('toSource') && clock.now() - faults.lastFiredAtMs > STEP_MS;
    if (!calm) this.calmSinceMs = clock.now();
    const doubting = w.job.stats.status === 'in-doubt' && w.wire.lastOutcome !== pb.OutcomeResponse.Outcome.UNKNOWN && !w.wire.lastGuestLost;
    if (doubting && this.violation === null && clock.now() - this.calmSinceMs > DOUBT_CALM_MS) {
      this.violation = `still in doubt ${((clock.now() - this.calmSinceMs) / 1000).toFixed(0)} s after the target was up and reachable (at ${clock.now()} ms)`;
    }
  }
}

/** Runs one seed to its end and checks it. */
export async function runSeed(seed: number, options: SimRunOptions = {}): Promise<SeedResult> {
  const scenario = { ...drawScenario(seed, streams(seed).plan, options.method), ...options.override };
  const w = buildWorld(scenario, options);
  const done = w.job.run();
  done.catch(() => {});
  const doubt = new DoubtWatch();
  while (!w.job.isOver() && !settledInDoubt(w, scenario) && w.clock.now() < RUN_LIMIT_MS) {
    await w.clock.advance(STEP_MS);
    doubt.step(w);
  }
  const over = w.job.isOver();
  if (over) await done;
  const endedAtMs = w.ended.atMs;
  const settled = over || settledInDoubt(w, scenario);
  w.trace.add(`JOB ${w.job.stats.status} ${w.job.stats.errorReason}`);
  await w.clock.advance(QUIET_MS);
  const record = scenario.journalKept ? w.target.journalRecord(w.job.id) : undefined;
  const { outcome, violations } = checkEnd({
    stats: w.job.stats,
    placement: w.placement,
    host: w.host,
    guestId: w.guest.id,
    targetRecord: record,
    journalKept: scenario.journalKept,
    lastOutcome: w.wire.lastOutcome,
    lastGuestLost: w.wire.lastGuestLost,
    settled,
    quietMs: QUIET_MS,
  });
  if (doubt.violation !== null) violations.push(doubt.violation);
  return {
    seed,
    scenario: describeScenario(scenario),
    method: scenario.method,
    outcome,
    errorReason: w.job.stats.errorReason,
    targetRuns: w.host.running.has(w.guest.id),
    outcomeQueries: w.job.stats.outcomeQueries,
    endedAtMs,
    violations,
    faultsFired: w.wire.faults.fired,
    simMs: w.clock.now(),
    events: w.trace.events,
    traceDigest: w.trace.digest,
    trace: w.trace.lines,
  };
}
