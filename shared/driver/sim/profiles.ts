// Workload profiles of the built-in guest, calibrated to the published behaviour DESIGN.md cites.
// Every rate is in guest time and can be overridden one by one (`--rate name=value`).
//
// How the rates act:
// - busyFraction: the share of each time unit the vCPU computes; the rest it idles. Replay skips
//   the idle part, so a unit replays in about busyFraction of its guest time.
// - pageWritesPerSec: page writes by the workload's own code, spread evenly over the busy part.
//   Pages dirtied per second (distinct) is at most this plus the pages that incoming packets and
//   disk reads land in, and at most the working set.
// - bytesPerPageWrite: bytes each page write stores (a cache line for a web server, a row for a
//   database, the whole page for mmuncher).
// - workingSetFraction / sequentialFraction: where the writes land: a share of guest memory, swept
//   in order (sequentialFraction of writes) or hit at random.
// - timerHz, packetsPerSec + packetBytes, diskReadsPerSec (4 KiB each): asynchronous events, each
//   delivered at a recorded instruction position.
// - clockReadsPerSec, randomReadsPerSec: synchronous events (the guest asks; the host answers
//   with a value that is recorded).

import { echo, invalidField } from '../../errors.js';

export interface WorkloadRates {
  busyFraction: number;
  pageWritesPerSec: number;
  bytesPerPageWrite: number;
  workingSetFraction: number;
  sequentialFraction: number;
  timerHz: number;
  packetsPerSec: number;
  packetBytes: number;
  diskReadsPerSec: number;
  clockReadsPerSec: number;
  randomReadsPerSec: number;
}

/** What packet payloads and disk blocks hold, which decides how well the log compresses. */
export type PayloadKind = 'text' | 'random' | 'mixed';

export interface WorkloadProfile {
  readonly name: ProfileName;
  readonly models: string;
  readonly rates: Readonly<WorkloadRates>;
  readonly payload: PayloadKind;
}

export const PROFILE_NAMES = ['idle', 'web', 'compile', 'db', 'mmuncher', 'stream'] as const;
export type ProfileName = (typeof PROFILE_NAMES)[number];

const base: WorkloadRates = {
  busyFraction: 0.05,
  pageWritesPerSec: 0,
  bytesPerPageWrite: 256,
  workingSetFraction: 0.05,
  sequentialFraction: 0,
  timerHz: 250,
  packetsPerSec: 0,
  packetBytes: 0,
  diskReadsPerSec: 0,
  clockReadsPerSec: 100,
  randomReadsPerSec: 0,
};

export const PROFILES: Readonly<Record<ProfileName, WorkloadProfile>> = {
  idle: {
    name: 'idle',
    models: 'an idle server: timer ticks, a few housekeeping writes',
    payload: 'text',
    rates: { ...base, busyFraction: 0.02, pageWritesPerSec: 50, workingSetFraction: 0.01, timerHz: 100, packetsPerSec: 2, packetBytes: 120 },
  },
  web: {
    name: 'web',
    models: 'SPECweb-like web server (Clark et al., NSDI 2005): many small requests, moderate dirtying',
    payload: 'text',
    rates: {
      ...base,
      busyFraction: 0.35,
      pageWritesPerSec: 4000,
      bytesPerPageWrite: 512,
      workingSetFraction: 0.12,
      sequentialFraction: 0.2,
      packetsPerSec: 3000,
      packetBytes: 400,
      diskReadsPerSec: 20,
      clockReadsPerSec: 3000,
      randomReadsPerSec: 50,
    },
  },
  compile: {
    name: 'compile',
    models: 'kernel build: CPU-bound, high dirtying over a large working set, few events',
    payload: 'text',
    rates: {
      ...base,
      busyFraction: 0.9,
      pageWritesPerSec: 12000,
      bytesPerPageWrite: 2048,
      workingSetFraction: 0.5,
      sequentialFraction: 0.5,
      diskReadsPerSec: 150,
      clockReadsPerSec: 500,
    },
  },
  db: {
    name: 'db',
    models: 'OLTP database: random page writes, disk completions and client packets',
    payload: 'mixed',
    rates: {
      ...base,
      busyFraction: 0.6,
      pageWritesPerSec: 6000,
      bytesPerPageWrite: 512,
      workingSetFraction: 0.75,
      sequentialFraction: 0,
      packetsPerSec: 1500,
      packetBytes: 300,
      diskReadsPerSec: 400,
      clockReadsPerSec: 2000,
      randomReadsPerSec: 10,
    },
  },
  mmuncher: {
    name: 'mmuncher',
    models: 'the memory-writing stress of Clark et al.: whole pages rewritten as fast as it can, almost no input',
    payload: 'random',
    rates: {
      ...base,
      busyFraction: 0.95,
      pageWritesPerSec: 60000,
      bytesPerPageWrite: 4096,
      workingSetFraction: 1,
      sequentialFraction: 1,
      timerHz: 100,
      clockReadsPerSec: 10,
    },
  },
  stream: {
    name: 'stream',
    models: 'bulk network receiver (~70 Mbit/s of incompressible payload): a large log, moderate dirtying',
    payload: 'random',
    rates: {
      ...base,
      busyFraction: 0.3,
      pageWritesPerSec: 500,
      workingSetFraction: 0.05,
      packetsPerSec: 6000,
      packetBytes: 1448,
      clockReadsPerSec: 1000,
    },
  },
};

/** Inclusive bounds of each rate, checked when a profile is built. */
const RATE_BOUNDS: Readonly<Record<keyof WorkloadRates, readonly [number, number]>> = {
  busyFraction: [0.001, 1],
  pageWritesPerSec: [0, 1_000_000],
  bytesPerPageWrite: [4, 4096],
  workingSetFraction: [0.0001, 1],
  sequentialFraction: [0, 1],
  timerHz: [0, 10_000],
  packetsPerSec: [0, 200_000],
  packetBytes: [0, 9000],
  diskReadsPerSec: [0, 100_000],
  clockReadsPerSec: [0, 1_000_000],
  randomReadsPerSec: [0, 1_000_000],
};

export function isProfileName(name: string): name is ProfileName {
  return (PROFILE_NAMES as readonly string[]).includes(name);
}

/**
 * A profile with some rates overridden; every rate is range-checked, by name. `field`: the request
 * field refused for a bad rate (StartGuestRequest's `rates` by default; a bad profile is `profile`).
 */
export function resolveRates(profile: ProfileName, overrides: Partial<WorkloadRates> = {}, field = 'rates'): WorkloadRates {
  if (!isProfileName(profile)) {
    throw invalidField(field === 'rates' ? 'profile' : field, `unknown workload profile '${echo(profile)}': expected one of ${PROFILE_NAMES.join(', ')}`);
  }
  const rates: WorkloadRates = { ...PROFILES[profile].rates };
  for (const [key, value] of Object.entries(overrides)) {
    if (!(key in RATE_BOUNDS)) {
      throw invalidField(field, `unknown workload rate '${echo(key)}': expected one of ${Object.keys(RATE_BOUNDS).join(', ')}`);
    }
    if (value === undefined) continue;
    rates[key as keyof WorkloadRates] = value;
  }
  for (const [key, [min, max]] of Object.entries(RATE_BOUNDS)) {
    const value = rates[key as keyof WorkloadRates];
    if (!Number.isFinite(value) || value < min || value > max) {
      throw invalidField(field, `workload rate ${key}=${value} is out of range [${min}, ${max}]`);
    }
  }
  const payloadMax = 100 * 1024 * 1024;
  if (payloadBytesPerSec(rates) > payloadMax) {
    throw invalidField(
      field,
      `workload payload of ${payloadBytesPerSec(rates)} bytes/s (packetsPerSec x packetBytes + diskReadsPerSec x 4096) is over ${payloadMax} bytes/s: a 100 ms unit would not fit a log unit`,
    );
  }
  return rates;
}

/** Nondeterministic events per guest second the rates amount to (asynchronous plus synchronous). */
export function eventsPerSec(rates: WorkloadRates): number {
  return rates.timerHz + rates.packetsPerSec + rates.diskReadsPerSec + rates.clockReadsPerSec + rates.randomReadsPerSec;
}

/** Payload bytes per guest second entering the log (packets and disk blocks). */
export function payloadBytesPerSec(rates: WorkloadRates): number {
  return rates.packetsPerSec * rates.packetBytes + rates.diskReadsPerSec * 4096;
}
