// What the record/replay migration's test and bench share: the test guest's machine for the
// pipeline (shared/driver/qemu/rr/), the skip where a Debian package is missing (qemu-utils
// for qemu-img, besides the guest's), and the check that the guest went on across the move:
// the console of the target (what the replayer printed, then the live QEMU) shows one boot, a
// counter that goes 1, 2, 3, ... with none repeated or skipped, and the pattern intact.

import { QEMU_IMG_EXECUTABLE, QEMU_IMG_PACKAGE, type RrMachine } from '../../shared/driver/qemu/rr/machine.js';
import { DEBIAN_SKIP_MARKER, findExecutable } from './debian.js';
import { type GuestImage, parseTicks, QEMU_EXECUTABLE, skipUnlessGuestPackages } from './initramfs.js';
import { QEMU_GUEST_BYTES } from './qemu.js';

/** A tap `skip` value: the guest's packages (skipUnlessGuestPackages), then qemu-utils. */
export function skipUnlessRrPackages(): string | false {
  const guest = skipUnlessGuestPackages();
  if (guest !== false) return guest;
  if (findExecutable(QEMU_IMG_EXECUTABLE) === null) return `${DEBIAN_SKIP_MARKER} ${QEMU_IMG_PACKAGE} (no ${QEMU_IMG_EXECUTABLE} executable on PATH; apt-get install --no-install-recommends ${QEMU_IMG_PACKAGE})`;
  return false;
}

/** The test guest as the pipeline runs it: 128 MiB, one vCPU, TCG. */
export function rrMachineOf(image: GuestImage, id = 'vm-rr'): RrMachine {
  return {
    id,
    machine: { memoryBytes: QEMU_GUEST_BYTES, vcpus: 1, accel: 'tcg', boot: { kind: 'kernel', kernel: image.kernel, initrd: image.initrd, append: image.append } },
    qemuBinary: QEMU_EXECUTABLE,
    qemuImgBinary: QEMU_IMG_EXECUTABLE,
  };
}

/** A console passes this once the guest printed `ticks` ticks. */
export function afterTicks(ticks: number): (console: string) => boolean {
  return (console) => parseTicks(console).counters.length >= ticks;
}

/** What the consoles say about the guest across the move. */
export interface Continuity {
  /** Boot ids on the source's console, and on the target's (the replayer's, then the live QEMU's). */
  readonly sourceBoots: readonly string[];
  readonly targetBoots: readonly string[];
  /** Last tick the source printed, the last the replayer printed, the first and last the live QEMU printed. */
  readonly sourceLast: number;
  readonly replayLast: number;
  readonly liveFirst: number;
  readonly liveLast: number;
  /** The target's counters go on one by one (n, n+1, n+2, ...), none repeated or skipped. */
  readonly consecutive: boolean;
  /** Ticks on the target whose pattern check failed. */
  readonly bad: number;
  /**
   * All of it: the source booted once; the target's console shows no other boot (the replayer
   * shows the source's boot when it replayed it, none when it started after it), and the live
   * QEMU none; its counters go on one by one through the source's last tick and past it, with
   * the pattern intact.
   */
  readonly continued: boolean;
}

/**
 * The guest's continuity from three consoles. The live QEMU starts where the replayer stopped,
 * possibly inside a line, so the target's console is the two joined.
 */
export function continuityOf(sourceConsole: string, replayConsole: string, liveConsole: string): Continuity {
  const source = parseTicks(sourceConsole);
  const replay = parseTicks(replayConsole);
  const live = parseTicks(liveConsole);
  const target = parseTicks(replayConsole + liveConsole);
  const first = target.counters[0] ?? 0;
  const consecutive = target.counters.length > 0 && target.counters.every((n, i) => n === first + i);
  const sourceLast = source.counters.at(-1) ?? 0;
  const oneBoot = source.boots.length === 1 && target.boots.every((id) => id === source.boots[0]) && target.boots.length <= 1 && live.boots.length === 0;
  const continued = oneBoot && consecutive && target.bad === 0 && first <= sourceLast && (target.counters.at(-1) ?? 0) > sourceLast && live.counters.length > 0;
  return {
    sourceBoots: source.boots,
    targetBoots: target.boots,
    sourceLast,
    replayLast: replay.counters.at(-1) ?? 0,
    liveFirst: live.counters[0] ?? 0,
    liveLast: live.counters.at(-1) ?? 0,
    consecutive,
    bad: target.bad,
    continued,
  };
}
