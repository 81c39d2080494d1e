// The target's session (target-agent/session.ts) on a fake Transfer stream, with a fake host and
// fake replicas and a manual clock: no gRPC, no second process. Open refuses a replica that lacks
// what the method needs, by name; messages a method does not take are refused; a CR/TR transfer
// goes from Open to activation through the receivers and the replay pipeline.
import { EventEmitter } from 'node:events';
import { pino } from 'pino';
import t from 'tap';
import { ManualClock } from '../shared/clock.js';
import type { CheckpointChunk, GuestDescription, SourceGuest, TargetReplica } from '../shared/driver/types.js';
import { CorruptDataError, NotFoundError } from '../shared/errors.js';
import { type PayloadBody, packMessage } from '../shared/protocol.js';
import type { MigrationMethod } from '../shared/stats.js';
import { grpc, pb, Preserialized } from '../shared/transport/grpc.js';
import type { Reservation } from '../target-agent/reservation.js';
import { POSTCOPY_DROPPED_BATCHES_MAX } from '../target-agent/receivers/postcopy.js';
import { type SessionHost, TargetSession } from '../target-agent/session.js';

type SourceMessage = InstanceType<typeof pb.SourceMessage>;
type TargetMessage = InstanceType<typeof pb.TargetMessage>;

const DIGEST = '0123456789abcdef';

/** The server side of a Transfer stream: what the session writes, and a way to send it messages. */
class FakeStream extends EventEmitter {
  readonly written: TargetMessage[] = [];
  ended = false;
  /** The status it ended with, when not OK (grpc-js sends the status of an 'error' emitted on the call). */
  status: grpc.StatusObject | null = null;

  override emit(event: string | symbol, ...args: unknown[]): boolean {
    if (event === 'error') {
      this.ended = true;
      this.status = args[0] as grpc.StatusObject;
    }
    return super.emit(event, ...args);
  }

  write(message: TargetMessage | Preserialized, callback?: () => void): boolean {
    this.written.push(message instanceof Preserialized ? pb.TargetMessage.decode(message.bytes) : message);
    callback?.();
    return true;
  }

  end(): void {
    this.ended = true;
  }

  /** A message as the source sends it, through the codec. */
  receive(message: Record<string, unknown>): void {
    this.emit('data', pb.SourceMessage.decode(pb.SourceMessage.encode(pb.SourceMessage.create(message as never)).finish()));
  }

  /** A message with a payload, serialized as the source agent does (packMessage). */
  receivePayload(body: PayloadBody, raw: Uint8Array): void {
    this.emit('data', pb.SourceMessage.decode(packMessage(body, raw).bytes) as SourceMessage);
  }

  kinds(): string[] {
    return this.written.map((m) => String(m.body));
  }

  last(kind: string): TargetMessage | undefined {
    return this.written.filter((m) => m.body === kind).at(-1);
  }
}

/**
 * A replica with the capabilities named in `parts`. Its units are [sequence, final]; it counts
 * the chunks, units and activations it saw.
 */
function fakeReplica(parts: Array<'replay' | 'pageRestore' | 'postcopy' | 'deltas'>) {
  const seen = { deltaChunks: [] as string[], chunks: 0, units: [] as number[], pageBatches: 0, machineStates: 0, activated: 0, discarded: 0, fetch: null as null | ((pages: Uint32Array) => Promise<void>), guestUnitsRun: 0, runnerBug: false };
  let restored = false;
  const description: GuestDescription = { id: 'g1', driver: 'fake', memoryBytes: 2 ** 26, vcpus: 1, unitMs: 10, state: 'restoring', machineConfig: new Uint8Array(0), summary: '' };
  const replay = {
    restoreChunk(chunk: CheckpointChunk) {
      seen.chunks++;
      restored ||= chunk.final;
    },
    get restored() {
      return restored;
    },
    applyUnit(bytes: Uint8Array) {
      if (bytes[2] === 1) throw new CorruptDataError(`unit ${bytes[0]}: checksum mismatch`);
      seen.units.push(bytes[0]);
      return { sequence: bytes[0], guestNs: 10e6, final: bytes[1] === 1 };
    },
    get nextSequence() {
      return seen.units.length + 1;
    },
  };
  const pageRestore = {
    applyPages: (bytes: Uint8Array) => {
      seen.pageBatches++;
      return bytes.length;
    },
    restoreMachineState: () => void seen.machineStates++,
    pages: {} as NonNullable<TargetReplica['pageRestore']>['pages'],
  };
  // Post-copy: a guest of 4 pages; a page batch is the numbers of the pages it brings.
  const present = new Set<number>();
  const postcopy = {
    activatePostcopy(_state: Uint8Array, fetch: (pages: Uint32Array) => Promise<void>) {
      seen.fetch = fetch;
      const target = {
        get missingPages() {
          return 4 - present.size;
        },
        receivePages: (bytes: Uint8Array) => {
          for (const page of bytes) present.add(page);
          return bytes.length;
        },
        present: (pages: Uint32Array) => pages.every((page) => present.has(page)),
        missingPageList: () => Uint32Array.from([0, 1, 2, 3].filter((page) => !present.has(page))),
        receivedDigest: () => DIGEST,
      };
      // The resumed guest's runner counts its units; the session measures its waits for pages.
      const guest = {
        runnerStats: () => {
          if (seen.runnerBug) throw new TypeError('a bug in the runner statistics');
          return { unitsRun: seen.guestUnitsRun, stallMs: 0, throttledMs: 0 };
        },
      } as unknown as SourceGuest;
      return { guest, postcopy: target };
    },
  };
  // Deltas: a delta is begun, and its final chunk ends it.
  let deltaOpen: number | null = null;
  const deltaRestore = {
    beginDelta(generation: number, firstSequence: number) {
      if (deltaOpen !== null) throw new Error('delta in progress');
      deltaOpen = generation;
      seen.deltaChunks.push(`begin ${generation}@${firstSequence}`);
    },
    restoreDeltaChunk(chunk: CheckpointChunk) {
      seen.deltaChunks.push(`${deltaOpen}:${chunk.index}${chunk.final ? ' final' : ''}`);
      if (chunk.final) deltaOpen = null;
    },
    get deltaInProgress() {
      return deltaOpen !== null;
    },
  };
  const replica: TargetReplica = {
    deltaRestore: parts.includes('deltas') ? deltaRestore : undefined,
    id: 'g1',
    describe: () => description,
    complete: false,
    digest: () => DIGEST,
    activate: () => {
      seen.activated++;
      return {} as SourceGuest;
    },
    discard: () => void seen.discarded++,
    replay: parts.includes('replay') ? replay : undefined,
    pageRestore: parts.includes('pageRestore') ? pageRestore : undefined,
    postcopy: parts.includes('postcopy') ? postcopy : undefined,
  };
  return { replica, seen };
}

/** Hands out one reservation; records what the session asks of it. */
class FakeHost implements SessionHost {
  readonly options: SessionHost['options'] = { unitWindow: 8, unitWindowBytes: 2 ** 20, progressIntervalMs: 20, activationHooks: [], hookTimeoutMs: 1_000, transferIdleTimeoutMs: 30_000 };
  readonly opens: MigrationMethod[] = [];
  readonly released: string[] = [];
  readonly forgotten: string[] = [];
  readonly reservation: Reservation;

  constructor(replica: TargetReplica) {
    this.reservation = { id: 'r1', migrationId: 'job-1', replica, peer: 'test', memoryBytes: 2 ** 26, downtimeLimitMs: 300, unitMs: 10, maxDurationMs: 0, reservedAtMs: 0, opened: false, method: null };
  }

  open(id: string, method: MigrationMethod): Reservation {
    if (id !== this.reservation.id) throw new NotFoundError(`no reservation '${id}' on this agent (expired or released?)`, { reason: 'RESERVATION_NOT_FOUND' });
    this.opens.push(method);
    return this.reservation;
  }

  release(id: string, reason: string): void {
    this.released.push(`${id}: ${reason}`);
  }

  forget(id: string): void {
    this.forgotten.push(id);
  }

  discardGuest(): void {}
}

function start(parts: Array<'replay' | 'pageRestore' | 'postcopy' | 'deltas'> = ['replay', 'pageRestore', 'postcopy'], options: { resumeWindowMs?: number } = {}) {
  const { replica, seen } = fakeReplica(parts);
  const host = new FakeHost(replica);
  Object.assign(host.options, options);
  const stream = new FakeStream();
  const clock = new ManualClock(1_000);
  const session = new TargetSession(stream, host, pino({ level: 'silent' }), clock);
  return { host, stream, clock, session, seen };
}

/** Lets the deferred replay slices run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

const unitBytes = (sequence: number, final = false) => Uint8Array.of(sequence, final ? 1 : 0, 0, 0);
const unitBody = (sequence: number, final = false): PayloadBody => ({ kind: 'unit', sequence, final, guestNs: 10e6, eventCount: 0 });

t.test('Open refuses a replica that lacks a capability the method needs: UNIMPLEMENTED, naming both', async (t) => {
  const cases: Array<[method: string, parts: Array<'replay' | 'pageRestore' | 'postcopy'>, capability: string]> = [
    ['crtr', ['pageRestore', 'postcopy'], 'checkpoint-replay'],
    ['', ['pageRestore', 'postcopy'], 'checkpoint-replay'],
    ['precopy', ['replay', 'postcopy'], 'page-restore'],
    ['postcopy', ['replay', 'pageRestore'], 'postcopy-resume'],
  ];
  for (const [method, parts, capability] of cases) {
    const { host, stream, session } = start(parts);
    stream.receive({ open: { reservationId: 'r1', method } });
    await session.done;
    const expected = `method '${method || 'crtr'}' needs capability ${capability}, which driver 'fake' lacks`;
    t.same(stream.kinds(), ['error'], `${method || '(default)'}: nothing but the error`);
    t.match(stream.last('error')?.error, { code: grpc.status.UNIMPLEMENTED, message: expected, reason: 'CAPABILITY_MISSING' });
    t.match(stream.status, { code: grpc.status.UNIMPLEMENTED, details: expected }, 'and the stream ends with that status');
    t.same(host.released, [`r1: ${expected}`], 'the reservation is released');
    t.ok(stream.ended);
    t.notOk(session.opened);
  }
});

t.test('Open accepts a replica with just what the method needs, and acknowledges with a progress report', async (t) => {
  const { host, stream, session } = start(['replay']);
  stream.receive({ open: { reservationId: 'r1', method: 'crtr' } });
  t.same(host.opens, ['crtr']);
  t.same(stream.kinds(), ['progress']);
  t.match(stream.last('progress')?.progress, { checkpointRestored: false, remainingUnitsAllowed: 18 });
  t.ok(session.opened);
  session.abort('test over');
  t.same(host.released, ['r1: target agent: test over']);
});

t.test('Open of an unknown method is refused with INVALID_ARGUMENT before the reservation is touched', async (t) => {
  const { host, stream, session } = start();
  stream.receive({ open: { reservationId: 'r1', method: 'teleport' } });
  await session.done;
  t.match(stream.last('error')?.error, { code: grpc.status.INVALID_ARGUMENT, message: "transfer method 'teleport' is not supported by this agent (crtr, precopy, postcopy, qemu-native)", reason: 'INVALID_FIELD' });
  t.same(host.opens, []);
  t.same(host.released, []);
});

t.test('a stream without Open in time is ended (DEADLINE_EXCEEDED)', async (t) => {
  const { host, stream, clock, session } = start();
  await clock.advance(29_999);
  t.same(stream.written, []);
  await clock.advance(1);
  await session.done;
  const message = "no Open within 30000 ms of the transfer stream's start (idle timeout 30000 ms)";
  t.match(stream.last('error')?.error, { code: grpc.status.DEADLINE_EXCEEDED, message, reason: 'PEER_IDLE' });
  t.match(stream.status, { code: grpc.status.DEADLINE_EXCEEDED, details: message });
  t.same(host.released, []);
});

t.test('an opened transfer whose source goes silent is ended at the idle timeout, unless the target is busy', async (t) => {
  const { host, stream, clock, session } = start(['replay']);
  stream.receive({ open: { reservationId: 'r1', method: 'crtr' } });
  await clock.advance(20_000);
  stream.receive({ ping: { sentMs: 1 } });
  await clock.advance(29_000);
  t.ok(session.opened, 'a message restarts the wait');
  await clock.advance(1_000);
  await session.done;
  t.match(stream.status, { code: grpc.status.DEADLINE_EXCEEDED, details: /nothing from the source for 30000 ms while restoring/ });
  t.same(host.released, ['r1: nothing from the source for 30000 ms while restoring (idle timeout 30000 ms)'], 'the reservation is released');
});

t.test('messages before Open, and messages the method does not take, are refused (FAILED_PRECONDITION)', async (t) => {
  const early = start();
  early.stream.receivePayload(unitBody(1), unitBytes(1));
  t.match(early.stream.last('error')?.error, { code: grpc.status.FAILED_PRECONDITION, message: 'log unit 1 before Open' });

  const precopy = start();
  precopy.stream.receive({ open: { reservationId: 'r1', method: 'precopy' } });
  precopy.stream.receivePayload(unitBody(4), unitBytes(4));
  await precopy.session.done;
  t.match(precopy.stream.last('error')?.error, { code: grpc.status.FAILED_PRECONDITION, message: 'log unit 4 in a precopy transfer' });
  t.same(precopy.host.released, ['r1: log unit 4 in a precopy transfer']);
});

t.test('a commit before the final unit was replayed is refused, and the replica discarded', async (t) => {
  const { host, stream, session } = start(['replay']);
  stream.receive({ open: { reservationId: 'r1', method: 'crtr', firstSequence: 1 } });
  stream.receivePayload({ kind: 'chunk', index: 0, final: false, memoryBytesCovered: 4096 }, new Uint8Array(4096));
  t.match(stream.last('progress')?.progress, { chunksApplied: 1, checkpointRestored: false });
  stream.receivePayload(unitBody(1), unitBytes(1));
  stream.receive({ commit: { digest: DIGEST } });
  await session.done;
  const message = 'commit received before the final unit was replayed (1 units queued, state restoring)';
  t.match(stream.last('error')?.error, { code: grpc.status.FAILED_PRECONDITION, message });
  t.same(host.released, [`r1: ${message}`]);
});

t.test('a CR/TR transfer: checkpoint, units queued then replayed, stop request, final unit, commit, activation', async (t) => {
  const { host, stream, session, seen } = start(['replay']);
  stream.receive({ open: { reservationId: 'r1', method: 'crtr', firstSequence: 1 } });
  stream.receivePayload(unitBody(1), unitBytes(1));
  stream.receivePayload({ kind: 'chunk', index: 0, final: true, memoryBytesCovered: 4096 }, new Uint8Array(4096));
  t.match(stream.last('progress')?.progress, { chunksApplied: 1, checkpointRestored: true, unitsReceived: 1, remainingUnits: 1 });
  t.match(stream.last('stopRequest')?.stopRequest, { remainingUnits: 1, remainingUnitsAllowed: 18 }, 'the queued unit already fits the downtime limit');
  await settle();
  t.same(seen.units, [1], 'the unit queued during the restore is replayed');
  stream.receive({ stopDecision: { granted: true } });
  stream.receivePayload(unitBody(2, true), unitBytes(2, true));
  await settle();
  t.match(stream.last('progress')?.progress, { unitsReplayed: 2, finalReplayed: true, remainingUnits: 0 });
  t.equal(stream.kinds().filter((k) => k === 'stopRequest').length, 1);
  stream.receive({ commit: { digest: DIGEST } });
  await session.done;
  t.match(stream.last('commitResult')?.commitResult, { matched: true, targetDigest: DIGEST });
  t.match(stream.last('activated')?.activated, { hooks: [] });
  t.equal(seen.activated, 1);
  t.same(host.forgotten, ['r1'], 'the replica is a guest of this host now');
  t.same(host.released, []);
  t.ok(stream.ended);
});

t.test('a commit whose digest differs is refused and the replica discarded', async (t) => {
  const { host, stream, session, seen } = start(['replay']);
  stream.receive({ open: { reservationId: 'r1', method: 'crtr' } });
  stream.receivePayload({ kind: 'chunk', index: 0, final: true, memoryBytesCovered: 0 }, new Uint8Array(16));
  stream.receivePayload(unitBody(1, true), unitBytes(1, true));
  await settle();
  stream.receive({ commit: { digest: 'ffffffffffffffff' } });
  await session.done;
  t.match(stream.last('commitResult')?.commitResult, { matched: false, targetDigest: DIGEST });
  t.same(host.released, [`r1: digest mismatch: source ffffffffffffffff, replica ${DIGEST}`]);
  t.equal(seen.activated, 0);
});

t.test('a pre-copy transfer: page batches, then the machine state completes the replica; commit, activation', async (t) => {
  const { host, stream, session, seen } = start(['pageRestore']);
  stream.receive({ open: { reservationId: 'r1', method: 'precopy' } });
  for (const round of [0, 0, 1]) stream.receivePayload({ kind: 'pages', round, pageCount: 1 }, new Uint8Array(4096));
  t.equal(seen.pageBatches, 3);
  stream.receivePayload({ kind: 'machineState' }, new Uint8Array(64));
  t.equal(seen.machineStates, 1);
  t.match(stream.last('progress')?.progress, { pageBatchesApplied: 3, checkpointRestored: true, finalReplayed: true });
  t.same(stream.kinds().filter((k) => k === 'stopRequest'), [], 'no stop request: pre-copy replays nothing');
  stream.receivePayload({ kind: 'pages', round: 2, pageCount: 1 }, new Uint8Array(4096));
  await session.done;
  t.match(stream.last('error')?.error, { code: grpc.status.FAILED_PRECONDITION, message: 'page batch received in a precopy transfer that is replaying' });
  t.equal(host.released.length, 1);

  const next = start(['pageRestore']);
  next.stream.receive({ open: { reservationId: 'r1', method: 'precopy' } });
  next.stream.receivePayload({ kind: 'machineState' }, new Uint8Array(64));
  next.stream.receive({ commit: { digest: DIGEST } });
  await next.session.done;
  t.match(next.stream.last('commitResult')?.commitResult, { matched: true });
  t.equal(next.seen.activated, 1);
  t.same(next.host.forgotten, ['r1']);
});

t.test('a post-copy transfer: resumed here on the machine state, pages fetched on demand, commit on the pages as received', async (t) => {
  const { host, stream, session, seen } = start(['postcopy']);
  stream.receive({ open: { reservationId: 'r1', method: 'postcopy' } });
  stream.receivePayload({ kind: 'pages', round: 0, pageCount: 1 }, Uint8Array.of(0));
  t.match(stream.last('error')?.error, { message: 'page batch received in a postcopy transfer that is restoring' }, 'no page before the guest resumes');
  await session.done;

  const next = start(['postcopy']);
  next.stream.receive({ open: { reservationId: 'r1', method: 'postcopy' } });
  next.stream.receivePayload({ kind: 'machineState' }, new Uint8Array(64));
  t.match(next.stream.last('activated')?.activated, { hooks: [] }, 'confirmed at once');
  t.same(next.host.forgotten, ['r1'], 'the guest is this host\'s from the resume');
  const fetch = next.seen.fetch;
  if (fetch === null) throw new Error('the guest was not resumed');
  let fetched = false;
  void fetch(Uint32Array.of(1, 2)).then(() => (fetched = true));
  t.match(next.stream.last('pageRequest')?.pageRequest, { pages: [1, 2] });
  next.stream.receivePayload({ kind: 'pages', round: 0, pageCount: 1 }, Uint8Array.of(1));
  await settle();
  t.notOk(fetched, 'page 2 still missing');
  next.stream.receivePayload({ kind: 'pages', round: 0, pageCount: 2 }, Uint8Array.of(2, 3));
  await settle();
  t.ok(fetched, 'resolved once both pages are here');
  t.match(next.stream.last('progress')?.progress, { pageBatchesApplied: 0 }, 'reports wait for the progress interval');
  await next.clock.advance(next.host.options.progressIntervalMs);
  t.match(next.stream.last('progress')?.progress, { pageBatchesApplied: 2, missingPages: 1 });
  next.stream.receive({ commit: { digest: DIGEST } });
  t.match(next.stream.last('error')?.error, { message: 'post-copy commit received with 1 pages still missing' });
  t.same(next.host.released, [], 'the guest runs here: nothing to release');
  await next.session.done;

  const last = start(['postcopy']);
  last.stream.receive({ open: { reservationId: 'r1', method: 'postcopy' } });
  last.stream.receivePayload({ kind: 'machineState' }, new Uint8Array(64));
  last.stream.receivePayload({ kind: 'pages', round: 0, pageCount: 4 }, Uint8Array.of(0, 1, 2, 3));
  last.stream.receive({ commit: { digest: DIGEST } });
  await last.session.done;
  t.match(last.stream.last('commitResult')?.commitResult, { matched: true, targetDigest: DIGEST });
  t.equal(host.released.length, 1);
  t.equal(seen.activated, 0, 'post-copy never activates a replica: the guest already runs');
});

t.test('post-copy: a page batch that fails its check is dropped and its pages asked for again; past the limit the stream is dropped for a resume', async (t) => {
  const { stream, session, clock, host } = start(['postcopy'], { resumeWindowMs: 5_000 });
  stream.receive({ open: { reservationId: 'r1', method: 'postcopy' } });
  stream.receivePayload({ kind: 'machineState' }, new Uint8Array(64));
  stream.receivePayload({ kind: 'pages', round: 0, pageCount: 1 }, Uint8Array.of(0));
  const damaged = () => {
    const message = pb.SourceMessage.decode(packMessage({ kind: 'pages', round: 0, pageCount: 2 }, Uint8Array.of(1, 2)).bytes) as SourceMessage;
    const payload = message.pages!.payload!;
    payload.xxh64 = Uint8Array.from(payload.xxh64!, (b: number) => b ^ 0xff);
    stream.emit('data', message);
  };
  damaged();
  t.match(stream.last('pageRequest')?.pageRequest, { pages: [1, 2, 3], resend: true }, 'every missing page asked for again');
  t.match(stream.last('progress')?.progress, { pageBatchesApplied: 1, pageBatchesDropped: 1, missingPages: 3 });
  t.notOk(stream.last('error'), 'the transfer goes on');
  stream.receivePayload({ kind: 'pages', round: 0, pageCount: 1 }, Uint8Array.of(1));
  for (let i = 1; i < POSTCOPY_DROPPED_BATCHES_MAX; i++) damaged();
  const requests = stream.written.filter((m) => m.body === 'pageRequest');
  t.equal(requests.length, POSTCOPY_DROPPED_BATCHES_MAX, 'asked again for each batch dropped within the limit');
  t.same(requests.at(-1)?.pageRequest?.pages, [2, 3], 'only the pages still missing');
  t.equal(stream.status, null, 'the stream goes on');
  damaged();
  t.notOk(stream.last('error'), 'past the limit no error is sent: the source resumes the transfer');
  t.match(stream.status, { code: grpc.status.ABORTED }, 'the stream is dropped (ABORTED): the source resumes it on a new connection');
  let done = false;
  void session.done.then(() => (done = true));
  await clock.advance(20_000);
  t.notOk(done, 'the transfer waits for the source to resume it, whatever the time');
  t.same(host.released, [], 'the guest runs here: nothing released');
});

t.test('a Resume whose Open never arrived opens the transfer with the Open it carries, nothing counted; one for another reservation is refused', async (t) => {
  const { stream, host } = start(['replay'], { resumeWindowMs: 5_000 });
  const open = { reservationId: 'r1', migrationId: 'job-1', method: 'crtr', firstSequence: 1 };
  stream.receive({ resume: { reservationId: 'r1', migrationId: 'job-1', attempt: 1, open } });
  t.same(host.opens, ['crtr'], 'the reservation is opened by it');
  t.match(stream.last('resumed')?.resumed, { messagesReceived: 0 }, 'the source sends everything again');
  t.notOk(stream.last('error'));
  const other = start(['replay'], { resumeWindowMs: 5_000 });
  other.stream.receive({ resume: { reservationId: 'r2', migrationId: 'job-1', attempt: 1, open: { ...open, reservationId: 'r2' } } });
  await other.session.done;
  t.match(other.stream.last('error')?.error, { code: grpc.status.NOT_FOUND }, 'no such reservation');
});

t.test('a CR/TR transfer with a delta: units before its instant dropped, none replayed until it is applied', async (t) => {
  const { stream, session, seen } = start(['replay', 'deltas']);
  stream.receive({ open: { reservationId: 'r1', method: 'crtr', firstSequence: 1 } });
  stream.receivePayload({ kind: 'chunk', index: 0, final: true, memoryBytesCovered: 4096 }, new Uint8Array(4096));
  stream.receive({ stopDecision: { granted: false } });
  stream.receivePayload(unitBody(1), unitBytes(1));
  await settle();
  t.same(seen.units, [1]);
  stream.receivePayload(unitBody(2), unitBytes(2));
  stream.receive({ rebase: { generation: 1, firstSequence: 4, pages: 2 } });
  stream.receivePayload(unitBody(3), unitBytes(3)); // sent before the source knew
  stream.receivePayload({ kind: 'chunk', index: 0, final: false, memoryBytesCovered: 4096, generation: 1 }, new Uint8Array(16));
  stream.receivePayload(unitBody(4), unitBytes(4));
  await settle();
  t.same(seen.units, [1], 'nothing replays while the delta is applied');
  stream.receivePayload({ kind: 'chunk', index: 1, final: true, memoryBytesCovered: 0, generation: 1 }, new Uint8Array(16));
  await settle();
  t.same(seen.deltaChunks, ['begin 1@4', '1:0', '1:1 final']);
  t.same(seen.units, [1, 4], 'replay goes on from the instant; 2 and 3 were superseded');
  t.match(stream.last('progress')?.progress, { unitsReceived: 4, unitsReplayed: 4, unitsSuperseded: 2, deltaGenerationApplied: 1, chunksApplied: 3 });
  stream.receive({ abort: { reason: 'test over' } });
  await session.done;
});

t.test('delta refusals: a chunk of a delta not announced (FAILED_PRECONDITION), a replica without deltas (UNIMPLEMENTED)', async (t) => {
  const stray = start(['replay', 'deltas']);
  stray.stream.receive({ open: { reservationId: 'r1', method: 'crtr', firstSequence: 1 } });
  stray.stream.receivePayload({ kind: 'chunk', index: 0, final: true, memoryBytesCovered: 4096 }, new Uint8Array(4096));
  stray.stream.receivePayload({ kind: 'chunk', index: 0, final: false, memoryBytesCovered: 4096, generation: 2 }, new Uint8Array(16));
  await stray.session.done;
  t.match(stray.stream.last('error')?.error, { code: grpc.status.FAILED_PRECONDITION, reason: 'PROTOCOL_VIOLATION', message: /chunk 0 of delta 2, which was not announced/ });

  const early = start(['replay', 'deltas']);
  early.stream.receive({ open: { reservationId: 'r1', method: 'crtr', firstSequence: 1 } });
  early.stream.receive({ rebase: { generation: 1, firstSequence: 3, pages: 1 } });
  await early.session.done;
  t.match(early.stream.last('error')?.error, { code: grpc.status.FAILED_PRECONDITION, message: /rebase to delta 1 while restoring/ });

  const none = start(['replay']);
  none.stream.receive({ open: { reservationId: 'r1', method: 'crtr', firstSequence: 1 } });
  none.stream.receivePayload({ kind: 'chunk', index: 0, final: true, memoryBytesCovered: 4096 }, new Uint8Array(4096));
  none.stream.receive({ rebase: { generation: 1, firstSequence: 3, pages: 1 } });
  await none.session.done;
  t.match(none.stream.last('error')?.error, { code: grpc.status.UNIMPLEMENTED, reason: 'CAPABILITY_MISSING', message: /makes no delta checkpoints/ });
  t.equal(none.host.released.length, 1, 'the reservation is released');
});

t.test('an early commit is held until the final unit is replayed, then answered', async (t) => {
  const { stream, session, seen } = start(['replay']);
  stream.receive({ open: { reservationId: 'r1', method: 'crtr', firstSequence: 1 } });
  stream.receivePayload({ kind: 'chunk', index: 0, final: true, memoryBytesCovered: 4096 }, new Uint8Array(4096));
  stream.receive({ stopDecision: { granted: true } });
  stream.receivePayload(unitBody(1), unitBytes(1));
  stream.receivePayload(unitBody(2, true), unitBytes(2, true));
  stream.receive({ commit: { digest: DIGEST } });
  t.equal(stream.last('commitResult'), undefined, 'held: the final unit is not replayed yet');
  await settle();
  await session.done;
  t.same(seen.units, [1, 2]);
  t.match(stream.last('commitResult')?.commitResult, { matched: true, targetDigest: DIGEST });
  t.equal(seen.activated, 1);
});

t.test('an early commit whose final replay fails is answered matched=false with the reason', async (t) => {
  const { stream, session, seen, host } = start(['replay']);
  stream.receive({ open: { reservationId: 'r1', method: 'crtr', firstSequence: 1 } });
  stream.receivePayload({ kind: 'chunk', index: 0, final: true, memoryBytesCovered: 4096 }, new Uint8Array(4096));
  stream.receive({ stopDecision: { granted: true } });
  stream.receivePayload(unitBody(1, true), Uint8Array.of(1, 1, 1, 0));
  stream.receive({ commit: { digest: DIGEST } });
  await settle();
  await session.done;
  t.match(stream.last('commitResult')?.commitResult, { matched: false, refusedReason: /unit 1: checksum mismatch/ });
  t.equal(seen.activated, 0);
  t.equal(host.released.length, 1, 'the replica is discarded');
});

t.test('a commit before the final unit arrived is still refused', async (t) => {
  const { stream, session } = start(['replay']);
  stream.receive({ open: { reservationId: 'r1', method: 'crtr', firstSequence: 1 } });
  stream.receivePayload({ kind: 'chunk', index: 0, final: true, memoryBytesCovered: 4096 }, new Uint8Array(4096));
  stream.receivePayload(unitBody(1), unitBytes(1));
  stream.receive({ commit: { digest: DIGEST } });
  await session.done;
  t.match(stream.last('error')?.error, { code: grpc.status.FAILED_PRECONDITION, message: /commit received before the final unit was replayed/ });
});

t.test("a post-copy guest's disruption on the target: its waits for pages and its units, until the last page", async (t) => {
  const { stream, clock, seen } = start(['postcopy']);
  stream.receive({ open: { reservationId: 'r1', method: 'postcopy' } });
  stream.receivePayload({ kind: 'machineState' }, new Uint8Array(64));
  const fetch = seen.fetch;
  if (fetch === null) throw new Error('the guest was not resumed');
  await clock.advance(10);
  void fetch(Uint32Array.of(1, 2));
  void fetch(Uint32Array.of(2));
  await clock.advance(15);
  stream.receivePayload({ kind: 'pages', round: 0, pageCount: 1 }, Uint8Array.of(1));
  await clock.advance(5);
  seen.guestUnitsRun = 3;
  stream.receivePayload({ kind: 'pages', round: 0, pageCount: 1 }, Uint8Array.of(2));
  await clock.advance(20);
  // Two fetches overlapped: the guest waited from the first request to the page both needed, 20 ms.
  t.match(stream.last('progress')?.progress, { missingPages: 2, guestRunMs: 50, guestUnitsRun: 3, guestFetchWaitMs: 20 });
  void fetch(Uint32Array.of(0));
  await clock.advance(7);
  seen.guestUnitsRun = 5;
  stream.receivePayload({ kind: 'pages', round: 0, pageCount: 2 }, Uint8Array.of(0, 3));
  const final = { missingPages: 0, guestRunMs: 57, guestUnitsRun: 5, guestFetchWaitMs: 27 };
  t.match(stream.last('progress')?.progress, final, 'the last page: the report goes at once, with the figures as of then');
  await clock.advance(100);
  seen.guestUnitsRun = 15;
  stream.receivePayload({ kind: 'pages', round: 0, pageCount: 1 }, Uint8Array.of(3));
  t.match(stream.last('progress')?.progress, final, 'later reports keep them: the window closed at the last page');
});

t.test('a rebase after the final unit, or while a delta is applied, is refused: it would drop the end of the log', async (t) => {
  const late = start(['replay', 'deltas']);
  late.stream.receive({ open: { reservationId: 'r1', method: 'crtr', firstSequence: 1 } });
  late.stream.receivePayload({ kind: 'chunk', index: 0, final: true, memoryBytesCovered: 4096 }, new Uint8Array(4096));
  late.stream.receivePayload(unitBody(1, true), unitBytes(1, true));
  late.stream.receive({ rebase: { generation: 1, firstSequence: 3, pages: 1 } });
  await late.session.done;
  t.match(late.stream.last('error')?.error, { code: grpc.status.FAILED_PRECONDITION, reason: 'PROTOCOL_VIOLATION', message: /rebase to delta 1 after the final unit/ });

  const twice = start(['replay', 'deltas']);
  twice.stream.receive({ open: { reservationId: 'r1', method: 'crtr', firstSequence: 1 } });
  twice.stream.receivePayload({ kind: 'chunk', index: 0, final: true, memoryBytesCovered: 4096 }, new Uint8Array(4096));
  twice.stream.receive({ rebase: { generation: 1, firstSequence: 3, pages: 1 } });
  twice.stream.receive({ rebase: { generation: 2, firstSequence: 5, pages: 1 } });
  await twice.session.done;
  t.match(twice.stream.last('error')?.error, { code: grpc.status.FAILED_PRECONDITION, message: /rebase to delta 2 while delta 1 is applied/ });
});

t.test('a second commit while the first is held is refused as such', async (t) => {
  const { stream, session } = start(['replay']);
  stream.receive({ open: { reservationId: 'r1', method: 'crtr', firstSequence: 1 } });
  stream.receivePayload({ kind: 'chunk', index: 0, final: true, memoryBytesCovered: 4096 }, new Uint8Array(4096));
  stream.receive({ stopDecision: { granted: true } });
  stream.receivePayload(unitBody(1, true), unitBytes(1, true));
  stream.receive({ commit: { digest: DIGEST } });
  stream.receive({ commit: { digest: DIGEST } });
  await session.done;
  t.match(stream.last('error')?.error, { code: grpc.status.FAILED_PRECONDITION, message: /commit received twice/ });
  t.match(stream.last('commitResult')?.commitResult, { matched: false }, 'the held commit is answered: nothing was committed');
});

t.test('a transfer kept busy but never committed ends past twice its maximum duration and a minute', async (t) => {
  const { host, stream, clock, session } = start(['replay']);
  (host.reservation as { maxDurationMs: number }).maxDurationMs = 1_000;
  stream.receive({ open: { reservationId: 'r1', method: 'crtr' } });
  // Reserved at 0: the deadline is 2 * 1 s + 60 s later. A ping every 10 s keeps it from idling.
  while (clock.now() < 60_000) {
    await clock.advance(10_000);
    stream.receive({ ping: { sentMs: 1 } });
  }
  t.ok(session.opened);
  await clock.advance(2_000);
  await session.done;
  t.match(stream.status, { code: grpc.status.DEADLINE_EXCEEDED, details: 'the transfer is not committed after 2 times its maximum duration of 1000 ms and 60000 ms' });
  t.same(host.released.length, 1, 'the reservation is released');
});

t.test('a bug in what a session schedules fails that session (INTERNAL), not the process', async (t) => {
  const { stream, clock, seen, session } = start(['postcopy']);
  stream.receive({ open: { reservationId: 'r1', method: 'postcopy' } });
  stream.receivePayload({ kind: 'machineState' }, new Uint8Array(64));
  stream.receivePayload({ kind: 'pages', round: 0, pageCount: 1 }, Uint8Array.of(1));
  // A report held back by the interval: sent from a timer, where the bug is now.
  stream.receivePayload({ kind: 'pages', round: 0, pageCount: 1 }, Uint8Array.of(2));
  seen.runnerBug = true;
  await clock.advance(20);
  await session.done;
  t.match(stream.last('error')?.error, { code: grpc.status.INTERNAL, message: 'a bug in the runner statistics', reason: 'INTERNAL_ERROR' });
  t.match(stream.status, { code: grpc.status.INTERNAL, details: 'a bug in the runner statistics' });
});
