// The fault matrix's invariants, judged on what a case saw (observation.ts); a pure function,
// tested on its own (test/fault-invariants.test.ts).
//
//   one copy     exactly one running copy of the guest over both hosts (a suspended copy is not
//                running), unless the host that held the only copy died: sim guests die with their
//                agent, and a restarted agent has none;
//   placement    the job's end matches where the guest runs: completed, on the target only;
//                failed or cancelled, on the source only. A job still in doubt after the bound
//                breaks it unless the target cannot be reached. With the source agent killed its
//                job is gone: the target's record (committed or not) says where the guest belongs;
//   reservations each host's reserved memory equals the memory of the guests it holds, within the
//                bound (no replica, no reservation left behind);
//   SIGTERM      an agent told to stop exits 0 within the grace (README, "The agents");
//   pages        (post-copy) a guest that runs on the target lacking pages has them kept on the
//                source: the source's suspended copy is the only place they exist.
//
// Known gaps are named and counted, not hidden: a link cut that fails the migration where it
// should have been resumed (the guest stays on the source: safe, but a shortfall); and a post-copy
// source that dies after the switch takes the pages the target lacked with it (post-copy's own
// weakness: Hines et al.). A post-copy whose transfer ends after the switch with the guest split
// between the hosts is a violation: the transfer is resumed, however long it takes.

import type { CaseObservation, CaseOutcome, CaseVerdict, HostView } from './observation.js';

type Side = 'source' | 'target';
const OTHER: Record<Side, Side> = { source: 'target', target: 'source' };

export const GAP_NO_RECONNECTION = 'a link cut failed the migration where it should have been resumed (the guest stays on the source)';
export const GAP_POSTCOPY_SOURCE_DIED = "post-copy: the source died after the switch, with the pages the target's guest lacked";

function running(host: HostView): number {
  return host.guests.filter((g) => g.state === 'running').length;
}

function states(host: HostView): string {
  return host.guests.length === 0 ? 'no guest' : host.guests.map((g) => `${g.id} ${g.state}`).join(', ');
}

/** Where the guest belongs by the job (or the target's record), and why; null when that is not known. */
function holderOf(o: CaseObservation, violations: string[]): { side: Side; why: string } | null {
  const job = o.sourceJob;
  if (job === null) {
    // Post-copy's point of no return is the target's resume (its journal records the commit then).
    const committed = (o.targetJob?.committed ?? false) || (o.case.method === 'postcopy' && (o.targetJob?.activated ?? false));
    return { side: committed ? 'target' : 'source', why: `the source agent was stopped, and the target ${committed ? 'committed' : 'did not commit'}` };
  }
  if (job.state === 'succeeded') return { side: 'target', why: 'the job completed' };
  if (job.state === 'failed' || job.state === 'cancelled') return { side: 'source', why: `the job ${job.state}` };
  if (job.state === 'in-doubt') {
    // Left for an operator, rightly: the target committed and then died with the guest (the copy
    // kept here is the last one), or it keeps no journal and cannot tell.
    const forOperator = job.errorReason === 'MIGRATION_IN_DOUBT' && o.restarted.target;
    if (o.targetReachable && !forOperator) violations.push(`the job is still in doubt after the bound although the target answers (${job.outcomeQueries} outcome queries): ${job.errorMessage}`);
    return null;
  }
  violations.push(`the job did not end within the bound: ${job.state} in ${job.phase}`);
  return null;
}

function checkPlacement(o: CaseObservation, violations: string[]): CaseOutcome {
  const copies: Record<Side, number> = { source: running(o.hosts.source), target: running(o.hosts.target) };
  const where = `source: ${states(o.hosts.source)}; target: ${states(o.hosts.target)}`;
  if (copies.source + copies.target > 1) violations.push(`${copies.source + copies.target} running copies (${where})`);
  const holder = holderOf(o, violations);
  if (holder === null) return 'unresolved';
  const other = OTHER[holder.side];
  if (copies[other] > 0) violations.push(`the guest runs on the ${other}, but ${holder.why}: it belongs on the ${holder.side} (${where})`);
  if (o.restarted[holder.side]) return 'host-died';
  if (copies[holder.side] === 0) violations.push(`no running copy on the ${holder.side}, where ${holder.why} puts it, and that host did not die (${where})`);
  if (o.sourceJob?.inDoubtSeen && o.sourceJob.ended) return 'in-doubt-resolved';
  return holder.side === 'target' ? 'completed' : 'failed-on-source';
}

function checkReservations(o: CaseObservation, violations: string[]): void {
  // A job that has not ended holds its reservations by right (it is reported as such).
  if (o.settled || (o.sourceJob !== null && !o.sourceJob.ended)) return;
  for (const side of ['source', 'target'] as const) {
    const host = o.hosts[side];
    const pending = host.guests.filter((g) => g.state !== 'running' && g.state !== 'suspended');
    if (host.reservedBytes !== host.heldBytes || pending.length > 0) {
      violations.push(`a reservation is left on the ${side}: ${host.reservedBytes} bytes reserved, its guests hold ${host.heldBytes} (${states(host)})`);
    }
  }
}

function checkExit(o: CaseObservation, violations: string[]): void {
  const injection = o.injection;
  if (injection === null || !o.case.fault.startsWith('sigterm-') || injection.exit === undefined) return;
  const role = o.case.fault.slice('sigterm-'.length);
  if (injection.exit === null) violations.push(`the ${role} agent did not exit after SIGTERM within the grace (SIGKILLed)`);
  else if (injection.exit.code !== 0) violations.push(`the ${role} agent exited with code ${injection.exit.code}, signal ${injection.exit.signal}, after SIGTERM`);
}

/** Post-copy: the pages a guest running on the target lacks must still be somewhere (the source's suspended copy). */
function checkPages(o: CaseObservation, violations: string[]): string | null {
  const missing = Math.max(o.targetJob?.missingPages ?? 0, Number(/lacks (\d+) pages/.exec(o.sourceJob?.errorMessage ?? '')?.[1] ?? 0));
  if (o.case.method !== 'postcopy' || missing === 0 || running(o.hosts.target) === 0) return null;
  if (o.hosts.source.guests.some((g) => g.state === 'suspended')) {
    violations.push(`post-copy interrupted after the switch: the guest runs on the target lacking ${missing} pages the source keeps suspended`);
    return null;
  }
  if (o.restarted.source) return GAP_POSTCOPY_SOURCE_DIED;
  const job = o.sourceJob === null ? 'gone' : o.sourceJob.state;
  violations.push(`the guest runs on the target lacking ${missing} pages, and the source no longer holds them (its job ${job}, no copy left there): they are lost`);
  return null;
}

export function evaluate(o: CaseObservation): CaseVerdict {
  if (o.harnessError !== null) return { outcome: 'unresolved', violations: [`the harness failed: ${o.harnessError}`], explained: [], knownGap: null };
  const placement: string[] = [];
  const outcome = checkPlacement(o, placement);
  const others: string[] = [];
  checkReservations(o, others);
  checkExit(o, others);
  const pagesGap = checkPages(o, others);
  const safe = placement.length === 0 && others.length === 0;
  const knownGap = pagesGap ?? (safe && o.case.fault === 'cut' && outcome === 'failed-on-source' && o.injection !== null ? GAP_NO_RECONNECTION : null);
  return { outcome, violations: [...placement, ...others], explained: [], knownGap };
}
