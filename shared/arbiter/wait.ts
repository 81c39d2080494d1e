// Waiting for the next change under a guest's keys, for a standby that waits for the primary's
// lease to end: a watch from a known revision (so nothing between the read and the watch is
// missed), tried again while the store cannot be reached, until the wait's signal ends it. It
// also returns after `recheckMs` without a change, so that the caller reads again: an event a
// watch lost across a reconnection delays the standby by that much at most.

import type { Clock } from '../clock.js';
import type { ArbiterKv, KvWatch } from './kv.js';

/** Resolves at the first change under `prefix` from `fromRevision` on, or after recheckMs; rejects with the signal's reason. */
export async function nextChange(kv: ArbiterKv, clock: Clock, prefix: string, fromRevision: number, timing: { retryMs: number; recheckMs: number }, signal: AbortSignal): Promise<void> {
  for (;;) {
    if (signal.aborted) throw signal.reason;
    let watch: KvWatch | null = null;
    let changed!: () => void;
    const change = new Promise<void>((resolve) => (changed = resolve));
    try {
      watch = await kv.watch(prefix, fromRevision, () => changed());
    } catch {
      await clock.sleep(timing.retryMs, signal);
      continue;
    }
    const recheck = clock.timeout(timing.recheckMs, () => changed());
    try {
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(signal.reason);
        if (signal.aborted) return onAbort();
        signal.addEventListener('abort', onAbort, { once: true });
        void change.then(() => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        });
      });
      return;
    } finally {
      recheck.cancel();
      await watch.cancel().catch(() => undefined);
    }
  }
}
