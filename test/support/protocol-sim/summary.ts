// Seeds run, counted: how the runs ended, which faults fired, and the violations with the command
// that replays each one. The bench prints it; the test prints the violations it fails on.

import type { RunOutcome } from './invariants.js';
import { knownIssueOf } from './known-issues.js';
import type { SeedResult } from './run.js';
import type { SimMethod } from './scenario.js';

export interface Tally {
  seeds: number;
  outcomes: Partial<Record<RunOutcome, number>>;
  /** Failed and cancelled runs by the job's error reason. */
  reasons: Record<string, number>;
  /** Runs whose job was in doubt at some point (its commit's answer lost). */
  wentInDoubt: number;
  /** In-doubt runs left UNKNOWN whose guest runs on the target (the rest run nowhere: the documented cost of no journal). */
  unknownTargetRuns: number;
  faultsFired: number;
  events: number;
  simMs: number;
  /** Runs that violated an invariant, and those a known issue explains, by its id. */
  violations: SeedResult[];
  known: Record<string, number>;
}

export function emptyTally(): Tally {
  return { seeds: 0, outcomes: {}, reasons: {}, wentInDoubt: 0, unknownTargetRuns: 0, faultsFired: 0, events: 0, simMs: 0, violations: [], known: {} };
}

export function count(tally: Tally, r: SeedResult): void {
  tally.seeds++;
  tally.outcomes[r.outcome] = (tally.outcomes[r.outcome] ?? 0) + 1;
  if (r.outcome === 'failed' || r.outcome === 'cancelled') tally.reasons[r.errorReason || 'none'] = (tally.reasons[r.errorReason || 'none'] ?? 0) + 1;
  if (r.outcomeQueries > 0) tally.wentInDoubt++;
  if (r.outcome === 'in-doubt-unknown' && r.targetRuns) tally.unknownTargetRuns++;
  tally.faultsFired += r.faultsFired.length;
  tally.events += r.events;
  tally.simMs += r.simMs;
  if (r.violations.length === 0) return;
  tally.violations.push(r);
  const known = knownIssueOf(r);
  if (known !== undefined) tally.known[known.id] = (tally.known[known.id] ?? 0) + 1;
}

/** Violations no known issue explains. */
export function unexplained(tally: Tally): SeedResult[] {
  return tally.violations.filter((r) => knownIssueOf(r) === undefined);
}

/** The command that replays `seed` exactly, with its trace. */
export function replayCommand(seed: number, method?: SimMethod): string {
  return `npm run bench -- protocol-sim --seed ${seed}${method === undefined ? '' : ` --method ${method}`} --trace`;
}

export function describeViolation(r: SeedResult, method?: SimMethod): string {
  const known = knownIssueOf(r);
  return [
    `seed ${r.seed}: ${r.violations.join('; ')}${known === undefined ? '' : ` [known issue ${known.id}]`}`,
    `  scenario: ${r.scenario}`,
    `  faults fired: ${r.faultsFired.length === 0 ? 'none' : r.faultsFired.join('; ')}`,
    `  job: ${r.outcome}${r.errorReason ? ` (${r.errorReason})` : ''}, ${r.outcomeQueries} outcome queries`,
    `  replay: ${replayCommand(r.seed, method)}`,
  ].join('\n');
}

/** Lines for people: outcomes, reasons, in doubt, faults, events, violations. */
export function describeTally(t: Tally): string[] {
  const entries = (record: Record<string, number>) =>
    Object.entries(record)
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
  const unknown = t.outcomes['in-doubt-unknown'] ?? 0;
  return [
    `seeds run: ${t.seeds}`,
    `outcomes: ${entries(t.outcomes as Record<string, number>)}`,
    `failed or cancelled, by reason: ${entries(t.reasons) || 'none'}`,
    `in doubt at some point: ${t.wentInDoubt}; left in doubt (UNKNOWN: the target kept no journal and restarted): ${unknown}, guest running on the target in ${t.unknownTargetRuns}, nowhere in ${unknown - t.unknownTargetRuns}`,
    `faults fired: ${t.faultsFired}; events: ${t.events}; simulated time: ${(t.simMs / 1000).toFixed(0)} s`,
    `violations: ${t.violations.length} (${entries(t.known) ? `explained by known issues: ${entries(t.known)}; ` : ''}unexplained: ${unexplained(t).length})`,
  ];
}
