// The periodic tick of a method while the guest runs: statistics for watchers, and the guest's
// incremental digest kept fresh, so that the one taken at the commitment (inside the downtime)
// only hashes the pages written since. A protection has no commitment until its planned
// switchover: its digest waits for that (hashing a CPU-bound guest's writes every tick cost the
// primary about 8% of a core, taken from the guest and the standby).

import type { Timer } from '../../shared/clock.js';
import type { MethodContext } from './method.js';

export function startTicker(ctx: MethodContext, onTick: () => void = () => {}, commitAhead: () => boolean = () => true): Timer {
  return ctx.clock.interval(ctx.timings.monitorIntervalMs, () => {
    ctx.progress();
    if ((ctx.stats.phase === 'log-transfer' || ctx.stats.phase === 'checkpoint') && commitAhead()) ctx.guest.digest();
    onTick();
  });
}
