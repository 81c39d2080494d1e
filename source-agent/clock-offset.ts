// The target's monotonic clock as seen from ours, so that the source can tell when the target
// resumed a guest in its own time: the downtime is what the guest saw (suspend here to resume
// there), not when the news arrived. Each ping carries the target's clock at its answer (Capacity
// clock_ms); as in NTP, the sample with the fastest round trip is the best one, and the offset is
// known to within half that round trip.

export class ClockOffset {
  /** The target's clock minus ours, from the best sample; NaN until one arrived. */
  private offsetMs = Number.NaN;
  private bestRttMs = Number.POSITIVE_INFINITY;
  /** The agent run whose clock the samples are of (a restarted target has another clock). */
  private instance = '';

  /** A ping sent at `sentMs` and answered at `receivedMs` (our clock) with the target's `targetMs`. */
  add(sentMs: number, receivedMs: number, targetMs: number, instanceId: string): void {
    const rtt = receivedMs - sentMs;
    if (!(targetMs > 0) || !Number.isFinite(targetMs) || !(rtt >= 0)) return;
    if (instanceId !== this.instance) {
      // Another run of the target agent: its clock starts afresh.
      this.instance = instanceId;
      this.bestRttMs = Number.POSITIVE_INFINITY;
    }
    if (rtt > this.bestRttMs) return;
    this.bestRttMs = rtt;
    this.offsetMs = targetMs - (sentMs + rtt / 2);
  }

  /** Known, for the target run `instanceId` (any run when '' is given). */
  knownFor(instanceId = ''): boolean {
    return Number.isFinite(this.offsetMs) && (instanceId === '' || instanceId === this.instance);
  }

  /** How far off a converted time may be: half the best round trip. */
  get uncertaintyMs(): number {
    return this.bestRttMs / 2;
  }

  /** A time of the target's clock on ours. */
  toLocal(targetMs: number): number {
    return targetMs - this.offsetMs;
  }
}
