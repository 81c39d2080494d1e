// Violations the simulation found whose cause is known and reported, not yet fixed in the agents:
// each is recognized by what the run did, so that the test marks the seeds it explains as `todo`
// (and fails on any other violation), and the bench counts them apart. Remove an entry once its
// fix is in: the seeds it matched must then pass.

import type { SeedResult } from './run.js';

export interface KnownIssue {
  id: string;
  summary: string;
  matches(r: SeedResult): boolean;
}

export const KNOWN_ISSUES: readonly KnownIssue[] = [
  {
    id: 'committed-not-activated',
    summary:
      "the target agent dies between recording `committed` in its journal and activating the replica " +
      '(session.ts onCommit: recordCommit, send commitResult, replica.activate): the replica goes with the process, ' +
      'the restarted agent answers COMMITTED from its journal, the source drops its suspended copy and reports ' +
      'completed: the guest runs nowhere',
    matches: (r) =>
      r.faultsFired.some((f) => /^crash before, .* @ commitResult#\d+ ->S$/.test(f)) &&
      r.violations.length > 0 &&
      r.violations.every((v) => v.startsWith('reported completed, but source copy discarded, target copy absent')),
  },
];

/** The known issue that explains every violation of `r`, if one does. */
export function knownIssueOf(r: SeedResult): KnownIssue | undefined {
  return KNOWN_ISSUES.find((k) => k.matches(r));
}
