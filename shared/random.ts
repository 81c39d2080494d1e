// A small, fast, seedable random source (xoshiro128**), injected wherever the system needs
// randomness that a test must be able to replay: the `sim` guest's outside world, memory content,
// randomized tests. Seeds are printed by whoever picks them.

export class Random {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(readonly seed: number) {
    // splitmix32 expands the 32-bit seed into the 128-bit state (never all zero).
    let s = seed >>> 0;
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next() | 1;
  }

  /** A fresh seed from the operating system's random source. */
  static seedFromOs(): number {
    return crypto.getRandomValues(new Uint32Array(1))[0];
  }

  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  /** Uniform in [0, 1). */
  nextFloat(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  nextInt(n: number): number {
    return Math.floor(this.nextFloat() * n);
  }

  /** A Poisson-distributed count with mean `mean` (Knuth for small means, normal approximation above 64). */
  nextPoisson(mean: number): number {
    if (mean <= 0) return 0;
    if (mean > 64) {
      const u1 = this.nextFloat() || 1e-12;
      const u2 = this.nextFloat();
      const normal = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
      return Math.max(0, Math.round(mean + Math.sqrt(mean) * normal));
    }
    const limit = Math.exp(-mean);
    let k = 0;
    let p = this.nextFloat();
    while (p > limit) {
      k++;
      p *= this.nextFloat();
    }
    return k;
  }

  /** Fills `out` with random bytes. */
  fill(out: Uint8Array): void {
    const words = out.length >>> 2;
    if (out.byteOffset % 4 === 0) {
      // Aligned (the common case: pages, packets): whole words at a time.
      const view = new Uint32Array(out.buffer, out.byteOffset, words);
      for (let i = 0; i < words; i++) view[i] = this.nextU32();
    } else {
      for (let i = 0; i < words * 4; i += 4) {
        const w = this.nextU32();
        out[i] = w & 0xff;
        out[i + 1] = (w >>> 8) & 0xff;
        out[i + 2] = (w >>> 16) & 0xff;
        out[i + 3] = w >>> 24;
      }
    }
    for (let i = words * 4; i < out.length; i++) out[i] = this.nextU32() & 0xff;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
