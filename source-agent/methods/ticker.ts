// The periodic tick of a method while the guest runs: statistics for watchers, and the guest's
// incremental digest kept fresh, so that the one taken at the commitment (inside the downtime)
// only hashes the pages written since.

import type { Timer } from '../../shared/clock.js';
import type { MethodContext } from './method.js';

export function startTicker(ctx: MethodContext, onTick: () => void = () => {}): Timer {
  return ctx.clock.interval(ctx.timings.monitorIntervalMs, () => {
    ctx.progress();
    if (ctx.stats.phase === 'log-transfer' || ctx.stats.phase === 'checkpoint') ctx.guest.digest();
    onTick();
  });
}
