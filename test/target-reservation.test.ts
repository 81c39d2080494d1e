// The target's reservation registry (target-agent/reservation.ts) with a manual clock: a
// reservation that no Transfer opens in time is released, one that is opened is not; a
// reservation is opened once.
import { pino } from 'pino';
import t from 'tap';
import { ManualClock } from '../shared/clock.js';
import type { TargetReplica } from '../shared/driver/types.js';
import { InvalidStateError, NotFoundError } from '../shared/errors.js';
import { ReservationRegistry } from '../target-agent/reservation.js';

function registry() {
  const clock = new ManualClock();
  const discarded: string[] = [];
  const ended: string[] = [];
  const reservations = new ReservationRegistry({ reservationTimeoutMs: 60_000 }, clock, pino({ level: 'silent' }), {
    incomingEnded: (method, outcome) => void ended.push(`${method} ${outcome}`),
  });
  const reserve = (id: string) => {
    const replica = { id: `guest-${id}`, discard: () => void discarded.push(id) } as unknown as TargetReplica;
    return reservations.reserve(id, { migrationId: `job-${id}`, replica, peer: '127.0.0.1', memoryBytes: 64 * 2 ** 20, downtimeLimitMs: 300, unitMs: 10, maxDurationMs: 0 });
  };
  return { clock, reservations, reserve, discarded, ended };
}

t.test('a reservation not opened within reservationTimeoutMs is released and its replica discarded', async (t) => {
  const { clock, reservations, reserve, discarded, ended } = registry();
  reserve('a');
  reserve('b');
  t.equal(reservations.waiting, 2);
  t.match(reservations.open('b', 'precopy'), { id: 'b', migrationId: 'job-b', opened: true, method: 'precopy' });
  t.equal(reservations.waiting, 1);
  await clock.advance(59_999);
  t.same(discarded, []);
  await clock.advance(1);
  t.same(discarded, ['a'], 'the opened one stays');
  t.same(ended, ['unknown discarded'], 'counted, its method unknown');
  t.equal(reservations.get('a'), undefined);
  t.equal(clock.pendingTimers, 0);
});

t.test('a reservation is opened once; an unknown one is NotFoundError', async (t) => {
  const { reservations, reserve } = registry();
  reserve('a');
  reservations.open('a', 'crtr');
  t.throws(() => reservations.open('a', 'crtr'), new InvalidStateError("reservation 'a' is already in use by another transfer", { reason: 'PROTOCOL_VIOLATION', metadata: { reservationId: 'a' } }));
  t.throws(() => reservations.open('x', 'crtr'), new NotFoundError("no reservation 'x' on this agent (expired or released?)", { reason: 'RESERVATION_NOT_FOUND', metadata: { reservationId: 'x' } }));
});

t.test('release discards the replica; forget (an activated replica) does not; releaseAll releases the rest', async (t) => {
  const { clock, reservations, reserve, discarded, ended } = registry();
  for (const id of ['a', 'b', 'c']) reserve(id);
  reservations.open('a', 'crtr');
  reservations.release('a', 'aborted');
  reservations.forget('b');
  reservations.release('b', 'too late');
  t.same(discarded, ['a'], 'a forgotten reservation is no longer ours to discard');
  t.same(ended, ['crtr discarded']);
  reservations.releaseAll('shutdown');
  t.same(discarded, ['a', 'c']);
  t.equal(clock.pendingTimers, 0, 'no timer left behind');
});
