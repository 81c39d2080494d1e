// The payloads of the agent-to-agent protocol on their own: a SourceMessage serialized by
// packMessage decodes with the generated protobuf code to the fields it was given, its payload
// unpacks to the raw bytes, and a payload damaged after packing is rejected with DATA_LOSS.
import t from 'tap';
import { fillText } from '../shared/driver/sim/content.js';
import { CorruptDataError } from '../shared/errors.js';
import { type PackedMessage, packMessage, type PayloadBody, PAYLOAD_RAW_BYTES_MAX, unpackPayload } from '../shared/protocol.js';
import { Random } from '../shared/random.js';
import { pb, Preserialized, migrationService } from '../shared/transport/grpc.js';

const SEED = 4242;

/** Byte equality (tap's `same` tells a Buffer from a Uint8Array, and prints a diff of megabytes). */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

type SourceMessage = InstanceType<typeof pb.SourceMessage>;

function decode(packed: PackedMessage): SourceMessage {
  // Through the transport's serializer, as the stream does it.
  const wire = migrationService.transfer.requestSerialize(new Preserialized(packed.bytes));
  return pb.SourceMessage.decode(wire);
}

function contents(kind: 'text' | 'random' | 'zero', bytes: number, random: Random): Uint8Array {
  const out = new Uint8Array(bytes);
  if (kind === 'text') fillText(out, random);
  else if (kind === 'random') random.fill(out);
  return out;
}

const BODIES: PayloadBody[] = [
  { kind: 'chunk', index: 0, final: false, memoryBytesCovered: 1 << 20 },
  { kind: 'chunk', index: 1024, final: true, memoryBytesCovered: 0 },
  { kind: 'unit', sequence: 0, final: false, guestNs: 10_000_000, eventCount: 3 },
  // Guest time beyond 2^32 ns and a sequence number beyond 2^28: varints of 5 bytes and more.
  { kind: 'unit', sequence: 2 ** 31 + 5, final: true, guestNs: 2 ** 45 + 123, eventCount: 0 },
  { kind: 'pages', round: 3, pageCount: 256 },
  { kind: 'machineState' },
];

t.test('packMessage: decodes with the generated code to the same fields and payload', (t) => {
  t.comment(`seed ${SEED}`);
  const random = new Random(SEED);
  for (const body of BODIES) {
    for (const kind of ['text', 'random', 'zero'] as const) {
      for (const bytes of [0, 1, 100, 4096 * 37 + 3]) {
        for (const compress of [true, false]) {
          const raw = contents(kind, bytes, random);
          const packed = packMessage(body, raw, compress);
          const what = `${body.kind} ${kind} ${bytes} bytes compress=${compress}`;
          const message = decode(packed);
          t.equal(message.body, body.kind, `${what}: body`);
          const decoded = message[body.kind] as unknown as Record<string, unknown> & { payload: Parameters<typeof unpackPayload>[0] };
          for (const [field, value] of Object.entries(body)) {
            if (field !== 'kind') t.equal(decoded[field], value, `${what}: ${field}`);
          }
          t.ok(sameBytes(unpackPayload(decoded.payload, what), raw), `${what}: payload`);
          // Compressed only when that made it smaller, and then it says so.
          t.equal(packed.compressed, decoded.payload!.compressed, `${what}: compressed flag`);
          if (!compress || bytes === 0 || kind === 'random') t.equal(packed.compressed, false, `${what}: sent raw`);
          if (compress && kind !== 'random' && bytes > 4096) t.ok(packed.compressed && packed.dataBytes < bytes, `${what}: compressed`);
          t.equal(packed.rawBytes, bytes);
          t.equal(decoded.payload!.data!.length, packed.dataBytes, `${what}: data length`);
        }
      }
    }
  }
  t.end();
});

t.test('packMessage: a byte flipped in the data after packing is DATA_LOSS', (t) => {
  const random = new Random(SEED + 1);
  for (const compress of [true, false]) {
    const raw = contents('text', 64 * 1024, random);
    const packed = packMessage({ kind: 'chunk', index: 7, final: false, memoryBytesCovered: 1 << 20 }, raw, compress);
    packed.bytes[packed.dataOffset + (packed.dataBytes >> 1)] ^= 0xff;
    const chunk = decode(packed).chunk!;
    t.throws(() => unpackPayload(chunk.payload, 'chunk 7', true), CorruptDataError, `compress=${compress}`);
  }
  t.end();
});

t.test('unpackPayload: transient payloads reuse one buffer, each checked', (t) => {
  const random = new Random(SEED + 2);
  const first = contents('text', 300_000, random);
  const second = contents('text', 200_000, random);
  const a = unpackPayload(decode(packMessage({ kind: 'chunk', index: 0, final: false, memoryBytesCovered: 0 }, first)).chunk!.payload, 'chunk 0', true);
  t.ok(sameBytes(a, first));
  const b = unpackPayload(decode(packMessage({ kind: 'chunk', index: 1, final: false, memoryBytesCovered: 0 }, second)).chunk!.payload, 'chunk 1', true);
  t.ok(sameBytes(b, second));
  t.equal(a.buffer, b.buffer, 'the second decompressed into the buffer of the first');
  t.end();
});

t.test('packMessage: payloads over the limit are refused', (t) => {
  t.throws(() => packMessage({ kind: 'machineState' }, new Uint8Array(PAYLOAD_RAW_BYTES_MAX + 1)), { code: 'RESOURCE_EXHAUSTED' });
  t.end();
});
