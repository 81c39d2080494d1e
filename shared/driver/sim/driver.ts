// The `sim` hypervisor driver: hosts built-in deterministic guests on this process, as Xen hosts
// domains in dom0's care. It accounts for memory like a real host: running guests and
// reservations both take room, and a reservation that does not fit is refused with the numbers.

import { randomUUID } from 'node:crypto';
import { AlreadyExistsError, echo, invalidField, NotFoundError, ReservationRefusedError } from '../../errors.js';
import { Random } from '../../random.js';
import { type BaseSource, DRIVER_CAPABILITIES, type GuestDescription, PAGE_BYTES, type GuestSpec, type HostCapacity, type HypervisorDriver } from '../types.js';
import { checkMemoryBytes, checkUnitMs, decodeMachineConfig, type SimMachineConfig, UNIT_MS_DEFAULT } from './config.js';
import { type ContentMix, DEFAULT_CONTENT_MIX, fillMemory } from './content.js';
import { SIM_GUEST_DEFAULTS, type SimGuestOptions, SimSourceGuest } from './guest.js';
import { SimMachine } from './machine.js';
import { isProfileName, PROFILE_NAMES, PROFILES, type ProfileName, resolveRates, type WorkloadRates } from './profiles.js';
import { SegmentPool } from './memory.js';
import { type ReplicaMemoryMode, type SimBase, SimReplica } from './replica.js';
import { VcpuThreads } from './vcpu-link.js';
import type { Worker } from 'node:worker_threads';

export interface SimDriverOptions {
  /** Memory this host offers to guests. */
  memoryBytesTotal: number;
  vcpusTotal: number;
  /** Unit length of guests created without one. */
  unitMsDefault: number;
  /** Options of every guest this host runs (pacing, queue and pool limits). */
  guest: Partial<Omit<SimGuestOptions, 'environmentSeed'>>;
  /**
   * A replica's memory: 'ready' (default) allocates and maps all of it from the reservation on, as
   * a Xen domain's is at its build; 'lazy' allocates a segment at its first write (a sparse replica).
   */
  replicaMemory: ReplicaMemoryMode;
  /** Segments of discarded guests and replicas kept for the next replica or guest (default 1 GiB; 0: none). */
  segmentPoolBytesMax: number;
}

export const SEGMENT_POOL_BYTES_MAX_DEFAULT = 2 ** 30;

export interface CreateGuestSpec extends GuestSpec {
  /** A profile name (PROFILE_NAMES); anything else is refused with INVALID_ARGUMENT. */
  profile: ProfileName | string;
  rates?: Partial<WorkloadRates>;
  contentMix?: ContentMix;
  /** Seed of the boot-time memory contents. */
  contentSeed?: number;
  /** Seed of the guest's outside world; default: from the OS. */
  environmentSeed?: number;
  /** Start running at once (default) or stay suspended. */
  start?: boolean;
}

const GUEST_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export class SimDriver implements HypervisorDriver {
  readonly name = 'sim';
  /** Every capability but the hypervisor's own stream (the sim guest has no hypervisor of its own). */
  readonly capabilities = DRIVER_CAPABILITIES.filter((c) => c !== 'native-stream');
  private readonly guests = new Map<string, SimSourceGuest>();
  private readonly replicas = new Map<string, SimReplica>();
  private readonly options: SimDriverOptions;
  private readonly pool: SegmentPool | null;
  private readonly vcpuThreads: VcpuThreads;

  constructor(options: Partial<SimDriverOptions> = {}) {
    this.options = {
      memoryBytesTotal: options.memoryBytesTotal ?? 16 * 2 ** 30,
      vcpusTotal: options.vcpusTotal ?? 16,
      unitMsDefault: options.unitMsDefault ?? UNIT_MS_DEFAULT,
      guest: options.guest ?? {},
      replicaMemory: options.replicaMemory ?? 'ready',
      segmentPoolBytesMax: options.segmentPoolBytesMax ?? SEGMENT_POOL_BYTES_MAX_DEFAULT,
    };
    this.pool = this.options.segmentPoolBytesMax > 0 ? new SegmentPool(this.options.segmentPoolBytesMax) : null;
    const guestOptions = this.guestOptions();
    this.vcpuThreads = new VcpuThreads(guestOptions.vcpu === 'thread' && guestOptions.pacing !== 'manual');
  }

  /** Bytes of segments kept for reuse (see SegmentPool). */
  get pooledBytes(): number {
    return this.pool?.bytes ?? 0;
  }

  capacity(): HostCapacity {
    let used = 0;
    let vcpus = 0;
    for (const g of this.guests.values()) {
      used += g.config.memoryBytes;
      vcpus++;
    }
    for (const r of this.replicas.values()) {
      used += r.config.memoryBytes;
      vcpus++;
    }
    return {
      driver: this.name,
      capabilities: this.capabilities,
      memoryBytesTotal: this.options.memoryBytesTotal,
      memoryBytesReserved: used,
      memoryBytesFree: Math.max(0, this.options.memoryBytesTotal - used),
      vcpusTotal: this.options.vcpusTotal,
      vcpusReserved: vcpus,
    };
  }

  listGuests(): GuestDescription[] {
    return [...this.guests.values()].map((g) => g.describe());
  }

  guest(id: string): SimSourceGuest {
    const g = this.guests.get(id);
    if (g === undefined) throw new NotFoundError(`no guest '${echo(id)}' on this host`, { reason: 'GUEST_NOT_FOUND', metadata: { guestId: id } });
    return g;
  }

  /** Boots a new guest with the given workload; a bad spec is refused naming StartGuestRequest's field. */
  createGuest(spec: CreateGuestSpec): SimSourceGuest {
    const id = spec.id ?? `sim-${randomUUID().slice(0, 8)}`;
    if (!GUEST_ID.test(id)) throw invalidField('id', `guest id '${echo(id)}': expected 1-64 letters, digits, '.', '_' or '-'`);
    checkMemoryBytes(spec.memoryBytes);
    const unitMs = spec.unitMs ?? this.options.unitMsDefault;
    checkUnitMs(unitMs);
    if (!isProfileName(spec.profile)) throw invalidField('profile', `profile '${echo(spec.profile)}': expected one of ${PROFILE_NAMES.join(', ')}`);
    const rates = resolveRates(spec.profile, spec.rates);
    this.checkRoom(id, spec.memoryBytes);
    const config: SimMachineConfig = { profile: spec.profile, rates, payload: PROFILES[spec.profile].payload, memoryBytes: spec.memoryBytes, unitMs };
    const machine = new SimMachine(spec.memoryBytes, rates);
    machine.memory.pool = this.pool;
    fillMemory(machine.memory, spec.contentMix ?? DEFAULT_CONTENT_MIX, spec.contentSeed ?? 1);
    machine.memory.clearDirty();
    const guest = this.host(id, machine, config, spec.environmentSeed, this.vcpuThreads.take());
    if (spec.start !== false) guest.start();
    return guest;
  }

  reserve(description: GuestDescription, baseSource?: BaseSource): SimReplica {
    if (description.driver !== this.name) {
      throw new ReservationRefusedError(`guest '${echo(description.id)}' runs on driver '${echo(description.driver)}'; this host runs '${this.name}'`, {
        reason: 'CAPACITY_REFUSED',
        metadata: { guestId: description.id, driver: this.name, guestDriver: description.driver },
      });
    }
    const config = decodeMachineConfig(description.machineConfig);
    if (config.memoryBytes !== description.memoryBytes) {
      throw invalidField('guest.memory_bytes', `guest '${echo(description.id)}': description says ${description.memoryBytes} bytes, its machine configuration ${config.memoryBytes}`);
    }
    if (!GUEST_ID.test(description.id)) throw invalidField('guest.id', `guest id '${echo(description.id)}': expected 1-64 letters, digits, '.', '_' or '-'`);
    // The base leaves the host's books first: its room is the new replica's.
    const base = baseSource === undefined ? undefined : this.takeBase(description.id, config, baseSource);
    try {
      this.checkRoom(description.id, config.memoryBytes);
    } catch (error) {
      base?.machine.memory.free();
      throw error;
    }
    // The incoming guest's vCPU thread is taken now, so that it runs as soon as it is activated.
    let thread = this.vcpuThreads.take();
    const replica = new SimReplica(description.id, config, {
      release: (r) => {
        if (this.replicas.get(r.id) === r) this.replicas.delete(r.id);
        void thread?.terminate();
      },
      activate: (r, fetch) => {
        this.replicas.delete(r.id);
        const guest = this.host(r.id, r.machine, r.config, undefined, thread);
        thread = undefined;
        if (fetch !== undefined) guest.setPageFetcher(fetch);
        guest.start();
        return guest;
      },
    }, { mode: this.options.replicaMemory, pool: this.pool, base });
    this.replicas.set(description.id, replica);
    return replica;
  }

  /**
   * The machine of a base image of guest `id` for a new replica of `config`, taken off this host's
   * books: a standby's replica (given), or the guest's own retired copy (found here). An image of
   * another size, or none, gives undefined (a standby's replica is then discarded: its transfer ended).
   */
  private takeBase(id: string, config: SimMachineConfig, source: BaseSource): SimBase | undefined {
    if (source.kind === 'standby') {
      const replica = source.replica;
      if (!(replica instanceof SimReplica) || replica.id !== id || this.replicas.get(id) !== replica) return undefined;
      this.replicas.delete(id);
      const machine = replica.relinquish();
      if (machine.memory.pageCount * PAGE_BYTES === config.memoryBytes) return { kind: 'standby', machine };
      machine.memory.free();
      return undefined;
    }
    const guest = this.guests.get(id);
    if (guest === undefined || !guest.retired || guest.config.memoryBytes !== config.memoryBytes) return undefined;
    return { kind: 'stopped', machine: guest.relinquish() };
  }

  /** Discards every guest and replica (agent shutdown, tests). */
  shutdown(): void {
    for (const g of [...this.guests.values()]) g.discard();
    for (const r of [...this.replicas.values()]) r.discard();
    // Nothing comes after a shutdown that could reuse them.
    this.pool?.clear();
    this.vcpuThreads.close();
  }

  private checkRoom(id: string, memoryBytes: number): void {
    if (this.guests.has(id)) throw new AlreadyExistsError(`guest '${id}' already runs on this host`, { reason: 'GUEST_EXISTS', metadata: { guestId: id } });
    if (this.replicas.has(id)) throw new AlreadyExistsError(`guest '${id}' already has a reservation on this host`, { reason: 'GUEST_EXISTS', metadata: { guestId: id } });
    const cap = this.capacity();
    if (memoryBytes > cap.memoryBytesFree) {
      throw new ReservationRefusedError(
        `not enough memory for guest '${id}': it needs ${memoryBytes / 2 ** 20} MiB, this host has ${cap.memoryBytesFree / 2 ** 20} MiB free of ${cap.memoryBytesTotal / 2 ** 20} MiB`,
        { reason: 'CAPACITY_REFUSED', metadata: { guestId: id, memoryBytes, memoryBytesFree: cap.memoryBytesFree } },
      );
    }
    if (cap.vcpusReserved + 1 > cap.vcpusTotal) {
      throw new ReservationRefusedError(`no vCPU free for guest '${id}': ${cap.vcpusReserved} of ${cap.vcpusTotal} in use`, {
        reason: 'CAPACITY_REFUSED',
        metadata: { guestId: id, vcpusReserved: cap.vcpusReserved, vcpusTotal: cap.vcpusTotal },
      });
    }
  }

  private guestOptions(): Omit<SimGuestOptions, 'environmentSeed'> {
    return { ...SIM_GUEST_DEFAULTS, ...this.options.guest };
  }

  private host(id: string, machine: SimMachine, config: SimMachineConfig, environmentSeed: number | undefined, thread?: Worker): SimSourceGuest {
    const guest = new SimSourceGuest(
      id,
      machine,
      config,
      { ...this.guestOptions(), environmentSeed: environmentSeed ?? Random.seedFromOs() },
      (g) => {
        if (this.guests.get(g.id) === g) this.guests.delete(g.id);
      },
      thread,
    );
    this.guests.set(id, guest);
    return guest;
  }
}
