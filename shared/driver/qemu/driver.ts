// The `qemu` hypervisor driver: the agent starts one QEMU process per guest and owns it (every
// guest's QEMU is ended when the agent stops), talks to each through QMP on a unix socket in the
// state directory, and accounts for the host's memory and CPUs as the sim driver does: a guest
// that does not fit is refused with the numbers.
//
// StartGuest boots the configured image (a kernel with its initramfs and command line, or a disk
// image) with the memory the request asks for. A real guest runs its own operating system, so the
// sim's workload fields do not apply: the profile must be empty (any profile is refused, 'idle'
// too), and rates and the environment seed must be unset.
//
// Migration goes by QEMU's own stream (capability native-stream, the qemu-native method): a
// reservation starts a QEMU with the source guest's machine waiting for the stream (`-incoming
// defer -S`, incoming.ts), counted on the host's books until it is activated or discarded. Its
// boot files must be this agent's own (qemu.kernel, qemu.initrd, qemu.disk): a peer cannot make
// this host read other files into a guest.
//
// Each QEMU gets a private runtime directory of its own (mode 0700, `vmm-qemu-XXXXXX` under
// qemu.stateDir, else the system's temporary directory) holding its QMP socket and, for an
// incoming guest, the socket its migration stream arrives on. The directory is removed as soon as
// that QEMU has exited, however it ended: no agent leaves one behind for a guest that is gone.

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { AlreadyExistsError, echo, invalidField, NotFoundError, ReservationRefusedError } from '../../errors.js';
import { type GuestDescription, type GuestSpec, type HostCapacity, type HypervisorDriver, type DriverCapability, UNIT_MS_MAX, UNIT_MS_MIN } from '../types.js';
import { UNIX_SOCKET_PATH_BYTES_MAX } from '../native-types.js';
import { type BootFileDigests, type QemuAccel, type QemuAccelChoice, type QemuBoot, type QemuMachineConfig, qemuArgs, resolveAccel } from './args.js';
import { bootFileDigests } from './boot-files.js';
import { type DriverLog, QemuGuest } from './guest.js';
import { QemuIncoming } from './incoming.js';
import { incomingMachine, memorySizeValid } from './incoming-machine.js';
import { QemuProcess } from './process.js';
import { QmpError, type QmpOptions } from './qmp.js';

export interface QemuDriverOptions {
  /** The QEMU executable (default qemu-system-x86_64, found on PATH). */
  binary: string;
  /** What every guest boots. */
  boot: QemuBoot;
  accel: QemuAccelChoice;
  /** vCPUs of each guest. */
  vcpusPerGuest: number;
  /** Where each QEMU's private runtime directory goes (null: the system's temporary directory). */
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
/** A QEMU's private runtime directory is this prefix and six random characters (mkdtemp's). */
const RUNTIME_DIR_PREFIX = 'vmm-qemu-';
/** The sockets in it: QMP, and the incoming migration stream's. */
const QMP_SOCKET = 'qmp.sock';
const INCOMING_SOCKET = 'incoming.sock';

const silentLog: DriverLog = { info: () => undefined, warn: () => undefined, error: () => undefined };

export class QemuDriver implements HypervisorDriver {
  readonly name = 'qemu';
  /** QEMU's own stream only: no event log, no page access (see the file's header). */
  readonly capabilities: readonly DriverCapability[] = ['native-stream'];
  /** StartGuest's workload fields (profile, rates, environment seed) are the sim's: none applies here. */
  readonly runsWorkloads = false;
  private readonly guests = new Map<string, QemuGuest>();
  /** Reservations of incoming guests, by id, until activated or discarded. */
  private readonly incoming = new Map<string, QemuIncoming>();
  /** Guests discarded whose QEMU may still be exiting: their memory is still used, and shutdown waits for them. */
  private readonly ending = new Set<QemuGuest>();
  private readonly options: QemuDriverOptions;
  /** Where the QEMUs' runtime directories go. */
  private readonly runtimeBase: string;
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
    this.runtimeBase = this.options.stateDir ?? tmpdir();
    if (this.options.stateDir !== null) mkdirSync(this.runtimeBase, { recursive: true, mode: 0o700 });
    // The longest socket path a QEMU gets, checked once: every runtime directory's name has the same length.
    const longest = join(this.runtimeBase, `${RUNTIME_DIR_PREFIX}XXXXXX`, INCOMING_SOCKET);
    if (Buffer.byteLength(longest) > UNIX_SOCKET_PATH_BYTES_MAX) {
      throw new RangeError(`QEMU's sockets would be at paths like ${longest}, ${Buffer.byteLength(longest)} bytes, and unix sockets take at most ${UNIX_SOCKET_PATH_BYTES_MAX}: set a shorter qemu.stateDir (or TMPDIR)`);
    }
    this.accel = resolveAccel(this.options.accel);
  }


  /** A guest's memory counts from its QEMU's start until that QEMU has exited (a stopping guest's too). */
  capacity(): HostCapacity {
    let memory = 0;
    let vcpus = 0;
    for (const g of [...this.guests.values(), ...[...this.incoming.values()].map((r) => r.guest), ...this.ending]) {
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
    const room: QemuMachineConfig = { memoryBytes: spec.memoryBytes, vcpus: this.options.vcpusPerGuest, accel: this.accel, boot: this.options.boot };
    this.checkRoom(id, room);
    // After the cheap checks: hashing the boot files (once, then only when they change) is the costliest.
    const machine: QemuMachineConfig = { ...room, bootFiles: this.bootFiles(id) };
    const guest = this.startQemu(id, machine, unitMs, []);
    this.guests.set(id, guest);
    return guest;
  }

  /** The reservation of an incoming guest, or NotFoundError (tests and logs look at its QEMU). */
  incomingGuest(id: string): QemuIncoming {
    const r = this.incoming.get(id);
    if (r === undefined) throw new NotFoundError(`no incoming guest '${echo(id)}' on this host`, { reason: 'GUEST_NOT_FOUND', metadata: { guestId: id } });
    return r;
  }

  /**
   * Reserves room for an incoming guest: a QEMU with the source's machine waiting for its stream
   * (incoming.ts). Refused when the machine is not one this host runs (incoming-machine.ts), or
   * does not fit; the reservation's memoryReady rejects if that QEMU does not come up.
   */
  reserve(description: GuestDescription): QemuIncoming {
    const machine = incomingMachine(description, { boot: this.options.boot, accel: this.accel, bootFiles: () => bootFileDigests(this.options.boot) });
    this.checkRoom(description.id, machine);
    const guest = this.startQemu(description.id, machine, description.unitMs || this.options.unitMsDefault, ['-incoming', 'defer', '-S']);
    const replica = new QemuIncoming(guest, {
      socketPath: join(guest.runtimeDir, INCOMING_SOCKET),
      activated: (g) => {
        if (this.incoming.get(g.id)?.guest === g) this.incoming.delete(g.id);
        this.guests.set(g.id, g);
        this.options.log.info({ guestId: g.id, pid: g.process.pid }, 'the incoming guest is this host\'s now');
      },
      log: this.options.log,
    });
    this.incoming.set(description.id, replica);
    return replica;
  }

  /**
   * What this agent's boot files hold now, as the guest's QEMU is about to read them: its
   * description carries it, for a target to check its own files against. A file that cannot be
   * read fails the start (FAILED_PRECONDITION), as QEMU would.
   */
  private bootFiles(guestId: string): BootFileDigests | undefined {
    try {
      return bootFileDigests(this.options.boot);
    } catch (error) {
      throw new QmpError('FAILED_PRECONDITION', `guest '${guestId}' did not start: a boot file cannot be read: ${(error as Error).message}`, { metadata: { guestId, command: '(start)' } });
    }
  }

  /** Starts a QEMU for guest `id` with `machine` (and `extra` arguments), in a runtime directory of its own. */
  private startQemu(id: string, machine: QemuMachineConfig, unitMs: number, extra: string[]): QemuGuest {
    const runtimeDir = mkdtempSync(join(this.runtimeBase, RUNTIME_DIR_PREFIX));
    const qmpSocket = join(runtimeDir, QMP_SOCKET);
    let qemu: QemuProcess;
    try {
      qemu = QemuProcess.start(this.options.binary, [...qemuArgs(id, machine, qmpSocket), ...extra], this.options.serialTailBytes);
    } catch (error) {
      rmSync(runtimeDir, { recursive: true, force: true });
      throw error;
    }
    const guest = new QemuGuest(id, machine, unitMs, qemu, {
      runtimeDir,
      qmpSocket,
      qmp: this.options.qmp,
      stopGraceMs: this.options.stopGraceMs,
      log: this.options.log,
      onGone: (g) => {
        if (this.guests.get(g.id) === g) this.guests.delete(g.id);
        if (this.incoming.get(g.id)?.guest === g) this.incoming.delete(g.id);
        this.ending.add(g);
        void g.stopped().then(() => this.ending.delete(g));
      },
    });
    this.options.log.info({ guestId: id, pid: qemu.pid, accel: machine.accel, memoryBytes: machine.memoryBytes, qmpSocket, incoming: extra.length > 0 }, 'started QEMU for the guest');
    return guest;
  }

  /** Ends every guest's QEMU (quit, then SIGKILL after the grace) and waits until all have exited. */
  async shutdown(): Promise<void> {
    for (const guest of [...this.guests.values()]) guest.discard();
    for (const replica of [...this.incoming.values()]) replica.discard();
    // Each QEMU's runtime directory goes with it.
    await Promise.all([...this.ending].map((g) => g.stopped()));
  }

  /** StartGuest's fields as a qemu guest takes them; a bad one is refused naming the request's field. */
  private checkSpec(id: string, spec: GuestSpec): void {
    if (!GUEST_ID.test(id)) throw invalidField('id', `guest id '${echo(id)}': expected 1-64 letters, digits, '.', '_' or '-'`);
    const memory = spec.memoryBytes;
    if (!memorySizeValid(memory)) {
      throw invalidField('memory_bytes', `memory of ${memory} bytes: a qemu guest takes a multiple of 2 MiB from 32 MiB to 1 TiB`, { memoryBytes: memory });
    }
    if (spec.unitMs !== undefined && !(Number.isInteger(spec.unitMs) && spec.unitMs >= UNIT_MS_MIN && spec.unitMs <= UNIT_MS_MAX)) {
      throw invalidField('unit_ms', `unit of ${spec.unitMs} ms: expected ${UNIT_MS_MIN} to ${UNIT_MS_MAX}`);
    }
    // Even 'idle': a profile means nothing here, and taking one would let a caller think it did.
    if (spec.profile !== '') {
      throw invalidField('profile', `profile '${echo(spec.profile)}': profiles are workloads of the built-in sim guest; a qemu guest runs the operating system it boots (qemu.kernel or qemu.disk), so leave the profile out (vmmigrate guest start without --profile)`);
    }
    if (spec.rates !== undefined && Object.keys(spec.rates).length > 0) throw invalidField('rates', 'rates tune the sim guest\'s workload; a qemu guest has none');
    if (spec.environmentSeed !== undefined) throw invalidField('environment_seed', 'the environment seed drives the sim guest\'s outside world; a qemu guest has none');
  }

  private checkRoom(id: string, machine: QemuMachineConfig): void {
    if (this.guests.has(id) || this.incoming.has(id)) throw new AlreadyExistsError(`guest '${id}' already runs on this host (or is arriving)`, { reason: 'GUEST_EXISTS', metadata: { guestId: id } });
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
