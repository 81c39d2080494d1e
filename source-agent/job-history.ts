// What a job went through, numbered: the phases it entered, its rounds and its end, each event
// with a sequence number, the last EVENTS_KEPT of them kept. A watcher starts from a snapshot
// (the job now, the phases passed) and, reconnecting, asks for the events after the last
// sequence it saw, so that nothing in between is lost.

import type { Clock } from '../shared/clock.js';
import type { MigrationPhase } from '../shared/stats.js';
import type { SourceMigration } from './migration.js';

/** Events kept per job for watchers that resume. */
export const EVENTS_KEPT = 1024;

export interface JobHistoryEvent {
  /** 1, 2, 3, ... for this job. */
  readonly sequence: number;
  readonly kind: 'phase' | 'round' | 'end';
  /** The phase entered (kind phase), or the phase the job was in. */
  readonly phase: MigrationPhase;
  /** What a round did; why the job ended (if it failed). */
  readonly message: string;
}

export class JobHistory {
  readonly phasesPassed: MigrationPhase[] = [];
  /** Milliseconds since the epoch when the job ended; 0 while it runs. */
  endedAtMs = 0;
  private readonly events: JobHistoryEvent[] = [];
  private sequence = 0;
  private readonly listeners = new Set<(event: JobHistoryEvent) => void>();

  constructor(job: SourceMigration, clock: Clock) {
    // The phase the job is in as the history starts (its first: the history comes with the job).
    this.add('phase', job.stats.phase, '');
    // `done` is recorded with the end, which says how the job ended.
    job.on('phase', (phase) => {
      if (phase !== 'done') this.add('phase', phase, '');
    });
    job.on('round', (message) => this.add('round', job.stats.phase, message));
    job.once('end', () => {
      this.endedAtMs = clock.epochMs();
      if (this.phasesPassed[this.phasesPassed.length - 1] !== 'done') this.phasesPassed.push('done');
      this.add('end', job.stats.phase, job.stats.error);
    });
  }

  /** The sequence of the last event (0 before any). */
  get lastSequence(): number {
    return this.sequence;
  }

  /** The kept events numbered above `sequence`, oldest first, and whether older ones were dropped meanwhile. */
  since(sequence: number): { events: JobHistoryEvent[]; gap: boolean } {
    const events = this.events.filter((e) => e.sequence > sequence);
    const oldest = this.events[0]?.sequence ?? this.sequence + 1;
    return { events, gap: sequence + 1 < oldest && sequence < this.sequence };
  }

  /** Calls `listener` for every event from now on; returns the unsubscribe function. */
  subscribe(listener: (event: JobHistoryEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private add(kind: JobHistoryEvent['kind'], phase: MigrationPhase, message: string): void {
    if (kind === 'phase') {
      if (this.phasesPassed[this.phasesPassed.length - 1] === phase) return;
      this.phasesPassed.push(phase);
    }
    const event: JobHistoryEvent = { sequence: ++this.sequence, kind, phase, message };
    this.events.push(event);
    if (this.events.length > EVENTS_KEPT) this.events.shift();
    for (const listener of this.listeners) listener(event);
  }
}
