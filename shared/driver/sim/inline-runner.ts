// A `sim` guest's vCPU on the agent's event loop (vCPU mode `inline`, and manual pacing): units
// run between the loop's other work. In real time, unit k starts at boot + k * unitMs; its busy
// part runs at once (real CPU work, holding the loop), then the idle part is slept out. A host too
// slow to keep up makes the guest run late, as an overcommitted VM does; past `lagMsMax` the
// schedule is reset and the lost time counted.

import { AbortedError, InvalidStateError } from '../../errors.js';
import type { Pacing } from './guest-options.js';
import type { GuestMemory } from './memory.js';
import type { Recording } from './recording.js';
import type { VcpuCore } from './vcpu-core.js';

/** What the runner needs of its guest. */
export interface InlineRunnerHost {
  readonly id: string;
  readonly core: VcpuCore;
  readonly memory: GuestMemory;
  readonly pacing: Pacing;
  readonly lagMsMax: number;
  running(): boolean;
  recording(): Recording | null;
  /** Post-copy: gets pages that have not arrived yet (null: the guest has no way to). */
  readonly pageFetcher: ((pages: Uint32Array) => Promise<void>) | null;
}

export class InlineRunner {
  stallMs = 0;
  lagResets = 0;
  pagesFetched = 0;

  constructor(private readonly host: InlineRunnerHost) {}

  /** Runs units in real time (or back to back with `asap` pacing) until `signal` aborts. */
  async runLoop(signal: AbortSignal): Promise<void> {
    const unitMs = this.host.core.config.unitMs;
    let next = performance.now();
    while (!signal.aborted) {
      await this.runUnit(signal);
      if (this.host.pacing === 'asap') {
        await new Promise<void>((resolve) => setImmediate(resolve));
        continue;
      }
      next += unitMs;
      const now = performance.now();
      if (now - next > this.host.lagMsMax) {
        next = now;
        this.lagResets++;
      }
      const delay = next - now;
      if (delay >= 1) await sleep(delay, signal);
      else await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /**
   * Waits for room in the bounded log queue and copy-on-write pool, then runs one unit. Returns
   * false, running nothing, if the guest was suspended or discarded meanwhile.
   */
  async runUnit(signal: AbortSignal): Promise<boolean> {
    const { core, memory } = this.host;
    const plan = core.plan();
    const stallStart = performance.now();
    let stalled = false;
    for (;;) {
      if (signal.aborted) throw new AbortedError('runner stopped');
      if (!this.host.running()) return false;
      const rec = this.host.recording();
      const cow = memory.cow;
      if (rec !== null && rec.full) {
        stalled = true;
        await waitFor(rec.waitForRoom(), signal);
        continue;
      }
      if (cow !== null && cow.preservedBytes > 0 && !cow.hasRoomFor(plan.pageWritesBound)) {
        stalled = true;
        await waitFor(cow.waitForRoom(), signal);
        continue;
      }
      break;
    }
    // Post-copy: the unit may only touch pages that are here. Its address stream is known in
    // advance (SimMachine.pagesTouched), so the missing ones are fetched first, as a vCPU blocked
    // on its page faults would wait for them.
    for (let missing = core.missingPages(plan); missing.length > 0; missing = core.missingPages(plan)) {
      const fetch = this.host.pageFetcher;
      if (fetch === null) throw new InvalidStateError(`guest ${this.host.id} has ${memory.missingCount} pages missing and no way to fetch them`);
      stalled = true;
      this.pagesFetched += missing.length;
      await waitFor(fetch(missing), signal);
      if (signal.aborted) throw new AbortedError('runner stopped');
      if (!this.host.running()) return false;
    }
    if (stalled) this.stallMs += performance.now() - stallStart;
    const rec = this.host.recording();
    const unit = core.run(plan, rec !== null && !rec.sealedFinal);
    if (unit !== null) rec!.seal(unit);
    return true;
  }
}

/** Resolves when `event` does or `signal` aborts, leaving no listener behind. */
function waitFor(event: Promise<void>, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const onAbort = () => resolve();
    signal.addEventListener('abort', onAbort, { once: true });
    void event.then(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    });
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
