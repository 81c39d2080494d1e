// The worker thread of a PackPool (pack-pool.ts): serializes payload messages as packMessage does
// (xxh64 of the raw bytes, lz4 block compression), off the agent's event loop, from and into
// buffers shared with the pool: nothing is allocated or transferred per message.

import { type PackReply, type PackRequest, packMessage } from './protocol.js';
import { serveTasks } from './worker-pool.js';

serveTasks<PackRequest, PackReply>((request) => {
  const message = packMessage(request.body, new Uint8Array(request.raw, 0, request.rawLength), request.compress, new Uint8Array(request.out));
  const { bytes, ...fields } = message;
  return { result: { ...fields, byteOffset: bytes.byteOffset, byteLength: bytes.length }, transfer: [] };
});
