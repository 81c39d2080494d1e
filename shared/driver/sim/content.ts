// Contents of guest memory at boot, and of packets and disk blocks, with a documented mix so that
// compression figures are not flattering.
//
// Memory is laid out in 2 MiB runs (a huge page), each of one class, drawn from the seed:
// - zero: free memory, never touched (costs nothing to hold, elided from checkpoints);
// - text: page cache of text files and code: words from a small vocabulary (lz4: ~2-3x);
// - random: compressed files, encrypted data, high-entropy heap (lz4: incompressible).
// The default mix is 40% zero, 40% text, 20% random.

import { InvalidArgumentError } from '../../errors.js';
import { Random } from '../../random.js';
import { PAGE_BYTES } from '../types.js';
import type { GuestMemory } from './memory.js';
import type { PayloadKind } from './profiles.js';

export interface ContentMix {
  zeroFraction: number;
  textFraction: number;
  randomFraction: number;
}

export const DEFAULT_CONTENT_MIX: Readonly<ContentMix> = { zeroFraction: 0.4, textFraction: 0.4, randomFraction: 0.2 };
export const ZERO_CONTENT_MIX: Readonly<ContentMix> = { zeroFraction: 1, textFraction: 0, randomFraction: 0 };

const RUN_PAGES = 512; // 2 MiB

const WORDS = (
  'the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were ' +
  'int char void return static const struct if else while for unsigned long size_t NULL error status request response ' +
  'GET POST HTTP/1.1 Host: Content-Length: Accept: text/html application/json 200 OK 404 Not Found index.html ' +
  'SELECT INSERT UPDATE WHERE FROM INTO VALUES commit rollback row page buffer lock table key value'
).split(' ');

export function checkContentMix(mix: ContentMix): void {
  const sum = mix.zeroFraction + mix.textFraction + mix.randomFraction;
  for (const [name, value] of Object.entries(mix)) {
    if (!(value >= 0 && value <= 1)) throw new InvalidArgumentError(`content mix ${name}=${value} is out of range [0, 1]`);
  }
  if (Math.abs(sum - 1) > 1e-6) throw new InvalidArgumentError(`content mix fractions add up to ${sum}, expected 1`);
}

/** Fills `out` with text-like bytes: words from a small vocabulary, separated by spaces and newlines. */
export function fillText(out: Uint8Array, random: Random): void {
  let at = 0;
  while (at < out.length) {
    const word = WORDS[random.nextInt(WORDS.length)];
    for (let i = 0; i < word.length && at < out.length; i++) out[at++] = word.charCodeAt(i);
    if (at < out.length) out[at++] = random.nextInt(12) === 0 ? 10 : 32;
  }
}

export function fillPayload(out: Uint8Array, kind: PayloadKind, random: Random): void {
  if (kind === 'text' || (kind === 'mixed' && random.nextInt(2) === 0)) fillText(out, random);
  else random.fill(out);
}

/** Writes the boot-time contents of guest memory. Deterministic given the seed. */
export function fillMemory(memory: GuestMemory, mix: ContentMix, seed: number): void {
  checkContentMix(mix);
  if (mix.zeroFraction >= 1) return;
  const random = new Random(seed);
  const page = new Uint8Array(PAGE_BYTES);
  // A few hundred distinct text pages, reused with a varying header, keep boot fast without
  // making the text runs trivially deduplicable.
  const textPages: Uint8Array[] = [];
  for (let i = 0; i < 256; i++) {
    const p = new Uint8Array(PAGE_BYTES);
    fillText(p, random);
    textPages.push(p);
  }
  for (let first = 0; first < memory.pageCount; first += RUN_PAGES) {
    const count = Math.min(RUN_PAGES, memory.pageCount - first);
    const draw = random.nextFloat();
    if (draw < mix.zeroFraction) continue;
    const isText = draw < mix.zeroFraction + mix.textFraction;
    for (let p = first; p < first + count; p++) {
      if (isText) {
        page.set(textPages[random.nextInt(textPages.length)]);
        const stamp = random.nextU32();
        page[0] = stamp & 0xff;
        page[1] = (stamp >>> 8) & 0xff;
        page[2] = (stamp >>> 16) & 0xff;
      } else {
        random.fill(page);
      }
      memory.writePage(p, page);
    }
  }
}
