// The log stream (CR/TR): sealed units as the recorder seals them, in order, within the target's
// unit window (units sent and not yet replayed, by count and by raw bytes). It ends after the
// final unit, which the suspend seals.

import type { LogRecorder } from '../../shared/driver/types.js';
import { AbortedError } from '../../shared/errors.js';
import type { MigrationStats } from '../../shared/stats.js';
import type { TransferChannel } from '../channel.js';

export interface UnitWindow {
  units: number;
  unitBytes: number;
}

export class LogStream {
  /** Raw sizes of the units sent and not yet replayed, oldest first. */
  private readonly unitBytesInFlight: number[] = [];
  private unitBytesInFlightTotal = 0;
  /** Units known replayed (the target's count as last seen). */
  private unitsReplayedSeen = 0;
  /** A unit taken from the recorder and not yet sent (waiting for the window): unsent log. */
  heldUnitBytes = 0;
  /** Log bytes on the wire (after lz4) of the units sent after the suspend: the final unit and any backlog. */
  wireBytesAfterSuspend = 0;
  /** Units taken from the recorder and not sent because a delta superseded them. */
  unitsSkipped = 0;
  /** Units before this sequence are superseded by a delta: not sent. */
  private skipBelow = 0;

  constructor(
    private readonly channel: TransferChannel,
    private readonly stats: MigrationStats,
    private readonly window: UnitWindow,
    private readonly rateBytesPerSec: number,
    /** Whether the guest was suspended: units sent from then on count as sent after the suspend. */
    private readonly suspended: () => boolean,
  ) {}

  /**
   * Sends units until the final one. `endedEarly` says whether a recording that ends without a
   * final unit is expected (the migration moved on) or an error.
   */
  async run(recorder: LogRecorder, signal: AbortSignal, endedEarly: () => boolean): Promise<void> {
    for (;;) {
      const unit = await recorder.nextSealedUnit(signal);
      if (unit === null) {
        if (endedEarly()) return;
        throw new AbortedError('recording ended before the final unit');
      }
      this.heldUnitBytes = unit.bytes.length;
      // A unit larger than the byte window goes alone, once nothing else is in flight.
      await this.channel.until(() => unit.sequence < this.skipBelow || this.fits(unit.bytes.length));
      if (unit.sequence < this.skipBelow) {
        this.unitsSkipped++;
        this.heldUnitBytes = 0;
        continue;
      }
      const message = this.channel.pack({ kind: 'unit', sequence: unit.sequence, final: unit.final, guestNs: unit.guestNs, eventCount: unit.eventCount }, unit.bytes);
      this.unitBytesInFlight.push(unit.bytes.length);
      this.unitBytesInFlightTotal += unit.bytes.length;
      this.stats.unitsSent++;
      this.heldUnitBytes = 0;
      if (this.suspended()) this.wireBytesAfterSuspend += message.dataBytes;
      await this.channel.write(message, this.rateBytesPerSec);
      if (unit.final) return;
    }
  }

  /** A delta as of the boundary before `sequence` began: units before it are no longer sent. */
  skipBefore(sequence: number): void {
    this.skipBelow = Math.max(this.skipBelow, sequence);
    this.channel.notify();
  }

  /** Whether a unit of `bytes` fits the window now. */
  private fits(bytes: number): boolean {
    this.forgetReplayed();
    const inFlight = this.stats.unitsSent - this.channel.progress.unitsReplayed;
    return inFlight < this.window.units && (this.unitBytesInFlightTotal === 0 || this.unitBytesInFlightTotal + bytes <= this.window.unitBytes);
  }

  /** Drops the units the target has replayed since last seen from the bytes in flight. */
  private forgetReplayed(): void {
    const replayed = this.channel.progress.unitsReplayed;
    for (; this.unitsReplayedSeen < replayed; this.unitsReplayedSeen++) this.unitBytesInFlightTotal -= this.unitBytesInFlight.shift() ?? 0;
  }
}
