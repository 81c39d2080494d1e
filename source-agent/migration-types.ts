// What a migration (migration.ts) can be given instead of the real thing, and the events it emits.

import type { Clock } from '../shared/clock.js';
import type { MigrationPhase } from '../shared/stats.js';
import type { MigrationHooks } from './faults.js';
import type { TargetPeer } from './peer.js';

/** What a migration can be given instead of the real thing (tests, fault injection). */
export interface MigrationDependencies {
  peer?: TargetPeer;
  clock?: Clock;
  hooks?: MigrationHooks;
}

/**
 * Events a job emits: `phase` (a phase began), `round` (a pre-copy round ended, or CR/TR answered
 * a stop request: the message says what happened), `progress` (periodic), `end` (final status).
 */
export interface MigrationEvents {
  phase: [MigrationPhase];
  round: [string];
  progress: [];
  end: [];
}
