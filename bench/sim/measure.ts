// Measuring on this host: wall time, CPU time and minor page faults of stretches of work, full
// garbage collections between parts, resident memory; and progress lines saying what runs.

import { setTimeout as sleep } from 'node:timers/promises';
import v8 from 'node:v8';
import vm from 'node:vm';
import { MB_BYTES } from '../format.js';

/**
 * Pause after a full collection: V8 frees ArrayBuffer memory a little after the collection that
 * found it dead. A second collection follows, then a shorter pause.
 */
const GC_SETTLE_MS = 50;
const GC_SETTLE_AGAIN_MS = 10;

export interface Timed {
  wallMs: number;
  cpuMs: number;
  /** Minor page faults of the process: first touches of memory (costly in a VM). */
  minorFaults: number;
}

/** Accumulates wall time, CPU time and minor page faults over several measured stretches. */
export class Stopwatch implements Timed {
  wallMs = 0;
  cpuMs = 0;
  minorFaults = 0;
  private startMs = 0;
  private startFaults = 0;
  private startCpu: NodeJS.CpuUsage | null = null;

  start(): void {
    this.startFaults = process.resourceUsage().minorPageFault;
    this.startCpu = process.cpuUsage();
    this.startMs = performance.now();
  }

  stop(): void {
    this.wallMs += performance.now() - this.startMs;
    const cpu = process.cpuUsage(this.startCpu ?? undefined);
    this.cpuMs += (cpu.user + cpu.system) / 1000;
    this.minorFaults += process.resourceUsage().minorPageFault - this.startFaults;
    this.startCpu = null;
  }

  get cpuPercent(): number {
    return (100 * this.cpuMs) / this.wallMs;
  }
}

/** MB/s of `bytes` handled in `ms`. */
export const megabytesPerSec = (bytes: number, ms: number): number => bytes / MB_BYTES / (ms / 1000);

/** Resident memory of this process. */
export const rssBytes = (): number => process.memoryUsage.rss();

let gcFunction: (() => void) | null | undefined;

/** V8's gc(): the global one under --expose-gc, else one exposed now; null where neither works. */
function gcFunctionOnce(): (() => void) | null {
  if (gcFunction !== undefined) return gcFunction;
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (typeof exposed === 'function') gcFunction = exposed;
  else {
    try {
      v8.setFlagsFromString('--expose-gc');
      gcFunction = vm.runInNewContext('gc') as () => void;
    } catch {
      gcFunction = null;
    }
  }
  return gcFunction;
}

/** Full garbage collections, so that freed guests do not count in the next part's RSS. */
export async function collectGarbage(): Promise<void> {
  const gc = gcFunctionOnce();
  if (gc === null) return;
  gc();
  await sleep(GC_SETTLE_MS);
  gc();
  await sleep(GC_SETTLE_AGAIN_MS);
}

/** Progress, on stderr so that stdout holds the figures only. */
export function progress(text: string): void {
  process.stderr.write(`[bench sim] ${text}\n`);
}
