// Sampling a guest for a prediction (source-agent/estimate/sample-guest.ts) against a fake guest
// and a manual clock: the content sample, the dirty windows counted as distinct pages from one
// start, and what is not known (a guest of another driver: busy share, log) said so.
import t from 'tap';
import { ManualClock } from '../shared/clock.js';
import { PAGE_BYTES, type PageAccess, type SourceGuest } from '../shared/driver/types.js';
import { Random } from '../shared/random.js';
import { sampleContent, sampleGuest, windowEnds } from '../source-agent/estimate/sample-guest.js';

const PAGES = 8192;

/** Pages of which the even ones hold text (compressible) and the odd ones are zero; a script of dirty pages. */
function fakePages(dirtyScript: Uint32Array[]): PageAccess & { tracking: boolean } {
  const text = new TextEncoder().encode('GET /index.html HTTP/1.1 200 OK '.repeat(200)).subarray(0, PAGE_BYTES);
  let step = 0;
  return {
    pageCount: PAGES,
    tracking: false,
    startDirtyTracking() {
      this.tracking = true;
    },
    stopDirtyTracking() {
      this.tracking = false;
    },
    fetchAndClearDirty() {
      return dirtyScript[step++] ?? new Uint32Array(0);
    },
    readPages(first, count, out) {
      out.fill(0, 0, count * PAGE_BYTES);
      for (let i = 0; i < count; i++) if ((first + i) % 2 === 0) out.set(text, i * PAGE_BYTES);
    },
    encodePages: () => new Uint8Array(0),
  };
}

t.test('windowEnds: 250 ms doubling up to the period, which ends the last', async (t) => {
  t.same(windowEnds(2000), [250, 500, 1000, 2000]);
  t.same(windowEnds(300), [250, 300]);
  t.same(windowEnds(250), [250]);
  t.same(windowEnds(30_000), [250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000]);
});

t.test('sampleContent: the share of zero pages and how well lz4 does on the others', async (t) => {
  const c = sampleContent(fakePages([]), new Random(7));
  t.equal(c.sampledPages, 4096, 'the bound of pages read');
  t.ok(Math.abs(c.nonZeroFraction - 0.5) < 0.01, `${c.nonZeroFraction} not zero`);
  t.ok(c.pageWireRatio < 0.1, `repeated text compresses well: ${c.pageWireRatio}`);
});

t.test('sampleGuest: distinct pages over windows from one start; busy share and log unknown for a guest not sim', async (t) => {
  const clock = new ManualClock();
  // Windows at 250, 500, 1000 ms: pages 1-3, then 2-5 (2 and 3 again), then nothing new but 1.
  const pages = fakePages([Uint32Array.of(1, 2, 3), Uint32Array.of(2, 3, 4, 5), Uint32Array.of(1)]);
  const guest = {
    id: 'g',
    describe: () => ({ id: 'g', driver: 'fake', memoryBytes: PAGES * PAGE_BYTES, vcpus: 1, unitMs: 10, state: 'running', machineConfig: new Uint8Array(0), summary: '' }),
    pages,
    pagesMissing: 0,
  } as unknown as SourceGuest;
  let cpuUs = 0;
  const sampling = sampleGuest(guest, { periodMs: 1000, clock, seed: 1, cpuUsage: () => ({ user: cpuUs, system: 0 }) });
  for (let i = 0; i < 10; i++) {
    cpuUs += 25_000; // 25 ms of CPU per 100 ms: a quarter busy
    await clock.advance(100);
  }
  const s = await sampling;
  t.same(
    s.dirtyWindows.map((w) => [w.windowMs, w.pages]),
    [
      [250, 3],
      [500, 5],
      [1000, 5],
    ],
    'distinct pages so far at each window',
  );
  t.notOk(pages.tracking, 'dirty tracking stopped at the end');
  t.equal(s.periodMs, 1000);
  t.equal(s.busySource, 'unknown', "a guest that is not a sim guest: this process's CPU says nothing of it");
  t.equal(s.busyFraction, 1, 'taken as busy all the time (replay no faster than the guest)');
  t.equal(s.logSource, 'unknown', 'nor is its log modelled');
  t.equal(s.logBytesPerSec, 0);
  t.equal(s.memoryBytes, PAGES * PAGE_BYTES);
});
