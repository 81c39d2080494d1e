// The `qemu` hypervisor driver: the agent starts one QEMU process per guest and owns it (every
// guest's QEMU is ended when the agent stops), talks to each through QMP on a unix socket in the
// state directory, and accounts for the host's memory and CPUs as the sim driver does: a guest
// that does not fit is refused with the numbers.
//
// StartGuest boots the configured image (a kernel with its initramfs and command line, or a disk
// image) with the memory the request asks for. A real guest runs its own operating system, so the
// sim's workload fields do not apply: the profile must be empty or 'idle' (the API's default),
// and rates and the environment seed must be unset.
//
// Migration is not carried yet: the driver reports no capability, and a reservation is refused
// with UNIMPLEMENTED (NOT_SUPPORTED).

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { AlreadyExistsError, echo, invalidField, NotFoundError, ReservationRefusedError, UnimplementedError } from '../../errors.js';
import { type GuestDescription, type GuestSpec, type HostCapacity, type HypervisorDriver, type DriverCapability, UNIT_MS_MAX, UNIT_MS_MIN } from '../types.js';
import { type QemuAccel, type QemuAccelChoice, type QemuBoot, type QemuMachineConfig, qemuArgs, resolveAccel } from './args.js';
import { type DriverLog, QemuGuest } from './guest.js';
import { QemuProcess } from './process.js';
import type { QmpOptions } from './qmp.js';

export interface QemuDriverOptions {
  /** The QEMU executable (default qemu-system-x86_64, found on PATH). */
  binary: string;
  /** What every guest boots. */
  boot: QemuBoot;
  accel: QemuAccelChoice;
  /** vCPUs of each guest. */
  vcpusPerGuest: number;
  /** Where the QMP sockets are (null: a temporary directory, removed at shutdown). */
  stateDir: string | null;
  /** Unit length a guest reports when StartGuest names none (no log is recorded yet). */
  unitMsDefault: number;
  /** Bytes of each guest's serial console kept. */
  serialTailBytes: number;
  /** How long a QEMU has to exit after quit before it is killed. */
  stopGraceMs: number;
  qmp: Partial<QmpOptions>;
  /** Memory and CPUs this host offers to guests (default: the host's, from the operating system). */
  memoryBytesTotal: number;
  vcpusTotal: number;
  log: DriverLog;
}

export const QEMU_DRIVER_DEFAULTS = {
  binary: 'qemu-system-x86_64',
  accel: 'auto' as QemuAccelChoice,
  vcpusPerGuest: 1,
  stateDir: null,
  unitMsDefault: 10,
  serialTailBytes: 64 * 1024,
  stopGraceMs: 5_000,
  qmp: {},
};

const GUEST_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** A guest's memory: whole 2 MiB pages, from 32 MiB (a kernel and a small initramfs) to 1 TiB. */
const MEMORY_BYTES_MIN = 32 * 2 ** 20;
const MEMORY_BYTES_MAX = 2 ** 40;
const MEMORY_ALIGN_BYTES = 2 * 2 ** 20;
/** The longest path of a unix socket (sun_path is 108 bytes with its NUL). */
const SOCKET_PATH_BYTES_MAX = 107;

const silentLog: DriverLog = { info: () => undefined, warn: () => undefined, error: () => undefined };

export class QemuDriver implements HypervisorDriver {
  readonly name = 'qemu';
  /** None yet: no event log, no page access (see the file's header). */
  readonly capabilities: readonly DriverCapability[] = [];
  private readonly guests = new Map<string, QemuGuest>();
  /** Guests discarded whose QEMU may still be exiting: shutdown waits for them. */
  private readonly ending = new Set<QemuGuest>();
  private readonly options: QemuDriverOptions;
  private readonly stateDir: string;
  private readonly ownsStateDir: boolean;
  /** The accelerator guests get: the configured one, or for auto what this host can run. */
  readonly accel: QemuAccel;

  constructor(options: Partial<QemuDriverOptions> & Pick<QemuDriverOptions, 'boot'>) {
    this.options = {
      ...QEMU_DRIVER_DEFAULTS,
      memoryBytesTotal: totalmem(),
      vcpusTotal: availableParallelism(),
      log: silentLog,
      ...options,
    };
    this.ownsStateDir = this.options.stateDir === null;
    this.stateDir = this.options.stateDir ?? mkdtempSync(join(tmpdir(), 'vmm-qemu-'));
    mkdirSync(this.stateDir, { recursive: true, mode: 0o700 });
    this.accel = resolveAccel(this.options.accel);
  }


  capacity(): HostCapacity {
    let memory = 0;
    let vcpus = 0;
    for (const g of this.guests.values()) {
      memory += g.machine.memoryBytes;
      vcpus += g.machine.vcpus;
    }
    return {
      driver: this.name,
      capabilities: this.capabilities,
      memoryBytesTotal: this.options.memoryBytesTotal,
      memoryBytesReserved: memory,
      memoryBytesFree: Math.max(0, this.options.memoryBytesTotal - memory),
      vcpusTotal: this.options.vcpusTotal,
      vcpusReserved: vcpus,
    };
  }

  listGuests(): GuestDescription[] {
    return [...this.guests.values()].map((g) => g.describe());
  }

  guest(id: string): QemuGuest {
    const g = this.guests.get(id);
    if (g === undefined) throw new NotFoundError(`no guest '${echo(id)}' on this host`, { reason: 'GUEST_NOT_FOUND', metadata: { guestId: id } });
    return g;
  }

  /**
   * Starts a QEMU booting the configured image with `spec.memoryBytes` of memory. Returns at once
   * with the guest running (QEMU starts it without waiting); a QEMU that fails to come up is
   * logged and the guest leaves the list.
   */
  createGuest(spec: GuestSpec): QemuGuest {
    const id = spec.id ?? `qemu-${randomUUID().slice(0, 8)}`;
    this.checkSpec(id, spec);
    const unitMs = spec.unitMs ?? this.options.unitMsDefault;
    const machine: QemuMachineConfig = { memoryBytes: spec.memoryBytes, vcpus: this.options.vcpusPerGuest, accel: this.accel, boot: this.options.boot };
    this.checkRoom(id, machine);
    const qmpSocket = join(this.stateDir, `${id}.qmp`);
    if (Buffer.byteLength(qmpSocket) > SOCKET_PATH_BYTES_MAX) {
      throw invalidField('id', `guest '${echo(id)}': its QMP socket path ${qmpSocket} is ${Buffer.byteLength(qmpSocket)} bytes, unix sockets take at most ${SOCKET_PATH_BYTES_MAX}: use a shorter id or a shorter qemu.stateDir`);
    }
    rmSync(qmpSocket, { force: true });
    const qemu = QemuProcess.start(this.options.binary, qemuArgs(id, machine, qmpSocket), this.options.serialTailBytes);
    const guest = new QemuGuest(id, machine, unitMs, qemu, {
      qmpSocket,
      qmp: this.options.qmp,
      stopGraceMs: this.options.stopGraceMs,
      log: this.options.log,
      onGone: (g) => {
        if (this.guests.get(g.id) === g) this.guests.delete(g.id);
        this.ending.add(g);
        void g.stopped().then(() => this.ending.delete(g));
      },
    });
    this.guests.set(id, guest);
    this.options.log.info({ guestId: id, pid: qemu.pid, accel: machine.accel, memoryBytes: machine.memoryBytes, qmpSocket }, 'started QEMU for the guest');
    return guest;
  }

  reserve(description: GuestDescription): never {
    throw new UnimplementedError(
      `this agent's qemu driver does not receive guests yet: migration of QEMU guests is not implemented, so guest '${echo(description.id)}' (driver '${echo(description.driver)}') cannot be reserved here`,
      { reason: 'NOT_SUPPORTED', metadata: { guestId: description.id, driver: this.name, guestDriver: description.driver } },
    );
  }

  /** Ends every guest's QEMU (quit, then SIGKILL after the grace) and waits until all have exited. */
  async shutdown(): Promise<void> {
    for (const guest of [...this.guests.values()]) guest.discard();
    await Promise.all([...this.ending].map((g) => g.stopped()));
    if (this.ownsStateDir) rmSync(this.stateDir, { recursive: true, force: true });
  }

  /** StartGuest's fields as a qemu guest takes them; a bad one is refused naming the request's field. */
  private checkSpec(id: string, spec: GuestSpec): void {
    if (!GUEST_ID.test(id)) throw invalidField('id', `guest id '${echo(id)}': expected 1-64 letters, digits, '.', '_' or '-'`);
    const memory = spec.memoryBytes;
    if (!Number.isInteger(memory) || memory < MEMORY_BYTES_MIN || memory > MEMORY_BYTES_MAX || memory % MEMORY_ALIGN_BYTES !== 0) {
      throw invalidField('memory_bytes', `memory of ${memory} bytes: a qemu guest takes a multiple of 2 MiB from 32 MiB to 1 TiB`, { memoryBytes: memory });
    }
    if (spec.unitMs !== undefined && !(Number.isInteger(spec.unitMs) && spec.unitMs >= UNIT_MS_MIN && spec.unitMs <= UNIT_MS_MAX)) {
      throw invalidField('unit_ms', `unit of ${spec.unitMs} ms: expected ${UNIT_MS_MIN} to ${UNIT_MS_MAX}`);
    }
    if (spec.profile !== '' && spec.profile !== 'idle') {
      throw invalidField('profile', `profile '${echo(spec.profile)}': profiles are workloads of the built-in sim guest; a qemu guest runs the operating system it boots (qemu.kernel or qemu.disk), so leave profile empty`);
    }
    if (spec.rates !== undefined && Object.keys(spec.rates).length > 0) throw invalidField('rates', 'rates tune the sim guest\'s workload; a qemu guest has none');
    if (spec.environmentSeed !== undefined) throw invalidField('environment_seed', 'the environment seed drives the sim guest\'s outside world; a qemu guest has none');
  }

  private checkRoom(id: string, machine: QemuMachineConfig): void {
    if (this.guests.has(id)) throw new AlreadyExistsError(`guest '${id}' already runs on this host`, { reason: 'GUEST_EXISTS', metadata: { guestId: id } });
    const cap = this.capacity();
    if (machine.memoryBytes > cap.memoryBytesFree) {
      throw new ReservationRefusedError(
        `not enough memory for guest '${id}': it needs ${machine.memoryBytes / 2 ** 20} MiB, this host has ${Math.floor(cap.memoryBytesFree / 2 ** 20)} MiB free of ${Math.floor(cap.memoryBytesTotal / 2 ** 20)} MiB`,
        { reason: 'CAPACITY_REFUSED', metadata: { guestId: id, memoryBytes: machine.memoryBytes, memoryBytesFree: cap.memoryBytesFree } },
      );
    }
    if (cap.vcpusReserved + machine.vcpus > cap.vcpusTotal) {
      throw new ReservationRefusedError(`no vCPU free for guest '${id}': ${cap.vcpusReserved} of ${cap.vcpusTotal} in use, it needs ${machine.vcpus}`, {
        reason: 'CAPACITY_REFUSED',
        metadata: { guestId: id, vcpusReserved: cap.vcpusReserved, vcpusTotal: cap.vcpusTotal },
      });
    }
  }
}
