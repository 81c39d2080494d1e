// A `sim` replica on the target: a reservation that receives the checkpoint, then a paused
// machine that only moves forward by replaying units, then (on activation) a running guest.
//
// Replay never waits out idle time: applying a unit costs only its busy part's CPU time.
//
// Its memory is made ready from the reservation on (allocated, taken from the host's segment pool,
// and every page mapped), a slice at a time so that the agent's event loop is never held for long:
// the restore then writes into memory that is already there.

import { setImmediate as nextTurn } from 'node:timers/promises';
import { CorruptDataError, InvalidStateError, ReplayDivergenceError, ReservationRefusedError, UnitOrderError } from '../../errors.js';
import type { BaseSource, CheckpointChunk, CheckpointReplayTarget, ReplicaBase, DeltaRestoreTarget, GuestDescription, GuestState, PageRestoreTarget, PostcopyResumeTarget, PostcopyTarget, SourceGuest, TargetReplica } from '../types.js';
import { CheckpointRestorer } from './checkpoint.js';
import { encodeMachineConfig, type SimMachineConfig, summarizeConfig } from './config.js';
import { DeltaRestorer } from './delta.js';
import { combineDigest, machineDigest } from './digest.js';
import { MachineState, SimMachine } from './machine.js';
import { type GuestMemory, type SegmentPool, ZERO_PAGE } from './memory.js';
import { decodePages, pageAccessOf } from './page-codec.js';
import { checkUnitBounds, decodeUnit, EventType, peekUnitHeader, type SyncEvent } from './unit-codec.js';

/** A base image a replica adopts: the machine whose memory holds it (base-types.ts). */
export interface SimBase {
  kind: BaseSource['kind'];
  machine: SimMachine;
}

type ReplicaState = Extract<GuestState, 'restoring' | 'replica' | 'discarded'> | 'diverged' | 'activated';

/** How a replica's memory is had: made ready from the reservation on, or allocated as it is first written. */
export type ReplicaMemoryMode = 'ready' | 'lazy';

/**
 * Pages made ready per turn of the event loop: 4 MiB, 1.5 to 15 ms of page faults here (a fault
 * costs 1.4 us in memory the VM had used before, up to 14 us in memory its host must back first),
 * so that the agent's other work (its gRPC calls, other migrations) waits no longer than that.
 */
export const PREPARE_SLICE_PAGES = 1024;

/** Prepares `memory` a slice per turn of the event loop until it is ready or `stopped()`. */
async function prepareMemory(memory: GuestMemory, stopped: () => boolean): Promise<void> {
  const memoryBytes = memory.memoryBytes;
  try {
    while (!stopped() && memory.prepareSlice(PREPARE_SLICE_PAGES) > 0) await nextTurn();
  } catch (error) {
    // An ArrayBuffer of a segment could not be allocated: the host is out of memory.
    throw new ReservationRefusedError(`could not allocate the replica's ${memoryBytes / 2 ** 20} MiB of memory: ${String(error)}`, { reason: 'CAPACITY_REFUSED', cause: error });
  }
}

export class SimReplica implements TargetReplica, CheckpointReplayTarget, PageRestoreTarget, PostcopyResumeTarget, DeltaRestoreTarget {
  readonly machine: SimMachine;
  private readonly restorer: CheckpointRestorer;
  private replicaState: ReplicaState = 'restoring';
  private finalApplied = false;
  private restoredByPages = false;
  readonly pages: PageRestoreTarget['pages'];
  readonly memoryReady: Promise<void>;
  /** The image this replica's memory starts from, if it adopted one (base-types.ts). */
  readonly base: ReplicaBase | null = null;
  /** The delta being applied, or the last one applied. */
  private delta: DeltaRestorer | null = null;

  /** Capabilities: the sim replica has them all. */
  get replay(): CheckpointReplayTarget {
    return this;
  }

  get pageRestore(): PageRestoreTarget {
    return this;
  }

  get postcopy(): PostcopyResumeTarget {
    return this;
  }

  get deltaRestore(): DeltaRestoreTarget {
    return this;
  }

  get deltaInProgress(): boolean {
    return this.delta !== null && !this.delta.done;
  }

  beginDelta(generation: number, firstSequence: number): void {
    this.require('replica');
    const st = this.machine.state;
    if (this.finalApplied) throw new InvalidStateError(`replica ${this.id} replayed its final unit: no delta follows`);
    if (this.deltaInProgress) throw new InvalidStateError(`replica ${this.id}: delta ${this.delta!.generation} is still being applied`);
    const expected = (this.delta?.generation ?? 0) + 1;
    if (generation !== expected) throw new UnitOrderError(`delta ${generation} out of order: expected delta ${expected}`, generation < expected ? 'duplicate' : 'gap', expected, generation);
    if (st.unitSequence > firstSequence) {
      throw new InvalidStateError(`replica ${this.id} replayed to unit ${st.unitSequence}, past the instant of delta ${generation} (unit ${firstSequence})`);
    }
    this.delta = new DeltaRestorer(this.machine, generation, firstSequence);
  }

  restoreDeltaChunk(chunk: CheckpointChunk): void {
    this.require('replica');
    if (!this.deltaInProgress) throw new InvalidStateError(`replica ${this.id}: delta chunk ${chunk.index} with no delta in progress`);
    this.delta!.apply(chunk);
  }

  constructor(
    readonly id: string,
    readonly config: SimMachineConfig,
    private readonly hooks: {
      /** Frees the reservation (discard). */
      release: (replica: SimReplica) => void;
      /** Turns the replica into a guest running on this host (activate); post-copy passes its page fetcher. */
      activate: (replica: SimReplica, fetch?: (pages: Uint32Array) => Promise<void>) => SourceGuest;
    },
    memory: { mode: ReplicaMemoryMode; pool: SegmentPool | null; base?: SimBase } = { mode: 'lazy', pool: null },
  ) {
    const base = memory.base;
    // Over a base image its memory is the replica's, there already: only its state is replaced.
    this.machine = new SimMachine(config.memoryBytes, config.rates, base?.machine.memory);
    this.machine.memory.pool = memory.pool;
    this.memoryReady = memory.mode === 'ready' && base === undefined ? prepareMemory(this.machine.memory, () => this.replicaState === 'discarded') : Promise.resolve();
    // Whoever reserved may never wait for it (a test, a reservation released at once).
    this.memoryReady.catch(() => {});
    this.restorer = new CheckpointRestorer(this.machine, base !== undefined);
    if (base !== undefined) {
      const machine = this.machine;
      this.base = { kind: base.kind, unitSequence: base.machine.state.unitSequence, pageHashes: () => machine.memory.pageHashTable() };
    }
    const guestMemory = this.machine.memory;
    const pages = pageAccessOf(guestMemory);
    this.pages = {
      ...pages,
      writePages: (first, count, data) => {
        // Not while restoring: the restore skips elided zero pages, assuming fresh memory.
        this.require('replica');
        guestMemory.writePages(first, count, data);
      },
    };
  }

  describe(): GuestDescription {
    return {
      id: this.id,
      driver: 'sim',
      memoryBytes: this.config.memoryBytes,
      vcpus: 1,
      unitMs: this.config.unitMs,
      state: this.replicaState === 'restoring' ? 'restoring' : this.replicaState === 'replica' ? 'replica' : 'discarded',
      machineConfig: encodeMachineConfig(this.config),
      summary: summarizeConfig(this.config),
      workload: { profile: this.config.profile, rates: { ...this.config.rates } },
    };
  }

  get restored(): boolean {
    return this.restorer.done || this.restoredByPages;
  }

  get nextSequence(): number {
    return this.machine.state.unitSequence;
  }

  /** True once the final unit (sealed at the source's suspend) was replayed. */
  get complete(): boolean {
    return this.finalApplied;
  }

  restoreChunk(chunk: CheckpointChunk): void {
    if (this.replicaState === 'replica') {
      throw new UnitOrderError(`checkpoint chunk ${chunk.index} arrived after the checkpoint was restored`, 'duplicate', this.restorer.chunksApplied, chunk.index);
    }
    this.require('restoring');
    this.restorer.apply(chunk);
    if (this.restorer.done) this.replicaState = 'replica';
  }

  applyPages(bytes: Uint8Array): number {
    this.require('restoring');
    if (this.restorer.chunksApplied > 0) throw new InvalidStateError(`replica ${this.id} is being restored from a checkpoint; pages cannot be mixed in`);
    const memory = this.machine.memory;
    const batch = decodePages(bytes, memory.pageCount);
    for (let i = 0; i < batch.pages.length; i++) {
      const page = batch.pages[i];
      const data = batch.data[i];
      if (data !== null) memory.writePage(page, data);
      else if (memory.pageBytesOrNull(page) !== null) memory.writePage(page, ZERO_PAGE);
    }
    return batch.pages.length;
  }

  restoreMachineState(bytes: Uint8Array): void {
    this.require('restoring');
    if (this.restorer.chunksApplied > 0) throw new InvalidStateError(`replica ${this.id} is being restored from a checkpoint, not by pages`);
    if (bytes.length !== MachineState.BYTES) throw new CorruptDataError(`machine state of ${bytes.length} bytes, expected ${MachineState.BYTES}`);
    this.machine.state = MachineState.deserialize(bytes);
    this.machine.memory.clearDirty();
    this.replicaState = 'replica';
    this.restoredByPages = true;
    this.finalApplied = true;
  }

  activatePostcopy(stateBytes: Uint8Array, fetch: (pages: Uint32Array) => Promise<void>): { guest: SourceGuest; postcopy: PostcopyTarget } {
    this.require('restoring');
    // Post-copy takes every page as missing, which holds only for fresh memory.
    if (this.base !== null) throw new InvalidStateError(`replica ${this.id} starts from a base image; post-copy needs fresh memory`, { reason: 'NOT_SUPPORTED' });
    if (this.restorer.chunksApplied > 0) throw new InvalidStateError(`replica ${this.id} is being restored from a checkpoint, not by post-copy`);
    if (stateBytes.length !== MachineState.BYTES) throw new CorruptDataError(`machine state of ${stateBytes.length} bytes, expected ${MachineState.BYTES}`);
    const memory = this.machine.memory;
    this.machine.state = MachineState.deserialize(stateBytes);
    const stateAtResume = stateBytes.slice();
    memory.markAllMissing();
    memory.clearDirty();
    this.replicaState = 'activated';
    const guest = this.hooks.activate(this, fetch);
    const pageCount = memory.pageCount;
    const postcopy: PostcopyTarget = {
      get missingPages() {
        return memory.missingCount;
      },
      receivePages: (bytes) => {
        const batch = decodePages(bytes, pageCount);
        let stored = 0;
        for (let i = 0; i < batch.pages.length; i++) if (memory.receivePage(batch.pages[i], batch.data[i])) stored++;
        return stored;
      },
      present: (pages) => pages.every((p) => !memory.isMissing(p)),
      missingPageList: () => {
        const list = new Uint32Array(memory.missingCount);
        for (let p = 0, n = 0; n < list.length && p < pageCount; p++) if (memory.isMissing(p)) list[n++] = p;
        return list;
      },
      receivedDigest: () => combineDigest(memory.receivedPagesDigest(), stateAtResume),
    };
    return { guest, postcopy };
  }

  checkUnit(bytes: Uint8Array): void {
    checkUnitBounds(peekUnitHeader(bytes), this.config.unitMs);
  }

  applyUnit(bytes: Uint8Array): { sequence: number; guestNs: number; final: boolean } {
    this.require('replica');
    if (this.deltaInProgress) throw new InvalidStateError(`replica ${this.id}: no unit replays while delta ${this.delta!.generation} is being applied`);
    // Everything is checked before anything is applied: a rejected unit leaves the replica as it was.
    const unit = decodeUnit(bytes);
    checkUnitBounds(unit, this.config.unitMs);
    const st = this.machine.state;
    if (this.finalApplied && unit.sequence >= st.unitSequence) {
      throw new UnitOrderError(`unit ${unit.sequence} arrived after the final unit ${st.unitSequence - 1}`, 'gap', st.unitSequence, unit.sequence);
    }
    if (unit.sequence !== st.unitSequence) {
      const kind = unit.sequence < st.unitSequence ? 'duplicate' : 'gap';
      throw new UnitOrderError(
        kind === 'duplicate'
          ? `unit ${unit.sequence} was already applied (replica is at unit ${st.unitSequence})`
          : `unit ${unit.sequence} skips ahead: expected unit ${st.unitSequence}, ${unit.sequence - st.unitSequence} missing`,
        kind,
        st.unitSequence,
        unit.sequence,
      );
    }
    if (unit.startPosition !== st.position) {
      throw new UnitOrderError(
        `unit ${unit.sequence} starts at instruction ${unit.startPosition}, the replica is at instruction ${st.position}`,
        'position',
        st.unitSequence,
        unit.sequence,
      );
    }
    if (unit.final && (unit.instructionCount !== 0 || unit.asyncEvents.length + unit.syncEvents.length !== 0)) {
      throw new CorruptDataError(`final unit ${unit.sequence} carries execution (${unit.instructionCount} instructions); a final unit only ends the log`);
    }
    const sync = unit.syncEvents;
    let next = 0;
    try {
      this.machine.executeUnit(unit, unit.asyncEvents, (type, position): SyncEvent => {
        const event = sync[next];
        if (event === undefined || event.type !== type || event.position !== position) {
          throw new ReplayDivergenceError(
            `replica diverged in unit ${unit.sequence}: the guest read the ${type === EventType.Clock ? 'clock' : 'random source'} at instruction ${position}, ` +
              (event === undefined ? 'the log has no more synchronous events' : `the log has ${event.type === EventType.Clock ? 'a clock' : 'a random'} read at ${event.position}`),
          );
        }
        next++;
        return event;
      });
      if (next !== sync.length) {
        throw new ReplayDivergenceError(`replica diverged in unit ${unit.sequence}: ${sync.length - next} recorded synchronous events were never asked for`);
      }
    } catch (error) {
      // Part of the unit ran: the replica no longer matches any state of the source.
      this.replicaState = 'diverged';
      throw error;
    }
    if (unit.final) this.finalApplied = true;
    return { sequence: unit.sequence, guestNs: unit.guestNs, final: unit.final };
  }

  digest(): string {
    this.require('replica', 'restoring');
    return machineDigest(this.machine);
  }

  activate() {
    this.require('replica');
    this.replicaState = 'activated';
    return this.hooks.activate(this);
  }

  /** Hands the machine over to a new replica that adopts its memory as a base image; this replica ends, its memory kept. */
  relinquish(): SimMachine {
    if (this.replicaState === 'discarded' || this.replicaState === 'activated') throw new InvalidStateError(`replica ${this.id} is ${this.replicaState}: its memory is no longer its own`);
    this.replicaState = 'discarded';
    this.hooks.release(this);
    return this.machine;
  }

  discard(): void {
    if (this.replicaState === 'discarded' || this.replicaState === 'activated') return;
    this.replicaState = 'discarded';
    this.machine.memory.free();
    this.hooks.release(this);
  }

  private require(...states: ReplicaState[]): void {
    if (!states.includes(this.replicaState)) {
      throw new InvalidStateError(`replica ${this.id} is ${this.replicaState}; this needs it ${states.join(' or ')}`);
    }
  }
}
