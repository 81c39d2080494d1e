// The replay log of QEMU 7.2's record/replay (`-icount shift=auto,rr=record,rrfile=F`), log
// version 0xe0200c (replay/replay.c REPLAY_VERSION), read the way QEMU writes it
// (replay/replay-internal.c, replay-events.c, replay-char.c, replay-random.c, replay-net.c,
// replay-input.c, replay-time.c):
//
// - a 12-byte header: the version as a big-endian 32-bit word and 8 bytes of zeros. The recorder
//   skips it when it starts and writes the version only when it exits (replay_finish), so a log
//   still growing starts with 12 zero bytes; a target writes the header itself.
// - then events, each one byte of kind followed by its payload, integers big-endian:
//   INSTRUCTION (0) carries a 32-bit count of guest instructions executed since the event
//   before; the sum of these counts up to a point is QEMU's icount there (`query-replay`).
//   Every other event happens between instructions, at the icount reached so far.
//
// Where a slice of the log may end: right after an INSTRUCTION event. A replaying QEMU stopped
// by `replay-break` at an icount strictly inside the last INSTRUCTION event it has (at most the
// slice's icount minus one) still has instructions of that event to execute, so it reads nothing
// further: neither its vCPU nor its main loop (whose clock and checkpoint reads look at the next
// event only once the instructions are used up). Stopped exactly at the event's end, it would
// fetch the next event's kind byte: past the end of a partial log, the read fails and QEMU ends
// ("error reading the replay data"). See docs/qemu.md, "Record/replay".

import { CorruptDataError, LimitExceededError, UnimplementedError } from '../../../errors.js';

/** The log version QEMU 7.2 writes and accepts (replay/replay.c REPLAY_VERSION). */
export const REPLAY_LOG_VERSION = 0x00e0200c;
/** The header: the version (32 bits) and a 64-bit field QEMU leaves zero. */
export const REPLAY_LOG_HEADER_BYTES = 12;

/** Event kinds, as numbered in QEMU 7.2's enum ReplayEvents (replay/replay-internal.h). */
export const ReplayEvent = {
  INSTRUCTION: 0,
  INTERRUPT: 1,
  EXCEPTION: 2,
  /** EVENT_ASYNC + ReplayAsyncEventKind: BH, BH_ONESHOT, INPUT, INPUT_SYNC, CHAR_READ, BLOCK, NET. */
  ASYNC_BH: 3,
  ASYNC_BH_ONESHOT: 4,
  ASYNC_INPUT: 5,
  ASYNC_INPUT_SYNC: 6,
  ASYNC_CHAR_READ: 7,
  ASYNC_BLOCK: 8,
  ASYNC_NET: 9,
  /** EVENT_SHUTDOWN + ShutdownCause, 11 causes in 7.2 (none ... snapshot-load), both ends included. */
  SHUTDOWN_FIRST: 10,
  SHUTDOWN_LAST: 21,
  CHAR_WRITE: 22,
  CHAR_READ_ALL: 23,
  CHAR_READ_ALL_ERROR: 24,
  AUDIO_OUT: 25,
  AUDIO_IN: 26,
  RANDOM: 27,
  /** EVENT_CLOCK + ReplayClockKind (host, virtual_rt). */
  CLOCK_FIRST: 28,
  CLOCK_LAST: 29,
  /** EVENT_CHECKPOINT + ReplayCheckpoint (9 checkpoints in 7.2). */
  CHECKPOINT_FIRST: 30,
  CHECKPOINT_LAST: 38,
  END: 39,
} as const;

/** Longest byte array one event may carry (a character read, random bytes, a network packet). */
export const EVENT_ARRAY_BYTES_MAX = 1 << 20;

/** The header a replaying QEMU checks: the version, then zeros. */
export function replayLogHeader(): Buffer {
  const header = Buffer.alloc(REPLAY_LOG_HEADER_BYTES);
  header.writeUInt32BE(REPLAY_LOG_VERSION, 0);
  return header;
}

/** Bytes a length-prefixed array takes at `at` (its 32-bit length and the bytes), or -1 if the length is not there yet. */
function arrayBytes(buf: Buffer, at: number, end: number, offsetOf: (at: number) => number): number {
  if (at + 4 > end) return -1;
  const length = buf.readUInt32BE(at);
  if (length > EVENT_ARRAY_BYTES_MAX) {
    throw new LimitExceededError(`the replay log holds an event array of ${length} bytes at offset ${offsetOf(at)}, the limit is ${EVENT_ARRAY_BYTES_MAX}`, { metadata: { offset: offsetOf(at), bytes: length, limit: EVENT_ARRAY_BYTES_MAX } });
  }
  return 4 + length;
}

/** Payload bytes of an input event (replay_save_input_event: kind, then per kind), or -1 if incomplete. */
function inputEventBytes(buf: Buffer, at: number, end: number, offsetOf: (at: number) => number): number {
  if (at + 4 > end) return -1;
  const kind = buf.readUInt32BE(at);
  // InputEventKind: key (a KeyValue: number with a 64-bit value, or qcode), btn, rel, abs.
  if (kind === 0) {
    if (at + 8 > end) return -1;
    const keyKind = buf.readUInt32BE(at + 4);
    if (keyKind === 0) return 8 + 8 + 1;
    if (keyKind === 1) return 8 + 4 + 1;
    throw new CorruptDataError(`the replay log holds a key event of value kind ${keyKind} at offset ${offsetOf(at)}: QEMU 7.2 knows 0 (number) and 1 (qcode)`, { metadata: { offset: offsetOf(at), keyKind } });
  }
  if (kind === 1) return 4 + 4 + 1;
  if (kind === 2 || kind === 3) return 4 + 4 + 8;
  throw new CorruptDataError(`the replay log holds an input event of kind ${kind} at offset ${offsetOf(at)}: QEMU 7.2 knows 0 to 3`, { metadata: { offset: offsetOf(at), inputKind: kind } });
}

/**
 * Payload bytes of the event of `kind` whose payload starts at `at` in `buf` (data up to `end`),
 * or -1 when the payload is not complete yet. `offsetOf` turns a position in `buf` into a log
 * offset, for messages. Throws CorruptDataError on a kind QEMU 7.2 does not write,
 * UnimplementedError on an audio input event (not parsed: the guests run here have no audio).
 */
export function eventPayloadBytes(kind: number, buf: Buffer, at: number, end: number, offsetOf: (at: number) => number): number {
  const E = ReplayEvent;
  if (kind === E.INSTRUCTION) return 4;
  if (kind === E.INTERRUPT || kind === E.EXCEPTION || kind === E.ASYNC_INPUT_SYNC || kind === E.END) return 0;
  if (kind === E.ASYNC_BH || kind === E.ASYNC_BH_ONESHOT || kind === E.ASYNC_BLOCK) return 8;
  if (kind >= E.SHUTDOWN_FIRST && kind <= E.SHUTDOWN_LAST) return 0;
  if (kind >= E.CHECKPOINT_FIRST && kind <= E.CHECKPOINT_LAST) return 0;
  if (kind >= E.CLOCK_FIRST && kind <= E.CLOCK_LAST) return 8;
  if (kind === E.CHAR_WRITE) return 8;
  if (kind === E.CHAR_READ_ALL_ERROR || kind === E.AUDIO_OUT) return 4;
  if (kind === E.ASYNC_INPUT) return inputEventBytes(buf, at, end, offsetOf);
  if (kind === E.CHAR_READ_ALL) return arrayBytes(buf, at, end, offsetOf);
  if (kind === E.ASYNC_CHAR_READ) {
    // The character device's index (one byte), then the bytes read.
    const array = arrayBytes(buf, at + 1, end, offsetOf);
    return array < 0 ? -1 : 1 + array;
  }
  if (kind === E.ASYNC_NET) {
    // The network filter's index (one byte), its flags (32 bits), then the packet.
    const array = arrayBytes(buf, at + 5, end, offsetOf);
    return array < 0 ? -1 : 5 + array;
  }
  if (kind === E.RANDOM) {
    // The call's result (32 bits), then the bytes it returned.
    const array = arrayBytes(buf, at + 4, end, offsetOf);
    return array < 0 ? -1 : 4 + array;
  }
  if (kind === E.AUDIO_IN) {
    throw new UnimplementedError(`the replay log holds an audio input event at offset ${offsetOf(at - 1)}: not parsed (a guest recorded for migration has no audio device)`, { reason: 'NOT_SUPPORTED', metadata: { offset: offsetOf(at - 1) } });
  }
  throw new CorruptDataError(`the replay log holds an event of kind ${kind} at offset ${offsetOf(at - 1)}: QEMU 7.2 (log version 0x${REPLAY_LOG_VERSION.toString(16)}) writes kinds 0 to ${E.END}`, { metadata: { offset: offsetOf(at - 1), kind } });
}

/** Where the scan of a buffer ended. */
export interface ScanResult {
  /** Position in the buffer after the last complete event. */
  readonly parsedTo: number;
  /** icount after the last complete event. */
  readonly icount: number;
  /** Position after the last complete INSTRUCTION event (-1 if none), and the icount there. */
  readonly lastInstructionEnd: number;
  readonly lastInstructionIcount: number;
  /** Whether the END event was among them (it must be the log's last byte). */
  readonly ended: boolean;
  /** Events scanned. */
  readonly events: number;
}

/**
 * Scans complete events in `buf` from `start` to `end`, counting instructions from `icount`.
 * Stops at the first incomplete event (its bytes are still to come) or after END; bytes after
 * END are corrupt data. `onInstruction` hears each INSTRUCTION event's end (position, icount
 * there), the points where a slice may be cut.
 */
export function scanEvents(buf: Buffer, start: number, end: number, icount: number, offsetOf: (at: number) => number, onInstruction?: (endAt: number, icountThere: number) => void): ScanResult {
  let at = start;
  let events = 0;
  let lastInstructionEnd = -1;
  let lastInstructionIcount = icount;
  let ended = false;
  while (at < end) {
    const kind = buf[at]!;
    const payload = eventPayloadBytes(kind, buf, at + 1, end, offsetOf);
    if (payload < 0 || at + 1 + payload > end) break;
    if (kind === ReplayEvent.INSTRUCTION) {
      const count = buf.readUInt32BE(at + 1);
      if (count === 0) throw new CorruptDataError(`the replay log holds an instruction event of 0 instructions at offset ${offsetOf(at)} (QEMU writes none such)`, { metadata: { offset: offsetOf(at) } });
      icount += count;
      lastInstructionEnd = at + 5;
      lastInstructionIcount = icount;
      onInstruction?.(lastInstructionEnd, icount);
    }
    at += 1 + payload;
    events++;
    if (kind === ReplayEvent.END) {
      ended = true;
      if (at !== end) throw new CorruptDataError(`the replay log goes on for ${end - at} bytes after its END event at offset ${offsetOf(at - 1)}`, { metadata: { offset: offsetOf(at - 1), bytesAfter: end - at } });
      break;
    }
  }
  return { parsedTo: at, icount, lastInstructionEnd, lastInstructionIcount, ended, events };
}
