// A real Linux guest small enough for tests: Debian's kernel (linux-image-amd64, /boot/vmlinuz-*)
// with an initramfs built here from Debian's static busybox (busybox-static), no root needed.
// Its /init fills a region of guest memory (a file on a tmpfs, so its pages are guest RAM) with a
// known pattern at boot, then prints on the serial console, at a steady rate,
//   tick N pattern ok        (or: tick N pattern BAD <md5>)
// after checking the region against the pattern's md5 each round. The first line it prints is
//   boot <boot_id> pattern <bytes> bytes
// so that a reboot shows as a second boot line and the counter starting again at 1.

import { createHash } from 'node:crypto';
import { closeSync, openSync, readdirSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { cpioNewc } from './cpio.js';
import { DEBIAN_SKIP_MARKER, findExecutable } from './debian.js';

export const QEMU_PACKAGE = 'qemu-system-x86';
export const QEMU_EXECUTABLE = 'qemu-system-x86_64';
export const KERNEL_PACKAGE = 'linux-image-amd64';
export const BUSYBOX_PACKAGE = 'busybox-static';
/** Where busybox-static installs its binary (the dynamic `busybox` package uses the same path). */
export const BUSYBOX_PATH = '/bin/busybox';

/** Bounds of the pattern region: its pages must fit well inside a small guest. */
const PATTERN_BYTES_MIN = 8;
const PATTERN_BYTES_MAX = 64 * 2 ** 20;
/** Each line of the pattern is one number of this many digits and a newline (`seq` prints them). */
const PATTERN_DIGITS = 7;
const PATTERN_FIRST = 10 ** (PATTERN_DIGITS - 1);

/** The newest Debian kernel image in /boot, or null. */
export function findKernel(bootDir = '/boot'): string | null {
  let names: string[];
  try {
    names = readdirSync(bootDir).filter((n) => /^vmlinuz-\d/.test(n));
  } catch {
    return null;
  }
  names.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  return names.length === 0 ? null : join(bootDir, names.at(-1)!);
}

/** Whether `path` is an x86-64 ELF executable with no program interpreter (statically linked). */
export function isStaticElf(path: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return false;
  }
  try {
    const header = Buffer.alloc(64);
    if (readSync(fd, header, 0, 64, 0) < 64 || header.readUInt32BE(0) !== 0x7f454c46 || header[4] !== 2) return false;
    const phoff = Number(header.readBigUInt64LE(32));
    const phentsize = header.readUInt16LE(54);
    const phnum = header.readUInt16LE(56);
    if (phnum > 256 || phentsize < 4) return false;
    const table = Buffer.alloc(phentsize * phnum);
    readSync(fd, table, 0, table.length, phoff);
    // PT_INTERP (3) names the dynamic loader, which the initramfs would not have.
    for (let i = 0; i < phnum; i++) if (table.readUInt32LE(i * phentsize) === 3) return false;
    return true;
  } finally {
    closeSync(fd);
  }
}

/**
 * A tap `skip` value for tests that boot the guest: false when QEMU, a kernel and a static busybox
 * are here, else a reason starting "needs Debian package" (test/support/debian.ts) naming the
 * first package missing.
 */
export function skipUnlessGuestPackages(): string | false {
  const missing = (pkg: string, what: string) => `${DEBIAN_SKIP_MARKER} ${pkg} (${what}; apt-get install --no-install-recommends ${pkg})`;
  if (findExecutable(QEMU_EXECUTABLE) === null) return missing(QEMU_PACKAGE, `no ${QEMU_EXECUTABLE} executable on PATH`);
  if (findKernel() === null) return missing(KERNEL_PACKAGE, 'no /boot/vmlinuz-* kernel');
  if (!isStaticElf(BUSYBOX_PATH)) return missing(BUSYBOX_PACKAGE, `no statically linked ${BUSYBOX_PATH}`);
  return false;
}

export interface InitramfsOptions {
  /** Size of the memory region filled with the pattern (default 4 MiB; rounded down to whole lines). */
  patternBytes?: number;
  /** Pause between ticks (default 500 ms; the check of the region adds to it). */
  tickMs?: number;
}

export interface GuestImage {
  readonly kernel: string;
  readonly initrd: string;
  /** The kernel command line the image expects: the console on the first serial port. */
  readonly append: string;
  readonly patternBytes: number;
  /** md5 of the pattern, as the guest checks it. */
  readonly patternMd5: string;
}

/** The pattern's bytes: consecutive 7-digit numbers, one a line (distinct lines, so that two pages swapped show). */
export function patternBytesOf(lines: number): Buffer {
  const out = Buffer.alloc(lines * (PATTERN_DIGITS + 1));
  for (let i = 0; i < lines; i++) out.write(`${PATTERN_FIRST + i}\n`, i * (PATTERN_DIGITS + 1), 'ascii');
  return out;
}

/** The guest's /init: a POSIX shell script run by busybox's sh. */
function initScript(lines: number, md5: string, tickMs: number): string {
  const seconds = (tickMs / 1000).toFixed(3);
  return `#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /region
mount -t tmpfs -o size=${Math.ceil((lines * (PATTERN_DIGITS + 1)) / 2 ** 20) + 1}m tmpfs /region
seq ${PATTERN_FIRST} ${PATTERN_FIRST + lines - 1} > /region/pattern
echo "boot $(cat /proc/sys/kernel/random/boot_id) pattern $(stat -c %s /region/pattern) bytes"
n=0
while :; do
  n=$((n + 1))
  sum=$(md5sum /region/pattern)
  sum=\${sum%% *}
  if [ "$sum" = "${md5}" ]; then echo "tick $n pattern ok"; else echo "tick $n pattern BAD $sum"; fi
  sleep ${seconds}
done
`;
}

/**
 * Builds the guest's initramfs (gzip'd newc cpio) in `dir` and returns what a QEMU needs to boot
 * it. Throws when the kernel or a static busybox is missing (see skipUnlessGuestPackages).
 */
export function buildGuestImage(dir: string, options: InitramfsOptions = {}): GuestImage {
  const kernel = findKernel();
  if (kernel === null) throw new Error(`no /boot/vmlinuz-* kernel: apt-get install --no-install-recommends ${KERNEL_PACKAGE}`);
  if (!isStaticElf(BUSYBOX_PATH)) throw new Error(`no statically linked ${BUSYBOX_PATH}: apt-get install --no-install-recommends ${BUSYBOX_PACKAGE}`);
  const requested = options.patternBytes ?? 4 * 2 ** 20;
  if (!(requested >= PATTERN_BYTES_MIN && requested <= PATTERN_BYTES_MAX)) throw new RangeError(`patternBytes ${requested}: expected ${PATTERN_BYTES_MIN} to ${PATTERN_BYTES_MAX}`);
  const tickMs = options.tickMs ?? 500;
  if (!(Number.isInteger(tickMs) && tickMs >= 10 && tickMs <= 60_000)) throw new RangeError(`tickMs ${tickMs}: expected an integer from 10 to 60000`);
  const lines = Math.floor(requested / (PATTERN_DIGITS + 1));
  const pattern = patternBytesOf(lines);
  const patternMd5 = createHash('md5').update(pattern).digest('hex');
  const archive = cpioNewc([
    { kind: 'dir', name: 'bin' },
    { kind: 'dir', name: 'dev' },
    { kind: 'char', name: 'dev/console', major: 5, minor: 1 },
    { kind: 'dir', name: 'proc' },
    { kind: 'dir', name: 'sys' },
    { kind: 'dir', name: 'tmp', mode: 0o1777 },
    { kind: 'file', name: 'bin/busybox', data: readFileSync(BUSYBOX_PATH), mode: 0o755 },
    { kind: 'symlink', name: 'bin/sh', target: 'busybox' },
    { kind: 'file', name: 'init', data: Buffer.from(initScript(lines, patternMd5, tickMs), 'utf8'), mode: 0o755 },
  ]);
  const initrd = join(dir, 'initramfs.cpio.gz');
  writeFileSync(initrd, gzipSync(archive, { level: 6 }));
  return { kernel, initrd, append: 'console=ttyS0 quiet panic=-1', patternBytes: pattern.length, patternMd5 };
}

/** What the guest printed, read from its serial console. */
export interface GuestTicks {
  /** boot_id of each boot seen, in order (more than one: the guest rebooted). */
  readonly boots: string[];
  /** Every tick's counter, in order. */
  readonly counters: number[];
  /** Ticks whose check of the memory region failed. */
  readonly bad: number;
}

/** Parses the console output of the guest's /init (lines not its own are skipped). */
export function parseTicks(serial: string): GuestTicks {
  const boots: string[] = [];
  const counters: number[] = [];
  let bad = 0;
  for (const line of serial.split(/\r?\n/)) {
    // The firmware clears the screen without a newline: the boot line may follow its escapes.
    const boot = /boot ([0-9a-f-]{36}) pattern/.exec(line);
    if (boot !== null) boots.push(boot[1]!);
    const tick = /tick (\d+) pattern (ok|BAD)/.exec(line);
    if (tick === null) continue;
    counters.push(Number(tick[1]));
    if (tick[2] === 'BAD') bad++;
  }
  return { boots, counters, bad };
}
