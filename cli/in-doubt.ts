// What `vmmigrate migrate` says while the job it watches is in doubt (its commit went and the
// answer was lost): it keeps waiting, as the job does, and says once what it waits for and how an
// operator resolves it, and once more if the agent comes to need an operator's decision.

import { pb2 } from '../shared/transport/grpc.js';
import type { JobMessage } from './views.js';

/** The notes of one watched job: each said at most once. */
export class InDoubtNotes {
  private saidInDoubt = false;
  private saidOperator = false;

  constructor(private readonly jobId: string) {}

  /** The lines to print now for `job` (none when there is nothing new to say). */
  next(job: JobMessage): string[] {
    if (job.state !== pb2.JobState.JOB_STATE_IN_DOUBT) return [];
    const id = this.jobId;
    const lines: string[] = [];
    if (!this.saidInDoubt) {
      this.saidInDoubt = true;
      lines.push(
        `vmmigrate: job ${id} is in doubt: ${job.errorMessage || 'its commit was sent and the answer lost'}`,
        `vmmigrate: the guest stays suspended on the source until the target's decision is known, and the agent keeps asking the target for it; waiting for that (a second Ctrl-C stops waiting and leaves the job to the agent).`,
        `vmmigrate: to act now: 'vmmigrate resolve ${id}' asks the target again; 'vmmigrate resolve ${id} --resume-here' or '--discard-here' decides by hand (refused while the target may have decided otherwise, unless --force).`,
      );
    }
    // The agent gave up asking by itself, or the target's answer leaves the choice to a person.
    if (!this.saidOperator && job.errorReason === pb2.ErrorReason.MIGRATION_IN_DOUBT) {
      this.saidOperator = true;
      lines.push(`vmmigrate: job ${id} needs an operator: ${job.errorMessage}; still waiting.`);
    }
    return lines;
  }
}
