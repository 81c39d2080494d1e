// The machine of an incoming guest, read from the source's description and checked: QEMU's
// migration stream loads only into the same machine (memory, vCPUs, the ROMs its boot files
// make), so the target starts one with the source's figures, and boots the same files: this
// agent's own configured ones (a peer names no file of this host), whose contents (size and
// SHA-256, boot-files.ts) must be those the source's guest booted, and with the same command line.

import { echo, InvalidStateError, invalidField } from '../../errors.js';
import type { GuestDescription } from '../types.js';
import type { BootFileDigests, QemuAccel, QemuBoot, QemuMachineConfig } from './args.js';
import { checkSameBootFiles, isBootFileDigests } from './boot-files.js';

/** A guest's memory: whole 2 MiB pages, from 32 MiB (a kernel and a small initramfs) to 1 TiB. */
export const MEMORY_BYTES_MIN = 32 * 2 ** 20;
export const MEMORY_BYTES_MAX = 2 ** 40;
export const MEMORY_ALIGN_BYTES = 2 * 2 ** 20;
/** vCPUs a guest may have. */
const VCPUS_MAX = 256;
/** A machine description is a small JSON object. */
const MACHINE_CONFIG_BYTES_MAX = 16 * 1024;

/** Whether `memoryBytes` is a guest memory size the driver takes. */
export function memorySizeValid(memoryBytes: number): boolean {
  return Number.isInteger(memoryBytes) && memoryBytes >= MEMORY_BYTES_MIN && memoryBytes <= MEMORY_BYTES_MAX && memoryBytes % MEMORY_ALIGN_BYTES === 0;
}

/**
 * The same kind of boot with the same command line (the files' contents are checked apart, paths
 * may differ): the target's QEMU is started from this agent's own configuration, never from words
 * a peer sent, and a guest booted with other words is not this host's to take.
 */
function sameBoot(a: QemuBoot, b: QemuBoot): boolean {
  if (a.kind === 'kernel' && b.kind === 'kernel') return (a.initrd === undefined) === (b.initrd === undefined) && a.append === b.append;
  if (a.kind === 'disk' && b.kind === 'disk') return a.disk === b.disk && a.format === b.format;
  return false;
}

function bootWords(boot: QemuBoot): string {
  return boot.kind === 'kernel' ? `kernel ${boot.kernel}${boot.initrd === undefined ? '' : ` with initrd ${boot.initrd}`} and command line '${boot.append}'` : `disk ${boot.disk} (${boot.format})`;
}

/** The machine config of `description` (driver qemu), parsed; INVALID_ARGUMENT when it is not one. */
function parseMachine(description: GuestDescription): QemuMachineConfig {
  const bytes = description.machineConfig;
  if (bytes.length > MACHINE_CONFIG_BYTES_MAX) throw invalidField('guest.machine_config', `a qemu machine description of ${bytes.length} bytes, at most ${MACHINE_CONFIG_BYTES_MAX}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (error) {
    throw invalidField('guest.machine_config', `not a qemu machine description (UTF-8 JSON): ${(error as Error).message}`);
  }
  const m = parsed as Partial<QemuMachineConfig> | null;
  const boot = m?.boot as Partial<Record<string, unknown>> | undefined;
  const text = (v: unknown) => typeof v === 'string' && v.length > 0 && v.length <= 4096;
  const bootValid = boot !== undefined && ((boot.kind === 'kernel' && text(boot.kernel) && typeof boot.append === 'string' && boot.append.length <= 4096 && (boot.initrd === undefined || text(boot.initrd))) || (boot.kind === 'disk' && text(boot.disk) && (boot.format === 'raw' || boot.format === 'qcow2')));
  if (m === null || typeof m !== 'object' || !bootValid || (m.accel !== 'kvm' && m.accel !== 'tcg') || (m.bootFiles !== undefined && !isBootFileDigests(m.bootFiles))) {
    throw invalidField('guest.machine_config', `not a qemu machine description: ${echo(JSON.stringify(parsed))}`);
  }
  return m as QemuMachineConfig;
}

/**
 * The machine an incoming guest needs here: the description's memory and vCPUs, its boot files
 * (which must be `own.boot`'s) and its accelerator (which must be this host's). Refused with
 * INVALID_ARGUMENT when the description is malformed, FAILED_PRECONDITION (HYPERVISOR_FAILED)
 * when this host cannot run that machine.
 */
export function incomingMachine(description: GuestDescription, own: { boot: QemuBoot; accel: QemuAccel; bootFiles: () => BootFileDigests | undefined }): QemuMachineConfig {
  if (description.driver !== 'qemu') throw invalidField('guest.driver', `guest '${echo(description.id)}' is of driver '${echo(description.driver)}', this host runs qemu`);
  const machine = parseMachine(description);
  if (!memorySizeValid(description.memoryBytes) || description.memoryBytes !== machine.memoryBytes) {
    throw invalidField('guest.memory_bytes', `memory of ${description.memoryBytes} bytes (the machine says ${machine.memoryBytes}): a qemu guest takes a multiple of 2 MiB from 32 MiB to 1 TiB`);
  }
  if (!(Number.isInteger(description.vcpus) && description.vcpus >= 1 && description.vcpus <= VCPUS_MAX)) throw invalidField('guest.vcpus', `${description.vcpus} vCPUs: expected 1 to ${VCPUS_MAX}`);
  const refuse = (message: string) => new InvalidStateError(message, { reason: 'HYPERVISOR_FAILED', metadata: { guestId: description.id } });
  if (machine.boot.kind === 'disk') {
    throw refuse(`guest '${echo(description.id)}' boots a disk, whose writes go to an overlay of its source's QEMU that QEMU's stream does not carry: it cannot migrate`);
  }
  if (!sameBoot(machine.boot, own.boot)) {
    throw refuse(`guest '${echo(description.id)}' boots ${echo(bootWords(machine.boot))}, and this agent's QEMU boots ${bootWords(own.boot)}: configure both agents with the same qemu.kernel, qemu.initrd and qemu.append (or qemu.disk)`);
  }
  if (machine.accel !== own.accel) throw refuse(`guest '${echo(description.id)}' runs under ${machine.accel}, this host's QEMU under ${own.accel}: QEMU migrates between the same accelerators only`);
  // Read last: hashing this agent's files (once, then only when they change) is the costliest check.
  const bootFiles = ownBootFiles(description.id, own.bootFiles);
  if (bootFiles !== undefined) checkSameBootFiles(description.id, machine.bootFiles, { boot: own.boot, digests: bootFiles });
  return { memoryBytes: description.memoryBytes, vcpus: description.vcpus, accel: own.accel, boot: own.boot, bootFiles };
}

/** This agent's boot files' digests, or FAILED_PRECONDITION when they cannot be read now. */
function ownBootFiles(guestId: string, read: () => BootFileDigests | undefined): BootFileDigests | undefined {
  try {
    return read();
  } catch (error) {
    throw new InvalidStateError(`guest '${echo(guestId)}': this agent's own boot files cannot be read: ${(error as Error).message}`, { reason: 'HYPERVISOR_FAILED', metadata: { guestId } });
  }
}
