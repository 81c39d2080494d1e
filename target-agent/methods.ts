// The migration methods as the target sees them, registered by name: for each, the replica
// capabilities it needs (a replica without one is refused at Open, by name), the stream messages
// it accepts, and the receivers it runs on one transfer. The session routes each stream message
// to its method's receiver and knows nothing else of the method.

import { replicaCapabilities } from '../shared/driver/capabilities.js';
import type { DriverCapability, PostcopyTarget, TargetReplica } from '../shared/driver/types.js';
import { assert } from '../shared/assert.js';
import { echo, InvalidStateError, invalidField, UnimplementedError } from '../shared/errors.js';
import type { MigrationMethod } from '../shared/stats.js';
import type { pb } from '../shared/transport/grpc.js';
import type { ProgressCounters, ProgressReport } from './feedback.js';
import { CheckpointReceiver } from './receivers/checkpoint.js';
import { DeltaReceiver } from './receivers/delta.js';
import type { ReceiverContext } from './receivers/context.js';
import { LogUnitReceiver } from './receivers/log-units.js';
import type { Reservation } from './reservation.js';
import { PageBatchReceiver } from './receivers/page-batches.js';
import { PostcopyReceiver } from './receivers/postcopy.js';
import { NativeStreamReceiver } from './receivers/native-stream.js';
import type { NativeStreamAcceptor } from './native-streams.js';
import { ReplayPipeline, type ReplayPipelineDeps, type ReplayPipelineOptions } from './replay-pipeline.js';

/** The stream messages that carry a method's data, by their SourceMessage field. */
export interface StreamMessages {
  chunk: InstanceType<typeof pb.CheckpointChunk>;
  unit: InstanceType<typeof pb.LogUnit>;
  pages: InstanceType<typeof pb.PageBatch>;
  machineState: InstanceType<typeof pb.MachineState>;
  rebase: InstanceType<typeof pb.Rebase>;
}
export type StreamMessageKind = keyof StreamMessages;

/** What a method's receivers need besides their context: the pipeline's windows and callbacks. */
export interface MethodContext extends ReceiverContext {
  readonly windows: ReplayPipelineOptions;
  /** Where the replay pipeline defers its next slice (default setImmediate). */
  readonly defer?: (fn: () => void) => void;
  /** A receiver failed outside a message (a unit failed to replay): the transfer fails. */
  fail(error: unknown): void;
  /** A unit was replayed (metrics). */
  unitReplayed(): void;
  /** qemu-native: the transfer takes the NativeStream that names its reservation (absent: an agent that takes none). */
  acceptNativeStream?(accept: NativeStreamAcceptor['accept']): void;
}

/** One method's receivers on one transfer. */
export interface MethodTransfer {
  /** A handler for each kind of message the method accepts. */
  readonly receive: { [K in StreamMessageKind]?: (message: StreamMessages[K]) => void };
  /** The receivers' share of a progress report; also what the commit checks (finalReplayed, remainingUnits). */
  counters(): ProgressCounters;
  /** After each progress report sent (the replay pipeline's stop request). */
  afterReport?(nowMs: number, report: ProgressReport): void;
  /** The source answered a stop request. */
  stopDecided?(granted: boolean): void;
  /** CR/TR: the final unit arrived (an early commit may be held until it is replayed). */
  finalReceived?(): boolean;
  /** Post-copy: the guest's receiving end once it runs here; the commit then compares the pages as received. */
  running?(): PostcopyTarget | null;
  /** The transfer was resumed on a new stream: ask again for what is still awaited (post-copy's pages). */
  resumed?(): void;
  /** CR/TR: replays every unit received, at once (a standby's failover); returns how many. */
  drain?(): number;
  /**
   * qemu-native: the hypervisor's stream flows on a stream of its own, so the Transfer stream's
   * silence is no idleness while bytes came on it since the idle watchdog last asked.
   */
  streaming?(): boolean;
}

/** An opened transfer: its reservation, its method and the method's receivers. */
export interface OpenTransfer {
  readonly reservation: Reservation;
  readonly method: TargetMethod;
  readonly receivers: MethodTransfer;
}

export interface TargetMethod {
  readonly name: MigrationMethod;
  /** Replica capabilities the method needs: checked at Open. */
  readonly needs: readonly DriverCapability[];
  /** Stream messages it accepts; any other is refused. */
  readonly accepts: readonly StreamMessageKind[];
  /** Its receivers on `replica`, which has every capability in `needs`. */
  start(replica: TargetReplica, context: MethodContext): MethodTransfer;
}

/** The replica's capabilities, by name and type. */
interface ReplicaCapabilities {
  'checkpoint-replay': NonNullable<TargetReplica['replay']>;
  'page-restore': NonNullable<TargetReplica['pageRestore']>;
  'postcopy-resume': NonNullable<TargetReplica['postcopy']>;
}

function lacking(method: MigrationMethod, capability: DriverCapability, replica: TargetReplica): UnimplementedError {
  const driver = replica.describe().driver;
  return new UnimplementedError(`method '${method}' needs capability ${capability}, which driver '${driver}' lacks`, {
    reason: 'CAPABILITY_MISSING',
    metadata: { capability, side: 'target', method, driver },
  });
}

/** The replica's capability `name`, or UnimplementedError naming what `method` lacks. */
function capability<K extends keyof ReplicaCapabilities>(replica: TargetReplica, name: K, method: MigrationMethod): ReplicaCapabilities[K] {
  const found = { 'checkpoint-replay': replica.replay, 'page-restore': replica.pageRestore, 'postcopy-resume': replica.postcopy }[name];
  if (found === undefined) throw lacking(method, name, replica);
  return found as ReplicaCapabilities[K];
}

const crtr: TargetMethod = {
  name: 'crtr',
  needs: ['checkpoint-replay'],
  accepts: ['chunk', 'unit', 'rebase'],
  start(replica, context) {
    const replay = capability(replica, 'checkpoint-replay', 'crtr');
    // Optional: the source sends deltas only to a replica that has the capability.
    const deltaRestore = replica.deltaRestore;
    const deps: ReplayPipelineDeps = {
      replay,
      refreshDigest: () => replica.digest(),
      // Not while a delta is applied: its pages and the replay would mix two instants.
      replaying: () => context.phase() === 'replaying' && deltaRestore?.deltaInProgress !== true,
      clock: context.clock,
      defer: context.defer,
      feedback: { progress: (force) => context.progress(force), stopRequest: (request) => context.send({ stopRequest: request }) },
      onFailure: (error) => context.fail(error),
      onUnitReplayed: () => context.unitReplayed(),
      log: context.log,
    };
    const pipeline = new ReplayPipeline(context.windows, deps);
    const units = new LogUnitReceiver(context, pipeline, replay);
    const { driver, memoryBytes } = replica.describe();
    const deltas = new DeltaReceiver(context, { deltas: deltaRestore, driver, memoryBytes, pipeline });
    const checkpoint: CheckpointReceiver = new CheckpointReceiver(context, {
      replay,
      memoryBytes,
      digest: () => replica.digest(),
      onRestored: () => {
        context.log.info({ chunks: checkpoint.chunksApplied, queuedUnits: pipeline.remainingUnits }, 'checkpoint restored: replaying');
        pipeline.start();
      },
    });
    return {
      receive: {
        chunk: (chunk) => (chunk.generation > 0 ? deltas.receiveChunk(chunk) : checkpoint.receive(chunk)),
        unit: (unit) => units.receive(unit),
        rebase: (rebase) => deltas.receiveRebase(rebase),
      },
      counters: () => ({ chunksApplied: checkpoint.chunksApplied + deltas.chunksApplied, deltaGenerationApplied: deltas.generationApplied, ...pipeline.counters() }),
      afterReport: (nowMs, report) => pipeline.afterReport(nowMs, report.remainingUnitsAllowed),
      stopDecided: (granted) => pipeline.stopDecided(granted),
      finalReceived: () => pipeline.finalReceived,
      drain: () => pipeline.drain(),
    };
  },
};

const precopy: TargetMethod = {
  name: 'precopy',
  needs: ['page-restore'],
  accepts: ['pages', 'machineState'],
  start(replica, context) {
    const pages = new PageBatchReceiver(context, { pageRestore: capability(replica, 'page-restore', 'precopy'), digest: () => replica.digest() });
    return {
      receive: { pages: (batch) => pages.receivePages(batch), machineState: (state) => pages.receiveMachineState(state) },
      counters: () => pages.counters(),
    };
  },
};

const postcopy: TargetMethod = {
  name: 'postcopy',
  needs: ['postcopy-resume'],
  accepts: ['machineState', 'pages'],
  start(replica, context) {
    const receiver = new PostcopyReceiver(context, capability(replica, 'postcopy-resume', 'postcopy'));
    return {
      receive: { machineState: (state) => receiver.receiveMachineState(state), pages: (batch) => receiver.receivePages(batch) },
      counters: () => receiver.counters(),
      running: () => receiver.running,
      resumed: () => receiver.askAgain(),
    };
  },
};

const qemuNative: TargetMethod = {
  name: 'qemu-native',
  needs: ['native-stream'],
  // Nothing of the guest comes on the Transfer stream: its hypervisor's stream has one of its own.
  accepts: [],
  start(replica, context) {
    const native = replica.nativeStream;
    if (native === undefined) throw lacking('qemu-native', 'native-stream', replica);
    if (context.acceptNativeStream === undefined) throw new UnimplementedError('this agent takes no native stream', { reason: 'NOT_SUPPORTED' });
    const receiver = new NativeStreamReceiver(context, native, () => replica.digest());
    context.acceptNativeStream((call, open) => receiver.accept(call, open));
    return { receive: {}, counters: () => receiver.counters(), running: () => receiver.running(), streaming: () => receiver.streamedSinceAsked() };
  },
};

/** How a stream message is named in errors. */
const DESCRIBE: { [K in StreamMessageKind]: (message: StreamMessages[K]) => string } = {
  chunk: (chunk) => `checkpoint chunk ${chunk.index}`,
  unit: (unit) => `log unit ${unit.sequence}`,
  pages: (batch) => `page batch of round ${batch.round}`,
  machineState: () => 'machine state',
  rebase: (rebase) => `rebase to delta ${rebase.generation}`,
};

/**
 * Routes a message of a method's data to the receiver of `transfer` (null: not opened yet), or
 * refuses it (FAILED_PRECONDITION, PROTOCOL_VIOLATION) before the Open or if the method does not take it.
 */
export function routeStreamMessage<K extends StreamMessageKind>(transfer: { method: TargetMethod; receivers: MethodTransfer } | null, kind: K, message: StreamMessages[K]): void {
  if (transfer === null) throw new InvalidStateError(`${DESCRIBE[kind](message)} before Open`, { reason: 'PROTOCOL_VIOLATION' });
  const { method, receivers } = transfer;
  if (!method.accepts.includes(kind)) throw new InvalidStateError(`${DESCRIBE[kind](message)} in a ${method.name} transfer`, { reason: 'PROTOCOL_VIOLATION', metadata: { method: method.name } });
  const receive = receivers.receive[kind];
  assert(receive !== undefined, () => `method '${method.name}' accepts ${kind} messages but has no receiver for them`);
  receive(message);
}

const METHODS: ReadonlyMap<string, TargetMethod> = new Map([crtr, precopy, postcopy, qemuNative].map((m) => [m.name, m]));

/** The method an Open names ('' is crtr, the default), or InvalidArgumentError (field `method` of Open). */
export function targetMethod(name: string): TargetMethod {
  const method = METHODS.get(name === '' ? 'crtr' : name);
  if (method === undefined) throw invalidField('method', `transfer method '${echo(name)}' is not supported by this agent (${[...METHODS.keys()].join(', ')})`, { method: name });
  return method;
}

/** Refuses (UnimplementedError) a replica that lacks a capability `method` needs. */
export function checkCapabilities(method: TargetMethod, replica: TargetReplica): void {
  const has = replicaCapabilities(replica);
  const missing = method.needs.find((need) => !has.includes(need));
  if (missing !== undefined) throw lacking(method.name, missing, replica);
}
