// The invariants of a simulated migration, checked as it runs and once it ended:
//
// - never running twice: at no instant do the source's copy and the target's both run;
// - reported as it is: a job completed has its guest running on the target (the copy suspended
//   there, digest for digest) and none on the source; a job failed or cancelled has it running on
//   the source and none on the target; a journal kept on the target agrees (committed exactly when
//   completed);
// - never running nowhere: a job may stay in doubt (its guest suspended on the source) only while
//   the target cannot tell, which is the documented case of a target that kept no journal and
//   restarted (it answers UNKNOWN); a target up and reachable resolves every doubt;
// - nothing left behind: once the job ended and the target's bounded timeouts passed, the target
//   holds no reservation (no replica, no memory reserved).

import type { Clock } from '../../../shared/clock.js';
import type { GuestState } from '../../../shared/driver/types.js';
import type { JournalRecord } from '../../../shared/journal.js';
import type { MigrationStats } from '../../../shared/stats.js';
import { pb } from '../../../shared/transport/grpc.js';
import type { PlacementObserver } from './source-guest.js';
import type { SimHost } from './target-driver.js';
import type { Trace } from './trace.js';

/** How a run ended, as counted by the bench. */
export type RunOutcome = 'completed' | 'failed' | 'cancelled' | 'in-doubt-unknown' | 'in-doubt-guest-lost' | 'in-doubt' | 'unfinished';

/** Where the guest's copies are, as they change; a second running copy is a violation at once. */
export class Placement implements PlacementObserver {
  source: GuestState = 'running';
  targetRunning = false;
  readonly violations: string[] = [];

  constructor(
    private readonly clock: Clock,
    private readonly trace: Trace,
  ) {}

  changed(side: 'source' | 'target', state: GuestState): void {
    this.trace.add(`GUEST ${side} ${state}`);
    if (side === 'source') this.source = state;
    else this.targetRunning = state === 'running';
    if (this.source === 'running' && this.targetRunning) {
      this.violations.push(`running twice at ${this.clock.now().toFixed(1)} ms: the ${side === 'source' ? 'source resumed its copy while the target runs its own' : 'target resumed the guest while the source runs its copy'}`);
    }
  }
}

export interface EndState {
  stats: MigrationStats;
  placement: Placement;
  host: SimHost;
  guestId: string;
  /** The target's journal record of the migration, when the journal is kept (undefined: none, or not kept). */
  targetRecord: JournalRecord | undefined;
  journalKept: boolean;
  /** The target's last answer to an outcome query, if any. */
  lastOutcome: number | null;
  /** The last answer: COMMITTED, the guest gone from the target since. */
  lastGuestLost: boolean;
  /** The job ended, or is in doubt for good; the target's timeouts then had `quietMs`. */
  settled: boolean;
  quietMs: number;
}

const { Outcome } = pb.OutcomeResponse;

/** What the run's end says, and what it violates. */
export function checkEnd(end: EndState): { outcome: RunOutcome; violations: string[] } {
  const { stats, placement, host, guestId } = end;
  const violations: string[] = [];
  const targetGuest = host.running.get(guestId);
  const where = `source copy ${placement.source}, target copy ${targetGuest === undefined ? 'absent' : targetGuest.state}`;
  let outcome: RunOutcome;
  switch (stats.status) {
    case 'completed':
      outcome = 'completed';
      if (targetGuest === undefined || placement.source !== 'discarded') violations.push(`reported completed, but ${where}`);
      else if (targetGuest.digest() !== stats.sourceDigest) violations.push(`completed, but the target runs digest ${targetGuest.digest()} where the source suspended ${stats.sourceDigest}`);
      break;
    case 'failed':
    case 'cancelled':
      outcome = stats.status;
      if (placement.source !== 'running' || targetGuest !== undefined) violations.push(`reported ${stats.status} (${stats.errorReason}), but ${where}`);
      break;
    case 'in-doubt': {
      // For an operator: the target cannot tell, or it committed and lost the guest (its agent
      // restarted), and the source's suspended copy is the last one.
      const unknown = end.lastOutcome === Outcome.UNKNOWN && !end.journalKept;
      const lost = end.lastGuestLost && targetGuest === undefined;
      outcome = unknown ? 'in-doubt-unknown' : lost ? 'in-doubt-guest-lost' : 'in-doubt';
      if (!unknown && !lost) violations.push(`still in doubt with the target up and reachable (last answer ${end.lastOutcome === null ? 'none' : Outcome[end.lastOutcome]}; ${where})`);
      else if (placement.source !== 'suspended') violations.push(`in doubt, but ${where}`);
      break;
    }
    default:
      outcome = 'unfinished';
      violations.push(`the job did not end (status ${stats.status}, phase ${stats.phase}; ${where})`);
  }
  if (end.journalKept && outcome !== 'unfinished') {
    const committed = end.targetRecord?.state === 'committed';
    if (committed !== (outcome === 'completed' || outcome === 'in-doubt-guest-lost')) violations.push(`the target's journal says ${end.targetRecord?.state ?? 'nothing'}, the job ${stats.status}`);
  }
  if (end.settled && (host.replicas.size > 0 || host.memoryBytesReserved !== 0)) {
    violations.push(`${host.replicas.size} replica(s), ${host.memoryBytesReserved} bytes reserved, left on the target ${end.quietMs} ms after the job ${outcome.startsWith('in-doubt-') ? 'settled in doubt' : 'ended'}`);
  }
  return { outcome, violations: [...placement.violations, ...violations] };
}
