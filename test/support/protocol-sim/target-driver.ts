// The target host of the protocol simulation and its hypervisor driver. The host outlives the
// target agent, as a Xen host outlives its dom0 agent: a guest the agent activated keeps running
// across the agent's crash and restart. A replica does not: it lives in the agent's process, and
// goes with it (SimDriver.kill). Replicas restore from the machine's checkpoint chunks or page
// batches (machine.ts) and replay its units, refusing anything out of order or corrupt, so that a
// replica's digest equals the source guest's only if it applied exactly what the guest ran.

import { type CheckpointChunk, type CheckpointReplayTarget, type DeltaRestoreTarget, type DriverCapability, type GuestDescription, type GuestState, type HostCapacity, type HypervisorDriver, PAGE_BYTES, type PageRestoreTarget, type SourceGuest, type TargetReplica } from '../../../shared/driver/types.js';
import { CorruptDataError, InvalidStateError, NotFoundError, ReservationRefusedError, UnitOrderError } from '../../../shared/errors.js';
import { checkUnitOrder, decodeChunk, decodeDeltaChunk, decodeMachineState, decodePages, decodeUnit, digestOf, encodeMachineState, encodePages, PAGE_COUNT, runUnit } from './machine.js';
import { type PlacementObserver, SIM_DRIVER } from './source-guest.js';

const CAPABILITIES: readonly DriverCapability[] = ['checkpoint-replay', 'page-restore', 'delta-checkpoint'];

/** What a replica's work costs its agent: time on the agent's clock (process.ts). */
export interface ReplicaWork {
  work(ms: number): void;
  /** Guest time replayed per unit of the agent's time. */
  replaySpeed: number;
}

/** The agent's time to apply one checkpoint or delta chunk. */
const CHUNK_WORK_MS = 0.5;

/** The machine: its memory, and the guests running on it whatever becomes of the agent. */
export class SimHost {
  readonly running = new Map<string, SimTargetGuest>();
  /** Replicas alive now (reserved, restoring or replaying). */
  readonly replicas = new Set<SimReplica>();
  memoryBytesReserved = 0;

  constructor(
    readonly memoryBytesTotal: number,
    readonly observer: PlacementObserver,
  ) {}

  get memoryBytesUsed(): number {
    let used = 0;
    for (const g of this.running.values()) used += g.memoryBytes;
    return used;
  }
}

/** One run of the target agent's driver: its replicas die with it. */
export class SimDriver implements HypervisorDriver {
  readonly name = SIM_DRIVER;
  readonly capabilities = CAPABILITIES;
  private readonly mine = new Set<SimReplica>();

  constructor(
    private readonly host: SimHost,
    private readonly cost: ReplicaWork,
  ) {}

  capacity(): HostCapacity {
    const { memoryBytesTotal, memoryBytesReserved } = this.host;
    const free = memoryBytesTotal - memoryBytesReserved - this.host.memoryBytesUsed;
    return { driver: this.name, capabilities: CAPABILITIES, memoryBytesTotal, memoryBytesReserved, memoryBytesFree: Math.max(0, free), vcpusTotal: 8, vcpusReserved: this.mine.size };
  }

  listGuests(): GuestDescription[] {
    return [...this.host.running.values()].map((g) => g.describe());
  }

  guest(id: string): SourceGuest {
    const g = this.host.running.get(id);
    if (g === undefined) throw new NotFoundError(`no guest '${id}' on the simulated target`);
    return g;
  }

  reserve(description: GuestDescription): TargetReplica {
    if (this.capacity().memoryBytesFree < description.memoryBytes) throw new ReservationRefusedError(`no room for guest '${description.id}'`);
    const replica = new SimReplica(this.host, description, this.cost, () => this.mine.delete(replica));
    this.mine.add(replica);
    return replica;
  }

  /** The agent's process died: its replicas go with it (a guest it activated stays on the host). */
  kill(): void {
    for (const r of [...this.mine]) r.discard();
  }
}

/** A replica being restored; activated, it becomes a SimTargetGuest on the host. */
export class SimReplica implements TargetReplica {
  readonly id: string;
  private readonly memory = new Uint32Array(PAGE_COUNT);
  private position = 0;
  private chunksApplied = 0;
  private restoredFlag = false;
  private completeFlag = false;
  private next = 0;
  private gone = false;
  readonly replay: CheckpointReplayTarget;
  readonly pageRestore: PageRestoreTarget;
  readonly deltaRestore: DeltaRestoreTarget;
  /** The delta begun and not yet applied (generation 0: none), and the last one applied. */
  private delta = { generation: 0, firstSequence: 0, chunks: 0 };
  private generationApplied = 0;

  constructor(
    private readonly host: SimHost,
    private readonly description: GuestDescription,
    private readonly cost: ReplicaWork,
    private readonly released: () => void,
  ) {
    this.id = description.id;
    host.memoryBytesReserved += description.memoryBytes;
    host.replicas.add(this);
    const self = this;
    this.replay = {
      restoreChunk: (chunk) => this.restoreChunk(chunk),
      applyUnit: (bytes) => this.applyUnit(bytes),
      get restored() {
        return self.restoredFlag;
      },
      get nextSequence() {
        return self.next;
      },
    };
    this.deltaRestore = {
      beginDelta: (generation, firstSequence) => this.beginDelta(generation, firstSequence),
      restoreDeltaChunk: (chunk) => this.restoreDeltaChunk(chunk),
      get deltaInProgress() {
        return self.delta.generation !== 0;
      },
    };
    this.pageRestore = {
      applyPages: (bytes: Uint8Array) => this.applyPages(bytes),
      restoreMachineState: (bytes: Uint8Array) => this.restoreMachineState(bytes),
      pages: {
        pageCount: PAGE_COUNT,
        startDirtyTracking() {},
        stopDirtyTracking() {},
        fetchAndClearDirty: () => new Uint32Array(0),
        readPages: (_first: number, count: number, out: Uint8Array) => out.fill(0, 0, count * PAGE_BYTES),
        encodePages: (pages: Uint32Array) => encodePages(this.memory, pages),
        writePages: () => {
          throw new InvalidStateError('the simulated replica takes pages as batches only');
        },
      },
    };
  }

  get complete(): boolean {
    return this.completeFlag;
  }

  describe(): GuestDescription {
    return { ...this.description, state: this.gone ? 'discarded' : this.restoredFlag ? 'replica' : 'restoring' };
  }

  digest(): string {
    this.alive('digest');
    return digestOf(this.memory, this.position);
  }

  activate(): SourceGuest {
    this.alive('activate');
    if (!this.completeFlag) throw new InvalidStateError(`replica '${this.id}' is not complete`);
    this.leave();
    const guest = new SimTargetGuest(this.description, this.host, digestOf(this.memory, this.position), this.position);
    if (this.host.running.has(this.id)) throw new InvalidStateError(`guest '${this.id}' already runs on the simulated target`);
    this.host.running.set(this.id, guest);
    this.host.observer.changed('target', 'running');
    return guest;
  }

  discard(): void {
    if (this.gone) return;
    this.leave();
  }

  private leave(): void {
    this.gone = true;
    this.host.memoryBytesReserved -= this.description.memoryBytes;
    this.host.replicas.delete(this);
    this.released();
  }

  private alive(what: string): void {
    if (this.gone) throw new InvalidStateError(`${what}: replica '${this.id}' was discarded`);
  }

  private restoreChunk(chunk: CheckpointChunk): void {
    this.alive('restore');
    const c = decodeChunk(chunk.bytes);
    if (c.index !== this.chunksApplied || chunk.index !== c.index) throw new UnitOrderError(`checkpoint chunk ${chunk.index}: expected ${this.chunksApplied}`, chunk.index < this.chunksApplied ? 'duplicate' : 'gap', this.chunksApplied, chunk.index);
    this.memory.set(c.pages, c.firstPage);
    this.chunksApplied++;
    this.cost.work(CHUNK_WORK_MS);
    if (!c.final) return;
    this.position = c.position;
    this.next = c.firstSequence;
    this.restoredFlag = true;
  }

  private applyUnit(bytes: Uint8Array): { sequence: number; guestNs: number; final: boolean } {
    this.alive('replay');
    if (!this.restoredFlag) throw new InvalidStateError(`unit replayed into replica '${this.id}' before its checkpoint was restored`);
    if (this.delta.generation !== 0) throw new InvalidStateError(`unit replayed into replica '${this.id}' while delta ${this.delta.generation} is applied`);
    const unit = decodeUnit(bytes);
    checkUnitOrder(unit, this.next, this.position);
    this.cost.work(this.description.unitMs / this.cost.replaySpeed);
    if (!unit.final) {
      runUnit(this.memory, this.position, unit.event);
      this.position++;
    }
    this.next++;
    if (unit.final) this.completeFlag = true;
    return { sequence: unit.sequence, guestNs: this.description.unitMs * 1e6, final: unit.final };
  }

  private beginDelta(generation: number, firstSequence: number): void {
    this.alive('begin a delta');
    if (!this.restoredFlag || this.delta.generation !== 0 || generation !== this.generationApplied + 1 || this.next > firstSequence) {
      throw new InvalidStateError(`delta ${generation} as of unit ${firstSequence} refused: restored ${this.restoredFlag}, delta in progress ${this.delta.generation}, last applied ${this.generationApplied}, next unit ${this.next}`);
    }
    this.delta = { generation, firstSequence, chunks: 0 };
  }

  private restoreDeltaChunk(chunk: CheckpointChunk): void {
    this.alive('restore a delta');
    const c = decodeDeltaChunk(chunk.bytes, this.memory.length);
    const d = this.delta;
    if (d.generation === 0 || c.generation !== d.generation || c.index !== d.chunks || chunk.index !== c.index) {
      throw new UnitOrderError(`delta ${c.generation} chunk ${chunk.index}: expected delta ${d.generation} chunk ${d.chunks}`, chunk.index < d.chunks ? 'duplicate' : 'gap', d.chunks, chunk.index);
    }
    for (const [page, word] of c.pairs) this.memory[page] = word;
    d.chunks++;
    this.cost.work(CHUNK_WORK_MS);
    if (!c.final) return;
    if (c.firstSequence !== d.firstSequence) throw new CorruptDataError(`delta ${d.generation} ends at unit ${c.firstSequence}, announced at ${d.firstSequence}`);
    this.position = c.position;
    this.next = d.firstSequence;
    this.generationApplied = d.generation;
    this.delta = { generation: 0, firstSequence: 0, chunks: 0 };
  }

  private applyPages(bytes: Uint8Array): number {
    this.alive('apply pages');
    const pages = decodePages(bytes, this.memory.length);
    for (const [page, word] of pages) this.memory[page] = word;
    return pages.length;
  }

  private restoreMachineState(bytes: Uint8Array): void {
    this.alive('restore the machine state');
    this.position = decodeMachineState(bytes);
    this.restoredFlag = true;
    this.completeFlag = true;
  }
}

/** A guest running on the target host (activated from a replica). */
export class SimTargetGuest implements SourceGuest {
  state: GuestState = 'running';
  readonly memoryBytes: number;

  constructor(
    private readonly description: GuestDescription,
    private readonly host: SimHost,
    private readonly digestAtResume: string,
    private readonly position: number,
  ) {
    this.memoryBytes = description.memoryBytes;
  }

  get id(): string {
    return this.description.id;
  }

  get pagesMissing(): number {
    return 0;
  }

  describe(): GuestDescription {
    return { ...this.description, state: this.state };
  }

  async suspend(): Promise<void> {
    this.state = 'suspended';
  }

  resume(): void {
    this.state = 'running';
  }

  machineState(): Uint8Array {
    return encodeMachineState(this.position);
  }

  setThrottle(): void {}

  discard(): void {
    if (this.state === 'discarded') return;
    this.state = 'discarded';
    this.host.running.delete(this.id);
    this.host.observer.changed('target', 'discarded');
  }

  /** The digest as it resumed (the simulation does not run the guest on). */
  digest(): string {
    return this.digestAtResume;
  }
}
