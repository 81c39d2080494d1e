// Cuts a growing replay log into slices, the units a target replays: each slice ends right after
// an INSTRUCTION event (log-format.ts says why that is where a partial log may end) and says the
// icount reached there. The log reaches the disk through the recorder's stdio buffer, in blocks
// cut anywhere, even inside an event: the bytes after the last instruction event wait here for
// the next push. The last slice holds the log's END event.

import { assert } from '../../../assert.js';
import { LimitExceededError } from '../../../errors.js';
import { scanEvents } from './log-format.js';

/** One slice of the replay log. */
export interface LogSlice {
  /** 0 for the first slice sent, then 1, 2, ... */
  readonly seq: number;
  /** Offset in the log file of the slice's first byte (slices follow each other without gaps). */
  readonly offset: number;
  readonly data: Buffer;
  /**
   * icount at the slice's last instruction event (for the last slice, the log's last instruction
   * event): a target holding the log up to here may replay up to `icountEnd - 1`.
   */
  readonly icountEnd: number;
  /** Whether it ends with the log's END event. */
  readonly final: boolean;
}

export interface SlicerOptions {
  /** Log offset of the first byte pushed: an event boundary (after the header, or a boundary found earlier). */
  readonly startOffset: number;
  /** icount at that offset. */
  readonly startIcount: number;
  /** A slice ends at the last instruction event within this many bytes (more only when none falls inside). */
  readonly sliceBytesMax: number;
  /** Bytes held before they can be cut (a log without instruction events for that long is refused). */
  readonly pendingBytesMax: number;
  /**
   * Slices ending below this icount are parsed and dropped, not returned: a target that starts
   * from a snapshot taken at this icount needs the log from a boundary before it, not all of it.
   */
  readonly dropBelowIcount?: number;
}

export class LogSlicer {
  private pending: Buffer = Buffer.alloc(0);
  /** Log offset of pending[0]. */
  private pendingOffset: number;
  /** Position in `pending` up to which events are parsed, and the icount there. */
  private parsedTo = 0;
  private parsedIcount: number;
  /** icount at the last instruction event parsed so far. */
  private instructionIcount: number;
  private nextSeq = 0;
  private endSeen = false;
  /** Events parsed, and slices dropped below dropBelowIcount. */
  events = 0;
  slicesDropped = 0;

  constructor(readonly options: SlicerOptions) {
    assert(Number.isInteger(options.startOffset) && options.startOffset >= 0, `slicer start offset ${options.startOffset}`);
    assert(options.sliceBytesMax >= 64 && options.pendingBytesMax >= options.sliceBytesMax, `slicer bounds ${options.sliceBytesMax}/${options.pendingBytesMax}`);
    this.pendingOffset = options.startOffset;
    this.parsedIcount = options.startIcount;
    this.instructionIcount = options.startIcount;
  }

  /** Log offset of the next byte expected. */
  get offset(): number {
    return this.pendingOffset + this.pending.length;
  }

  /** icount at the last instruction event parsed. */
  get icount(): number {
    return this.instructionIcount;
  }

  /** Whether the END event has been seen (the last slice is out). */
  get ended(): boolean {
    return this.endSeen;
  }

  /** Bytes received and not yet in a slice. */
  get pendingBytes(): number {
    return this.pending.length;
  }

  /**
   * Takes the log's next bytes and returns the slices they complete: everything up to the last
   * instruction event, cut every sliceBytesMax or so; with the END event, the rest.
   */
  push(chunk: Buffer): LogSlice[] {
    assert(!this.endSeen, 'bytes pushed after the replay log ended');
    if (chunk.length === 0) return [];
    if (this.pending.length + chunk.length > this.options.pendingBytesMax) {
      throw new LimitExceededError(`${this.pending.length + chunk.length} bytes of replay log since its last instruction event at offset ${this.pendingOffset}, the limit is ${this.options.pendingBytesMax}`, { metadata: { offset: this.pendingOffset, limit: this.options.pendingBytesMax } });
    }
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const cuts: Array<[number, number]> = [];
    let sliceStart = 0;
    let lastBoundary = 0;
    let lastBoundaryIcount = this.instructionIcount;
    const max = this.options.sliceBytesMax;
    const scan = scanEvents(this.pending, this.parsedTo, this.pending.length, this.parsedIcount, (at) => this.pendingOffset + at, (endAt, icount) => {
      if (endAt - sliceStart > max && lastBoundary > sliceStart) {
        cuts.push([lastBoundary, lastBoundaryIcount]);
        sliceStart = lastBoundary;
      }
      lastBoundary = endAt;
      lastBoundaryIcount = icount;
    });
    this.events += scan.events;
    this.parsedIcount = scan.icount;
    this.instructionIcount = scan.lastInstructionIcount;
    if (scan.ended) {
      this.endSeen = true;
      cuts.push([scan.parsedTo, this.instructionIcount]);
    } else if (lastBoundary > sliceStart) {
      cuts.push([lastBoundary, lastBoundaryIcount]);
    }
    return this.cut(cuts, scan.parsedTo);
  }

  /** Turns the cut points into slices and keeps the bytes after the last one. */
  private cut(cuts: ReadonlyArray<[number, number]>, parsedTo: number): LogSlice[] {
    const slices: LogSlice[] = [];
    let from = 0;
    for (const [index, [to, icountEnd]] of cuts.entries()) {
      const final = this.endSeen && index === cuts.length - 1;
      if (!final && icountEnd < (this.options.dropBelowIcount ?? 0)) {
        this.slicesDropped++;
      } else {
        // A copy: the slice outlives `pending`, which is cut and grows by concatenation.
        slices.push({ seq: this.nextSeq++, offset: this.pendingOffset + from, data: Buffer.from(this.pending.subarray(from, to)), icountEnd, final });
      }
      from = to;
    }
    if (from > 0) {
      this.pending = Buffer.from(this.pending.subarray(from));
      this.pendingOffset += from;
    }
    this.parsedTo = parsedTo - from;
    return slices;
  }
}
