// What the lifecycle (migration.ts) lends a method for one migration (methods/method.ts,
// MethodContext): fixed parts, and live views of the migration's state (its log, the target's
// windows, the channel once open, the suspend) read through the closures given.

import type { Logger } from 'pino';
import type { Clock } from '../shared/clock.js';
import type { SourceGuest } from '../shared/driver/types.js';
import { InvalidStateError } from '../shared/errors.js';
import type { MigrationPhase, MigrationStats } from '../shared/stats.js';
import type { TransferChannel } from './channel.js';
import type { MethodContext, MethodTimings, MigrationRequest, TargetWindows } from './methods/method.js';
import type { NativeRelay } from './native-relay.js';

export interface ContextSource {
  guest: SourceGuest;
  clock: Clock;
  request: MigrationRequest;
  stats: MigrationStats;
  signal: AbortSignal;
  timings: MethodTimings;
  log(): Logger;
  windows(): TargetWindows;
  /** null until the transfer stream is open. */
  channel(): TransferChannel | null;
  suspended(): boolean;
  suspendedAtMs(): number;
  targetCapabilities(): readonly string[];
  open(firstSequence: number): void;
  setPhase(phase: MigrationPhase): void;
  round(message: string): void;
  progress(): void;
  elapsedMs(): number;
  downtimeTo(resumedAtTargetMs: number, resumeToReplyMs: number): number;
  markPointOfNoReturn(): void;
  openNativeRelay(postcopy: boolean): NativeRelay;
}

export function methodContext(src: ContextSource): MethodContext {
  return {
    guest: src.guest,
    clock: src.clock,
    request: src.request,
    stats: src.stats,
    signal: src.signal,
    timings: src.timings,
    throughputBytesPerSec: 0,
    get log() {
      return src.log();
    },
    get windows() {
      return src.windows();
    },
    get channel() {
      const channel = src.channel();
      if (channel === null) throw new InvalidStateError('the transfer stream is not open yet');
      return channel;
    },
    get suspended() {
      return src.suspended();
    },
    get suspendedAtMs() {
      return src.suspendedAtMs();
    },
    get targetCapabilities() {
      return src.targetCapabilities();
    },
    open: (fields = {}) => src.open(fields.firstSequence ?? 0),
    setPhase: src.setPhase,
    round: src.round,
    progress: src.progress,
    elapsedMs: src.elapsedMs,
    downtimeTo: src.downtimeTo,
    markPointOfNoReturn: src.markPointOfNoReturn,
    openNativeRelay: src.openNativeRelay,
  };
}
