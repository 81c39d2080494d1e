// What the source sends the target, over any Node byte stream (a socket, a pipe, an agent's
// channel): the checkpoint (the qcow2 file holding the snapshot the replay starts from), then
// the log's slices in order. Each frame is
//   [header bytes: u32 BE][payload bytes: u32 BE][header: UTF-8 JSON][payload]
// with the header saying what the frame is. Both lengths are bounded; a frame that breaks a
// bound, does not parse or names an unknown type is corrupt data and ends the stream.

import type { Readable, Writable } from 'node:stream';
import { CorruptDataError, LimitExceededError, UnavailableError } from '../../../errors.js';

/** Bound on a frame's JSON header. */
export const FRAME_HEADER_BYTES_MAX = 4096;
/** Bound on a frame's payload: a checkpoint chunk or one slice. */
export const FRAME_PAYLOAD_BYTES_MAX = 16 * 2 ** 20;
const PREFIX_BYTES = 8;

/** The checkpoint's description, before its bytes. */
export interface CheckpointHeader {
  readonly type: 'checkpoint';
  /** The snapshot's tag in the qcow2 file (`init`: the state at icount 0). */
  readonly tag: string;
  /** The icount at which it was taken. */
  readonly icount: number;
  /** Size of the qcow2 file. */
  readonly bytes: number;
}

export interface CheckpointDataHeader {
  readonly type: 'checkpoint-data';
}

export interface CheckpointEndHeader {
  readonly type: 'checkpoint-end';
  /** sha256 of the qcow2 file, hex. */
  readonly sha256: string;
}

export interface SliceHeader {
  readonly type: 'slice';
  readonly seq: number;
  readonly offset: number;
  readonly icountEnd: number;
  readonly final: boolean;
}

export type FrameHeader = CheckpointHeader | CheckpointDataHeader | CheckpointEndHeader | SliceHeader;

export interface Frame {
  readonly header: FrameHeader;
  readonly payload: Buffer;
}

/** The bytes of one frame. */
export function encodeFrame(header: FrameHeader, payload: Buffer = Buffer.alloc(0)): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  if (json.length > FRAME_HEADER_BYTES_MAX || payload.length > FRAME_PAYLOAD_BYTES_MAX) {
    throw new LimitExceededError(`a ${header.type} frame of a ${json.length}-byte header and a ${payload.length}-byte payload, the limits are ${FRAME_HEADER_BYTES_MAX} and ${FRAME_PAYLOAD_BYTES_MAX}`, { metadata: { headerBytes: json.length, payloadBytes: payload.length } });
  }
  const prefix = Buffer.alloc(PREFIX_BYTES);
  prefix.writeUInt32BE(json.length, 0);
  prefix.writeUInt32BE(payload.length, 4);
  return Buffer.concat([prefix, json, payload]);
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** Checks a decoded header's fields; throws CorruptDataError naming the first wrong one. */
function checkHeader(value: unknown): FrameHeader {
  const h = value as Record<string, unknown>;
  const bad = (field: string) => new CorruptDataError(`a frame header with a missing or malformed '${field}': ${JSON.stringify(value).slice(0, 200)}`, { metadata: { field } });
  if (h === null || typeof h !== 'object') throw bad('type');
  switch (h.type) {
    case 'checkpoint':
      if (typeof h.tag !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(h.tag)) throw bad('tag');
      if (!isCount(h.icount)) throw bad('icount');
      if (!isCount(h.bytes)) throw bad('bytes');
      return { type: 'checkpoint', tag: h.tag, icount: h.icount, bytes: h.bytes };
    case 'checkpoint-data':
      return { type: 'checkpoint-data' };
    case 'checkpoint-end':
      if (typeof h.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(h.sha256)) throw bad('sha256');
      return { type: 'checkpoint-end', sha256: h.sha256 };
    case 'slice':
      if (!isCount(h.seq)) throw bad('seq');
      if (!isCount(h.offset)) throw bad('offset');
      if (!isCount(h.icountEnd)) throw bad('icountEnd');
      if (typeof h.final !== 'boolean') throw bad('final');
      return { type: 'slice', seq: h.seq, offset: h.offset, icountEnd: h.icountEnd, final: h.final };
    default:
      throw bad('type');
  }
}

/**
 * Reads frames from `stream` until it ends; a stream that ends inside a frame is corrupt data.
 * Chunks are kept as they come and joined once there are enough bytes for the next step (the
 * prefix, or the whole frame it announces), so a large frame is copied once, not per chunk.
 */
export async function* readFrames(stream: Readable): AsyncGenerator<Frame> {
  let buffered: Buffer = Buffer.alloc(0);
  const pending: Buffer[] = [];
  let pendingBytes = 0;
  let need = PREFIX_BYTES;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    pending.push(chunk);
    pendingBytes += chunk.length;
    if (buffered.length + pendingBytes < need) continue;
    buffered = Buffer.concat([buffered, ...pending]);
    pending.length = 0;
    pendingBytes = 0;
    for (;;) {
      need = PREFIX_BYTES;
      if (buffered.length < PREFIX_BYTES) break;
      const headerBytes = buffered.readUInt32BE(0);
      const payloadBytes = buffered.readUInt32BE(4);
      if (headerBytes > FRAME_HEADER_BYTES_MAX || payloadBytes > FRAME_PAYLOAD_BYTES_MAX) {
        throw new CorruptDataError(`a frame announces a ${headerBytes}-byte header and a ${payloadBytes}-byte payload, the limits are ${FRAME_HEADER_BYTES_MAX} and ${FRAME_PAYLOAD_BYTES_MAX}`, { metadata: { headerBytes, payloadBytes } });
      }
      const total = PREFIX_BYTES + headerBytes + payloadBytes;
      need = total;
      if (buffered.length < total) break;
      let parsed: unknown;
      try {
        parsed = JSON.parse(buffered.subarray(PREFIX_BYTES, PREFIX_BYTES + headerBytes).toString('utf8'));
      } catch (error) {
        throw new CorruptDataError(`a frame header that is not JSON: ${(error as Error).message}`, { cause: error });
      }
      const header = checkHeader(parsed);
      const payload = Buffer.from(buffered.subarray(PREFIX_BYTES + headerBytes, total));
      buffered = buffered.subarray(total);
      yield { header, payload };
    }
  }
  const left = buffered.length + pendingBytes;
  if (left > 0) throw new CorruptDataError(`the stream ended inside a frame, ${left} bytes into it`, { metadata: { bytes: left } });
}

/** Writes frames to `stream`, waiting for it to drain when its buffer is full (backpressure). */
export class FrameWriter {
  /** Bytes written, frames included. */
  bytes = 0;

  constructor(private readonly stream: Writable) {}

  async write(header: FrameHeader, payload?: Buffer): Promise<void> {
    if (this.stream.destroyed || this.stream.writableEnded) throw new UnavailableError(`the stream to the target is closed; a ${header.type} frame was not sent`);
    const frame = encodeFrame(header, payload);
    this.bytes += frame.length;
    if (!this.stream.write(frame)) await this.drained(header.type);
  }

  /** Settles when the stream drains; rejects when it fails or closes first. */
  private drained(type: string): Promise<void> {
    const stream = this.stream;
    return new Promise((resolve, reject) => {
      const finish = (error?: Error) => {
        stream.off('drain', onDrain);
        stream.off('close', onClose);
        stream.off('error', onError);
        if (error === undefined) resolve();
        else reject(error);
      };
      const onDrain = () => finish();
      const onClose = () => finish(new UnavailableError(`the stream to the target closed while a ${type} frame waited to drain`));
      const onError = (error: Error) => finish(new UnavailableError(`the stream to the target failed: ${error.message}`, { cause: error }));
      stream.on('drain', onDrain);
      stream.on('close', onClose);
      stream.on('error', onError);
    });
  }

  /** Ends the stream once everything written is flushed. */
  end(): void {
    this.stream.end();
  }
}
