// The worker thread of a PackPool (pack-pool.ts): serializes payload messages as packMessage does
// (xxh64 of the raw bytes, lz4 block compression), off the agent's event loop.

import { serveTasks } from './worker-pool.js';
import { type PackReply, type PackRequest, packMessage } from './protocol.js';

/** A message below this size is copied out of Node's shared allocation pool rather than transferred with it. */
const TRANSFER_BYTES_MIN = 64 * 1024;

serveTasks<PackRequest, PackReply>((request) => {
  const message = packMessage(request.body, new Uint8Array(request.raw, 0, request.rawLength), request.compress);
  let bytes = message.bytes;
  // A small Buffer may lie in Node's shared pool, which cannot be transferred: copy it out.
  if (bytes.length < TRANSFER_BYTES_MIN) bytes = Buffer.from(new Uint8Array(bytes).buffer);
  const buffer = bytes.buffer as ArrayBuffer;
  const { bytes: _, ...fields } = message;
  return {
    result: { ...fields, buffer, byteOffset: bytes.byteOffset, byteLength: bytes.length, raw: request.raw },
    transfer: [buffer, request.raw],
  };
});
