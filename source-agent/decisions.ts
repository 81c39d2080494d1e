// The source's side of the decision journal (shared/journal.ts): a migration whose commit went
// out is recorded `commit-sent` before it goes, then how it ended here (`resumed`, the guest runs
// here again; `handed-over`, the target has it). A record left at `commit-sent` when the agent
// starts again was in doubt when the agent stopped: with the sim driver the guest's copy here
// went with the process, and the record says `abandoned` (the target's journal holds the outcome).

import type { Logger } from 'pino';
import type { DecisionJournal, JournalState } from '../shared/journal.js';

export class SourceDecisions {
  /** The commit-sent record was written: the end is recorded too. */
  private open = false;

  constructor(
    private readonly journal: DecisionJournal,
    private readonly migrationId: string,
    private readonly guestId: string,
    private readonly target: string,
  ) {}

  /** Before the commit (or post-copy's machine state) goes; throws when it cannot be recorded, and then nothing goes. */
  commitSent(): void {
    this.record('commit-sent');
    this.open = true;
  }

  resumed(): void {
    if (this.open) this.close('resumed');
  }

  handedOver(): void {
    if (this.open) this.close('handed-over');
  }

  private close(state: JournalState): void {
    this.open = false;
    try {
      this.record(state);
    } catch {
      // The outcome itself is the target's record; ours only reports it.
    }
  }

  private record(state: JournalState): void {
    this.journal.append({ migrationId: this.migrationId, role: 'source', state, guestId: this.guestId, peer: this.target });
  }
}

/** At start: outgoing migrations a previous run left in doubt are recorded abandoned, and said. */
export function recoverSourceRecords(journal: DecisionJournal, log: Logger): number {
  let count = 0;
  for (const r of journal.entries()) {
    if (r.role !== 'source' || r.state !== 'commit-sent') continue;
    journal.append({ ...r, atMs: undefined, state: 'abandoned', detail: "the agent stopped while the migration was in doubt; the sim guest's copy here went with it" });
    log.error({ jobId: r.migrationId, guestId: r.guestId, target: r.peer }, "an outgoing migration was in doubt when the agent stopped: its outcome is the target's record (its guest runs there if it committed)");
    count++;
  }
  return count;
}
