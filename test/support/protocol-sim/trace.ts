// What happened in one simulated run, in order: every message sent, delivered or lost, every fault
// and every change of a guest copy's state, stamped with the simulated time. Two runs of one seed
// must produce the same trace (its digest says so); a failing seed's trace is printed on request.

import type { Clock } from '../../../shared/clock.js';

/** Lines kept at most when lines are kept: a run that loops is cut, its digest still whole. */
const LINES_MAX = 200_000;

export class Trace {
  events = 0;
  private hash1 = 0x811c9dc5;
  private hash2 = 0x01000193;
  readonly lines: string[] | null;

  constructor(
    private readonly clock: Clock,
    keepLines: boolean,
  ) {
    this.lines = keepLines ? [] : null;
  }

  add(text: string): void {
    this.events++;
    const line = `${this.clock.now().toFixed(3)} ${text}`;
    for (let i = 0; i < line.length; i++) {
      const c = line.charCodeAt(i);
      this.hash1 = Math.imul(this.hash1 ^ c, 0x01000193) >>> 0;
      this.hash2 = Math.imul(this.hash2 ^ c, 0x5bd1e995) >>> 0;
    }
    if (this.lines !== null && this.lines.length < LINES_MAX) this.lines.push(line);
  }

  /** A line kept for people (a delivery): in the printed trace only, not in the digest. */
  detail(text: string): void {
    if (this.lines !== null && this.lines.length < LINES_MAX) this.lines.push(`${this.clock.now().toFixed(3)}   ${text}`);
  }

  /** The trace's digest: equal for two runs only if they did the same things at the same instants. */
  get digest(): string {
    return this.hash1.toString(16).padStart(8, '0') + this.hash2.toString(16).padStart(8, '0');
  }
}
