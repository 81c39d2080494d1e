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

// None now. The last one, a target that dies between recording its commit and activating the
// guest (the restarted agent answered COMMITTED and the source dropped the last copy), is fixed:
// the answer says the guest is no longer there (guest_present), and the source keeps its copy in
// doubt for an operator (outcome 'in-doubt-guest-lost').
export const KNOWN_ISSUES: readonly KnownIssue[] = [];

/** The known issue that explains every violation of `r`, if one does. */
export function knownIssueOf(r: SeedResult): KnownIssue | undefined {
  return KNOWN_ISSUES.find((k) => k.matches(r));
}
