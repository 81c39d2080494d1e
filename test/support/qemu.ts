// What the qemu tests share: the test guest's image built in a temporary directory (removed when
// the test ends), a QemuDriver booting it under TCG (every QEMU ended when the test ends), bounded
// waits on a guest's serial console, and a look for QEMU processes this process left behind.

import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { QemuDriver, type QemuDriverOptions } from '../../shared/driver/qemu/driver.js';
import type { SerialTail } from '../../shared/driver/qemu/process.js';
import { buildGuestImage, type GuestImage, type GuestTicks, parseTicks } from './initramfs.js';

export const MiB = 2 ** 20;
/** The test guest's memory: the kernel, the busybox initramfs and a 4 MiB pattern fit well. */
export const QEMU_GUEST_BYTES = 128 * MiB;
/** Bound on a boot to the first tick (about 6 s under TCG here, far more on a loaded machine). */
export const BOOT_TIMEOUT_MS = 120_000;

/** A temporary directory for `t`, removed when it ends. */
export function tempDirFor(t: Test, prefix = 'vmm-qemu-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The test guest's image, built for `t`. */
export function guestImageFor(t: Test): GuestImage {
  return buildGuestImage(tempDirFor(t, 'vmm-initramfs-'));
}

/** A QemuDriver booting `image` under TCG, shut down (every QEMU ended) when `t` ends. */
export function qemuDriverFor(t: Test, image: GuestImage, options: Partial<QemuDriverOptions> = {}): QemuDriver {
  const driver = new QemuDriver({ boot: { kind: 'kernel', kernel: image.kernel, initrd: image.initrd, append: image.append }, accel: 'tcg', ...options });
  t.teardown(() => driver.shutdown());
  return driver;
}

/** Waits until the ticks on `serial` pass `accept`; rejects after `timeoutMs` with what the console showed. */
export function waitForTicks(serial: SerialTail, accept: (ticks: GuestTicks) => boolean, timeoutMs = BOOT_TIMEOUT_MS): Promise<GuestTicks> {
  return new Promise((resolve, reject) => {
    const check = (): boolean => {
      const ticks = parseTicks(serial.text());
      if (!accept(ticks)) return false;
      stop();
      clearTimeout(timer);
      resolve(ticks);
      return true;
    };
    const stop = serial.onData(() => void check());
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`the guest's console did not show the ticks awaited within ${timeoutMs} ms; its tail: ${serial.text().slice(-500)}`));
    }, timeoutMs);
    check();
  });
}

/** Whether process `pid` exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Pids of the QEMU processes whose parent is this process (none should be left after a stop). */
export function childQemuPids(): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue;
    }
    // pid (comm) state ppid ...: comm may hold spaces, so read after its closing parenthesis.
    const close = stat.lastIndexOf(')');
    const comm = stat.slice(stat.indexOf('(') + 1, close);
    const ppid = Number(stat.slice(close + 2).split(' ')[1]);
    if (ppid === process.pid && comm.startsWith('qemu-system')) pids.push(Number(name));
  }
  return pids;
}
