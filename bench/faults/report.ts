// The fault matrix's report: a table fault x phase x method -> outcome counts, violations and known
// gaps, then every violating case with what it saw and the command that replays it.

import { caseId, FAULT_KINDS, FAULT_METHODS, METHOD_PHASES, replayCommand } from './cases.js';
import { CASE_OUTCOMES, type CaseOutcome } from './observation.js';
import type { CaseResult } from './run-case.js';

interface Cell {
  cases: number;
  /** The fault struck in the phase the case named (not later). */
  landed: number;
  outcomes: Record<CaseOutcome, number>;
  /** Cases with a violation not explained by a known gap. */
  violations: number;
  knownGaps: number;
}

function emptyCell(): Cell {
  return { cases: 0, landed: 0, outcomes: Object.fromEntries(CASE_OUTCOMES.map((o) => [o, 0])) as Record<CaseOutcome, number>, violations: 0, knownGaps: 0 };
}

function add(cell: Cell, r: CaseResult): void {
  cell.cases++;
  if (r.observation.injection?.landedPhase === r.observation.case.phase) cell.landed++;
  cell.outcomes[r.verdict.outcome]++;
  if (r.verdict.violations.length > 0) cell.violations++;
  if (r.verdict.knownGap !== null) cell.knownGaps++;
}

const HEADER = ['fault', 'phase', 'method', 'cases', 'landed', ...CASE_OUTCOMES, 'violations', 'known gap'];

/** One row per fault x phase x method that has cases, in the matrix's order, and a total row. */
export function formatTable(results: readonly CaseResult[]): string {
  const cells = new Map<string, Cell>();
  const total = emptyCell();
  for (const r of results) {
    const { fault, method, phase } = r.observation.case;
    const key = `${fault}|${phase}|${method}`;
    const cell = cells.get(key) ?? emptyCell();
    cells.set(key, cell);
    add(cell, r);
    add(total, r);
  }
  const rows: string[][] = [];
  const row = (names: string[], c: Cell) => [...names, c.cases, c.landed, ...CASE_OUTCOMES.map((o) => c.outcomes[o]), c.violations, c.knownGaps].map(String);
  for (const fault of FAULT_KINDS) {
    for (const method of FAULT_METHODS) {
      for (const phase of METHOD_PHASES[method]) {
        const cell = cells.get(`${fault}|${phase}|${method}`);
        if (cell !== undefined) rows.push(row([fault, phase, method], cell));
      }
    }
  }
  rows.push(row(['total', '', ''], total));
  const widths = HEADER.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cols: string[]) => `| ${cols.map((c, i) => (i < 3 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (i < 3 ? `${'-'.repeat(w + 1)}-` : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [line(HEADER), rule, ...rows.map(line)].join('\n');
}

/** What a violating (or known-gap) case saw, in a few lines, with its replay command. */
export function describeCase(r: CaseResult): string {
  const o = r.observation;
  const lines = [`${caseId(o.case)}: ${r.verdict.outcome}${r.verdict.knownGap ? ` (known gap: ${r.verdict.knownGap})` : ''}`];
  for (const v of r.verdict.violations) lines.push(`  violation: ${v}`);
  for (const v of r.verdict.explained) lines.push(`  explained by the known gap: ${v}`);
  const i = o.injection;
  lines.push(i === null ? '  fault: not injected (the job ended before the phase began)' : `  fault: at ${i.atMs.toFixed(0)} ms, in ${i.landedPhase}: ${i.detail}`);
  if (o.sourceJob !== null) {
    const j = o.sourceJob;
    lines.push(`  source job: ${j.state} in ${j.phase}${j.errorReason ? ` (${j.errorReason})` : ''}${j.outcomeQueries ? `, ${j.outcomeQueries} outcome queries` : ''}${j.errorMessage ? `: ${j.errorMessage}` : ''}`);
  } else {
    lines.push('  source job: gone with the source agent');
  }
  if (o.targetJob !== null) lines.push(`  target job: ${o.targetJob.state}, committed ${o.targetJob.committed}, missing pages ${o.targetJob.missingPages}${o.targetJob.errorMessage ? `: ${o.targetJob.errorMessage}` : ''}`);
  lines.push(`  replay: ${replayCommand(o.case)}`);
  if (r.logsKeptIn !== null) lines.push(`  logs: ${r.logsKeptIn}`);
  return lines.join('\n');
}

export interface Summary {
  cases: number;
  violatingCases: number;
  knownGapCases: number;
  notLanded: number;
  text: string;
}

export function summarize(results: readonly CaseResult[], elapsedMs: number): Summary {
  const violating = results.filter((r) => r.verdict.violations.length > 0);
  const gaps = results.filter((r) => r.verdict.knownGap !== null);
  const notLanded = results.filter((r) => r.observation.injection?.landedPhase !== r.observation.case.phase).length;
  const byGap = new Map<string, number>();
  for (const r of gaps) byGap.set(r.verdict.knownGap!, (byGap.get(r.verdict.knownGap!) ?? 0) + 1);
  const text = [
    `${results.length} cases in ${(elapsedMs / 1000).toFixed(1)} s; ${violating.length} with violations; ${gaps.length} known gaps${[...byGap].map(([g, n]) => `\n  known gap, ${n} cases: ${g}`).join('')}`,
    `${notLanded} faults struck after their phase had ended (or never: the job ended first); the 'landed' column counts the others`,
  ].join('\n');
  return { cases: results.length, violatingCases: violating.length, knownGapCases: gaps.length, notLanded, text };
}
