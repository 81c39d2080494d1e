// Operating errors on the wire: toServiceError's google.rpc.Status in the grpc-status-details-bin
// trailer, decoded here as any client would (with the generated google.rpc types), and decoded
// back by fromServiceError onto the error it builds. Bounds on what an error echoes.
import t from 'tap';
import {
  AbortedError,
  bounded,
  CorruptDataError,
  DeadlineExceededError,
  ECHO_CHARS_MAX,
  echo,
  InvalidArgumentError,
  InvalidStateError,
  invalidField,
  LimitExceededError,
  MESSAGE_CHARS_MAX,
  NotFoundError,
  ReservationRefusedError,
  UnimplementedError,
  type VmMigrateError,
} from '../shared/errors.js';
import { google } from '../shared/proto/generated.js';
import { fromServiceError, fromStatus, grpc, rpc, toServiceError } from '../shared/transport/grpc.js';
import { encodeStatus, isErrorReason } from '../shared/transport/status.js';

/** What a client finds in the trailer of `error`, decoded with the generated google.rpc types. */
function trailer(error: { metadata: grpc.Metadata }) {
  const values = error.metadata.get('grpc-status-details-bin');
  if (values.length !== 1 || !Buffer.isBuffer(values[0])) throw new Error(`expected one binary grpc-status-details-bin, got ${values.length}`);
  const status = rpc.Status.decode(values[0]);
  const typeUrls = status.details.map((any) => any.type_url);
  const infoAny = status.details.find((any) => any.type_url === 'type.googleapis.com/google.rpc.ErrorInfo');
  const badRequestAny = status.details.find((any) => any.type_url === 'type.googleapis.com/google.rpc.BadRequest');
  return {
    status,
    typeUrls,
    info: infoAny ? rpc.ErrorInfo.decode(infoAny.value!) : undefined,
    badRequest: badRequestAny ? rpc.BadRequest.decode(badRequestAny.value!) : undefined,
  };
}

t.test('a field violation: INVALID_ARGUMENT, ErrorInfo INVALID_FIELD and a BadRequest naming the proto field', async (t) => {
  const e = toServiceError(invalidField('target_address', 'targetAddress is required (host:port of the target agent)'));
  t.equal(e.code, grpc.status.INVALID_ARGUMENT);
  t.equal(e.details, 'targetAddress is required (host:port of the target agent)');
  const { status, typeUrls, info, badRequest } = trailer(e);
  t.equal(status.code, grpc.status.INVALID_ARGUMENT, 'Status.code is the gRPC code');
  t.equal(status.message, e.details, 'Status.message is the message');
  t.same(typeUrls, ['type.googleapis.com/google.rpc.ErrorInfo', 'type.googleapis.com/google.rpc.BadRequest']);
  t.equal(info?.reason, 'INVALID_FIELD');
  t.equal(info?.domain, 'vmmigrate');
  t.same(info?.metadata, {});
  t.same(
    badRequest?.fieldViolations.map((v) => ({ field: v.field, description: v.description })),
    [{ field: 'target_address', description: 'targetAddress is required (host:port of the target agent)' }],
  );
});

t.test('a reason with metadata: ErrorInfo carries both, no BadRequest', async (t) => {
  const jobId = '3f1c2b7e-0000-4000-8000-000000000000';
  const e = toServiceError(new NotFoundError(`no job '${jobId}' on this agent`, { reason: 'JOB_NOT_FOUND', metadata: { jobId } }));
  t.equal(e.code, grpc.status.NOT_FOUND);
  const { typeUrls, info, badRequest } = trailer(e);
  t.same(typeUrls, ['type.googleapis.com/google.rpc.ErrorInfo']);
  t.equal(info?.reason, 'JOB_NOT_FOUND');
  t.same(info?.metadata, { jobId });
  t.equal(badRequest, undefined);

  const capacity = trailer(toServiceError(new ReservationRefusedError('no vCPU free', { metadata: { vcpusReserved: 1, vcpusTotal: 1 } })));
  t.equal(capacity.info?.reason, 'CAPACITY_REFUSED', "the class's default reason");
  t.same(capacity.info?.metadata, { vcpusReserved: '1', vcpusTotal: '1' }, 'numbers as strings');
});

t.test('anything but an operating error is INTERNAL, reason INTERNAL_ERROR', async (t) => {
  for (const thrown of [new TypeError('cannot read properties of undefined'), 'a string']) {
    const e = toServiceError(thrown);
    t.equal(e.code, grpc.status.INTERNAL);
    const { status, info, badRequest } = trailer(e);
    t.equal(status.code, grpc.status.INTERNAL);
    t.equal(status.message, thrown instanceof Error ? thrown.message : thrown);
    t.equal(info?.reason, 'INTERNAL_ERROR');
    t.equal(info?.domain, 'vmmigrate');
    t.equal(badRequest, undefined);
  }
});

t.test('bounded: the message at most 1024 characters, an echoed value at most 256', async (t) => {
  const id = 'x'.repeat(10_240);
  const e = toServiceError(new NotFoundError(`no guest '${id}' on this host`, { metadata: { guestId: id } }));
  t.ok(e.details.length <= MESSAGE_CHARS_MAX, `message of ${e.details.length} characters`);
  t.match(e.details, new RegExp(`\\.\\.\\. \\(${id.length + 24} characters\\)$`), 'a cut message says how long it was');
  const { status, info } = trailer(e);
  t.equal(status.message, e.details);
  t.equal(info?.metadata.guestId.length, ECHO_CHARS_MAX);
  t.match(info?.metadata.guestId, /^x+\.\.\. \(10240 characters\)$/);
  const bytes = e.metadata.get('grpc-status-details-bin')[0] as Buffer;
  t.ok(Math.ceil(bytes.length / 3) * 4 + e.details.length < 4096, `the trailers stay far below 8 KB (details ${bytes.length} bytes)`);

  t.equal(echo('short'), 'short');
  t.equal(echo(42), '42');
  t.equal(echo('y'.repeat(ECHO_CHARS_MAX)), 'y'.repeat(ECHO_CHARS_MAX), 'exactly at the bound: whole');
  t.equal(echo('y'.repeat(ECHO_CHARS_MAX + 1)).length, ECHO_CHARS_MAX);
  const emoji = bounded(`${'a'.repeat(9)}${'😀'.repeat(20)}`, 30);
  t.ok(emoji.length <= 30);
  t.notOk(/[\ud800-\udbff](?![\udc00-\udfff])/.test(emoji), 'a surrogate pair is never split');
});

t.test('the client side: fromServiceError keeps the code, reason, metadata and field violations', async (t) => {
  const sent = toServiceError(invalidField('downtime_limit_ms', 'downtimeLimitMs 600001: expected 1 to 600000', { limit: 600_000 }));
  const received = fromServiceError(sent, 'starting a migration');
  t.ok(received instanceof InvalidArgumentError);
  t.equal(received.code, 'INVALID_ARGUMENT');
  t.equal(received.reason, 'INVALID_FIELD');
  t.same(received.metadata, { limit: '600000' });
  t.same((received as InvalidArgumentError).fieldViolations, [{ field: 'downtime_limit_ms', description: 'downtimeLimitMs 600001: expected 1 to 600000' }]);
  t.equal(received.message, 'starting a migration: downtimeLimitMs 600001: expected 1 to 600000');

  const refused = fromServiceError(toServiceError(new ReservationRefusedError('no vCPU free for guest', { metadata: { vcpusTotal: 1 } })), 'reservation');
  t.ok(refused instanceof ReservationRefusedError, 'RESOURCE_EXHAUSTED with CAPACITY_REFUSED is a refused reservation');
  t.equal(refused.reason, 'CAPACITY_REFUSED');
  const version = fromServiceError(toServiceError(new InvalidStateError('protocol version 1', { reason: 'PEER_VERSION_MISMATCH' })), 'reservation');
  t.match(version, { code: 'FAILED_PRECONDITION', reason: 'PEER_VERSION_MISMATCH' });
  const capability = fromServiceError(toServiceError(new UnimplementedError('no postcopy-resume', { reason: 'CAPABILITY_MISSING', metadata: { capability: 'postcopy-resume', side: 'target' } })), 'open');
  t.ok(capability instanceof UnimplementedError, 'UNIMPLEMENTED maps back to UnimplementedError');
  t.match(capability, { reason: 'CAPABILITY_MISSING', metadata: { capability: 'postcopy-resume', side: 'target' } });
  const internal = fromServiceError(toServiceError(new Error('bug')), 'call');
  t.match(internal, { code: 'UNAVAILABLE', reason: 'INTERNAL_ERROR', message: 'call: bug (INTERNAL)' });
});

t.test('the client side without details: the class default, and a call deadline is a peer that did not answer', async (t) => {
  const noDetails = (code: grpc.status, details: string) => Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
  t.match(fromServiceError(noDetails(grpc.status.DATA_LOSS, 'bad chunk'), 'x'), { code: 'DATA_LOSS', reason: 'CORRUPT_DATA' });
  t.match(fromServiceError(noDetails(grpc.status.UNAVAILABLE, 'No connection established'), 'x'), { code: 'UNAVAILABLE', reason: 'PEER_UNAVAILABLE' });
  t.match(fromServiceError(noDetails(grpc.status.DEADLINE_EXCEEDED, 'Deadline exceeded'), 'x'), { code: 'DEADLINE_EXCEEDED', reason: 'PEER_UNAVAILABLE' });
  t.match(fromServiceError(noDetails(grpc.status.CANCELLED, 'Cancelled on client'), 'x'), { code: 'ABORTED', reason: 'CANCELLED' });
  t.match(fromStatus(grpc.status.DATA_LOSS, 'unit 7: xxh64 mismatch', 'target', { reason: 'CORRUPT_DATA' }), { reason: 'CORRUPT_DATA', message: 'target: unit 7: xxh64 mismatch' });

  // Details that do not decode, of another domain, or with a reason this build does not know, say nothing.
  const withTrailer = (bytes: Buffer) => {
    const metadata = new grpc.Metadata();
    metadata.set('grpc-status-details-bin', bytes);
    return Object.assign(new Error('m'), { code: grpc.status.NOT_FOUND, details: 'm', metadata });
  };
  t.match(fromServiceError(withTrailer(Buffer.from([0xff, 0xff, 0xff])), 'x'), { code: 'NOT_FOUND', reason: 'GUEST_NOT_FOUND' }, 'garbage: the default');
  const foreign = rpc.ErrorInfo.encode(rpc.ErrorInfo.create({ reason: 'JOB_NOT_FOUND', domain: 'example.com', metadata: { a: 'b' } })).finish();
  const foreignStatus = rpc.Status.encode(
    rpc.Status.create({ code: 5, message: 'm', details: [google.protobuf.Any.create({ type_url: 'type.googleapis.com/google.rpc.ErrorInfo', value: foreign })] }),
  ).finish();
  t.match(fromServiceError(withTrailer(Buffer.from(foreignStatus)), 'x'), { reason: 'GUEST_NOT_FOUND', metadata: {} }, 'another domain: ignored');
  const unknown = encodeStatus(grpc.status.NOT_FOUND, 'm', { reason: 'SOMETHING_NEWER' as never, metadata: { k: 'v' } });
  t.match(fromServiceError(withTrailer(unknown), 'x'), { reason: 'GUEST_NOT_FOUND', metadata: { k: 'v' } }, 'an unknown reason: the default, the metadata kept');
});

t.test('every class has a default reason this build knows; the options argument is optional', async (t) => {
  const errors: VmMigrateError[] = [
    new CorruptDataError('m'),
    new InvalidStateError('m'),
    new InvalidArgumentError('m'),
    new ReservationRefusedError('m'),
    new LimitExceededError('m'),
    new NotFoundError('m'),
    new AbortedError('m'),
    new DeadlineExceededError('m'),
    new UnimplementedError('m'),
  ];
  for (const e of errors) t.ok(isErrorReason(e.reason), `${e.name}: ${e.reason}`);
  t.same(
    errors.map((e) => e.reason),
    ['CORRUPT_DATA', 'PROTOCOL_VIOLATION', 'INVALID_FIELD', 'CAPACITY_REFUSED', 'LIMIT_EXCEEDED', 'GUEST_NOT_FOUND', 'CANCELLED', 'MAX_DURATION_EXCEEDED', 'NOT_SUPPORTED'],
  );
  t.notOk(isErrorReason('ERROR_REASON_UNSPECIFIED'));
  t.notOk(isErrorReason('toString'), 'not a property of every object');
  const cause = new Error('underneath');
  t.equal(new CorruptDataError('m', { cause }).cause, cause);
});
