// The guest machine of the protocol simulation, small enough to copy at will: memory is one 32-bit
// word per page (the word stands for the page's 4 KiB), and the machine's position counts the
// units it ran. Running a unit is a pure function of the memory, the position and the unit's one
// nondeterministic event, so that a replica replaying the recorded events ends bit for bit where
// the guest did, and the digest says whether it did.
//
// The encodings below are the driver's own (the agents see opaque bytes): a log unit, a checkpoint
// chunk, a page batch and the machine state, each with a magic word and a checksum, so that a
// replica refuses bytes it was not meant to apply.

import { CorruptDataError, UnitOrderError } from '../../../shared/errors.js';

/** Guest pages (one word each). */
export const PAGE_COUNT = 256;
/** Pages per checkpoint chunk: eight chunks a checkpoint. */
export const CHUNK_PAGES = 32;
/** What a chunk and a page weigh on the link: the guest's memory, scaled down to 256 KiB. */
const CHUNK_FILLER_BYTES = 32 * 1024;
const PAGE_FILLER_BYTES = 1024;

const MAGIC = { unit: 0x554e4954, chunk: 0x43484e4b, delta: 0x44454c54, pages: 0x50414745, state: 0x53544154 } as const;

/** A 32-bit mix of two words (murmur3's finalizer over a combination). */
export function mix(a: number, b: number): number {
  let h = (Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) + b) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** Runs one unit with `event` at `position`: writes a few pages; returns the pages written. */
export function runUnit(memory: Uint32Array, position: number, event: number): number[] {
  const writes = 1 + (event % 4);
  const written: number[] = [];
  for (let k = 0; k < writes; k++) {
    const page = mix(event, k) % memory.length;
    memory[page] = mix(event ^ position, k + 1);
    written.push(page);
  }
  return written;
}

/** xxh64-like 16 hex digits over the memory and the position (two FNV-1a lanes). */
export function digestOf(memory: Uint32Array, position: number): string {
  let lo = 0x811c9dc5;
  let hi = 0x050c5d1f;
  const feed = (word: number) => {
    lo = Math.imul(lo ^ word, 0x01000193) >>> 0;
    hi = Math.imul(hi ^ mix(word, lo), 0x01000193) >>> 0;
  };
  for (let i = 0; i < memory.length; i++) feed(memory[i]);
  feed(position);
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}

function checksum(words: Uint32Array, count: number): number {
  let h = 0x12345678;
  for (let i = 0; i < count; i++) h = mix(h, words[i]);
  return h;
}

/**
 * A frame: its word count, the words (the magic first), their checksum, then `fillerBytes` of
 * filler, which stands for the bulk a real unit, chunk or page batch carries (the link's load).
 */
function seal(words: number[], fillerBytes = 0): Uint8Array {
  const out = new Uint32Array(words.length + 2 + Math.ceil(fillerBytes / 4));
  out[0] = words.length;
  out.set(words, 1);
  out[words.length + 1] = checksum(out, words.length + 1);
  return new Uint8Array(out.buffer);
}

/** A frame's words, checked: length, magic and checksum (the filler is not looked at). */
function open(bytes: Uint8Array, magic: number, what: string, wordsMin: number): Uint32Array {
  // A copy into a buffer of its own: a Buffer's slice() would share (and misalign) the pool.
  const words = bytes.length % 4 === 0 && bytes.length >= 8 ? new Uint32Array(new Uint8Array(bytes).buffer) : null;
  const n = words?.[0] ?? 0;
  if (words === null || n < wordsMin + 1 || words.length < n + 2) throw new CorruptDataError(`${what}: ${bytes.length} bytes, not a sealed frame`);
  if (words[1] !== magic) throw new CorruptDataError(`${what}: wrong magic ${words[1].toString(16)}`);
  if (checksum(words, n + 1) !== words[n + 1]) throw new CorruptDataError(`${what}: checksum mismatch`);
  return words.subarray(1, n + 1);
}

/** A log unit: its sequence, the position it starts at, and its event (a final unit carries none). */
export interface UnitRecord {
  sequence: number;
  position: number;
  event: number;
  final: boolean;
}

export function encodeUnit(unit: UnitRecord, fillerBytes = 0): Uint8Array {
  return seal([MAGIC.unit, unit.sequence, unit.position, unit.event, unit.final ? 1 : 0], fillerBytes);
}

export function decodeUnit(bytes: Uint8Array): UnitRecord {
  const w = open(bytes, MAGIC.unit, 'log unit', 4);
  return { sequence: w[1], position: w[2], event: w[3], final: w[4] === 1 };
}

/** A checkpoint chunk: pages from `firstPage`; the final one also carries the position and the first unit's sequence. */
export function encodeChunk(index: number, final: boolean, memory: Uint32Array, firstPage: number, position: number, firstSequence: number): Uint8Array {
  const pages = Array.from(memory.subarray(firstPage, Math.min(memory.length, firstPage + CHUNK_PAGES)));
  return seal([MAGIC.chunk, index, final ? 1 : 0, firstPage, pages.length, position, firstSequence, ...pages], CHUNK_FILLER_BYTES);
}

export interface ChunkRecord {
  index: number;
  final: boolean;
  firstPage: number;
  pages: Uint32Array;
  position: number;
  firstSequence: number;
}

export function decodeChunk(bytes: Uint8Array): ChunkRecord {
  const w = open(bytes, MAGIC.chunk, 'checkpoint chunk', 7);
  const count = w[4];
  if (w.length !== 7 + count) throw new CorruptDataError(`checkpoint chunk ${w[1]}: ${count} pages announced, ${w.length - 7} carried`);
  return { index: w[1], final: w[2] === 1, firstPage: w[3], pages: w.slice(7), position: w[5], firstSequence: w[6] };
}

/** A delta checkpoint's chunk: (page, word) pairs as of its instant; the final one carries the instant. */
export interface DeltaChunkRecord {
  index: number;
  final: boolean;
  generation: number;
  firstSequence: number;
  position: number;
  pairs: Array<[page: number, word: number]>;
}

export function encodeDeltaChunk(c: DeltaChunkRecord): Uint8Array {
  const words = [MAGIC.delta, c.index, c.final ? 1 : 0, c.generation, c.firstSequence, c.position, c.pairs.length];
  for (const [page, word] of c.pairs) words.push(page, word);
  return seal(words, c.pairs.length * PAGE_FILLER_BYTES);
}

export function decodeDeltaChunk(bytes: Uint8Array, pageCount: number): DeltaChunkRecord {
  const w = open(bytes, MAGIC.delta, 'delta chunk', 7);
  if (w.length !== 7 + 2 * w[6]) throw new CorruptDataError(`delta chunk ${w[1]}: ${w[6]} pages announced, ${(w.length - 7) / 2} carried`);
  const pairs: Array<[number, number]> = [];
  for (let i = 7; i < w.length; i += 2) {
    if (w[i] >= pageCount) throw new CorruptDataError(`delta chunk ${w[1]}: page ${w[i]} past the ${pageCount} pages`);
    pairs.push([w[i], w[i + 1]]);
  }
  return { index: w[1], final: w[2] === 1, generation: w[3], firstSequence: w[4], position: w[5], pairs };
}

/** A page batch: (page, word) pairs. */
export function encodePages(memory: Uint32Array, pages: Uint32Array): Uint8Array {
  const words = [MAGIC.pages, pages.length];
  for (const p of pages) words.push(p, memory[p]);
  return seal(words, pages.length * PAGE_FILLER_BYTES);
}

export function decodePages(bytes: Uint8Array, pageCount: number): Array<[page: number, word: number]> {
  const w = open(bytes, MAGIC.pages, 'page batch', 2);
  if (w.length !== 2 + 2 * w[1]) throw new CorruptDataError(`page batch: ${w[1]} pages announced, ${(w.length - 2) / 2} carried`);
  const out: Array<[number, number]> = [];
  for (let i = 2; i < w.length; i += 2) {
    if (w[i] >= pageCount) throw new CorruptDataError(`page batch: page ${w[i]} past the ${pageCount} pages`);
    out.push([w[i], w[i + 1]]);
  }
  return out;
}

export function encodeMachineState(position: number): Uint8Array {
  return seal([MAGIC.state, position]);
}

export function decodeMachineState(bytes: Uint8Array): number {
  return open(bytes, MAGIC.state, 'machine state', 1)[1];
}

/** Refuses a unit that is not the next one: the replay would diverge. */
export function checkUnitOrder(unit: UnitRecord, nextSequence: number, position: number): void {
  if (unit.sequence === nextSequence && unit.position === position) return;
  const kind = unit.sequence < nextSequence ? 'duplicate' : unit.sequence > nextSequence ? 'gap' : 'position';
  throw new UnitOrderError(`unit ${unit.sequence} at position ${unit.position}: expected unit ${nextSequence} at position ${position}`, kind, nextSequence, unit.sequence);
}
