// QEMU's command line for one guest, as a pure function of what the guest is, and the choice of
// accelerator. Every guest gets the same shape: no default devices, no display, its serial
// console on standard output (the driver reads it), QMP on a unix socket in the state directory.

import { accessSync, closeSync, constants, openSync, readFileSync, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';

export type QemuAccel = 'kvm' | 'tcg';
export type QemuAccelChoice = 'auto' | QemuAccel;

/** What boots: a kernel with its initramfs and command line, or a disk image. */
export type QemuBoot =
  | { readonly kind: 'kernel'; readonly kernel: string; readonly initrd?: string; readonly append: string }
  | { readonly kind: 'disk'; readonly disk: string; readonly format: 'raw' | 'qcow2' };

/** One boot file's content: its size and SHA-256 (hex). */
export interface FileDigest {
  readonly bytes: number;
  readonly sha256: string;
}

/** What a kernel boot's files held when the guest's QEMU read them (boot-files.ts). */
export interface BootFileDigests {
  readonly kernel: FileDigest;
  readonly initrd?: FileDigest;
}

/** A QEMU guest's machine: what a target needs to build the same one. */
export interface QemuMachineConfig {
  readonly memoryBytes: number;
  readonly vcpus: number;
  readonly accel: QemuAccel;
  readonly boot: QemuBoot;
  /** A kernel boot: what its files held at the guest's start (a target checks its own against them). */
  readonly bootFiles?: BootFileDigests;
}

/** The arguments of `qemu-system-x86_64` for `machine`, with its QMP socket at `qmpSocket`. */
export function qemuArgs(id: string, machine: QemuMachineConfig, qmpSocket: string): string[] {
  const args = [
    '-name', `guest=${id}`,
    '-no-user-config', '-nodefaults', '-nographic',
    '-machine', 'pc',
    '-accel', machine.accel,
    ...(machine.accel === 'kvm' ? ['-cpu', 'host'] : []),
    '-m', `${machine.memoryBytes / 2 ** 20}M`,
    '-smp', String(machine.vcpus),
    '-chardev', 'stdio,id=serial0,signal=off',
    '-serial', 'chardev:serial0',
    '-qmp', `unix:${qmpSocket},server=on,wait=off`,
  ];
  const { boot } = machine;
  if (boot.kind === 'kernel') {
    args.push('-kernel', boot.kernel, '-append', boot.append);
    if (boot.initrd !== undefined) args.push('-initrd', boot.initrd);
  } else {
    // The image is shared by every guest that boots it: each writes to a temporary overlay,
    // dropped when its QEMU exits.
    args.push('-drive', `file=${boot.disk.replaceAll(',', ',,')},format=${boot.format},if=virtio,snapshot=on`);
  }
  return args;
}

/**
 * Whether KVM can run guests here: /dev/kvm opens for reading and writing, and the CPU offers
 * hardware virtualization (vmx or svm in /proc/cpuinfo). The second check matters in a virtual
 * machine whose /dev/kvm opens but whose CPU does not offer nested virtualization: a KVM guest
 * there hangs in its firmware or fails setting its registers.
 */
export function kvmUsable(devKvm = '/dev/kvm', cpuinfo = '/proc/cpuinfo'): boolean {
  try {
    closeSync(openSync(devKvm, 'r+'));
  } catch {
    return false;
  }
  try {
    return /^flags\s*:.*\b(vmx|svm)\b/m.test(readFileSync(cpuinfo, 'utf8'));
  } catch {
    return false;
  }
}

/** The accelerator for `choice`: auto is KVM where usable, TCG (emulation) elsewhere. */
export function resolveAccel(choice: QemuAccelChoice, usable: () => boolean = kvmUsable): QemuAccel {
  if (choice !== 'auto') return choice;
  return usable() ? 'kvm' : 'tcg';
}

/** The machine configuration as carried in a GuestDescription (UTF-8 JSON). */
export function encodeMachineConfig(machine: QemuMachineConfig): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(machine));
}

/** The path of `binary`: itself when it holds a '/', else the first executable of that name on PATH; null if none. */
export function findExecutable(binary: string): string | null {
  const candidates = binary.includes('/') ? [binary] : (process.env.PATH ?? '').split(delimiter).filter((d) => d !== '').map((d) => join(d, binary));
  for (const path of candidates) {
    try {
      accessSync(path, constants.X_OK);
      // A directory is "executable" too (searchable): only a regular file runs.
      if (statSync(path).isFile()) return path;
    } catch {
      // not here
    }
  }
  return null;
}
