// The target's end of a bandwidth probe (target-agent/probe.ts) against a fake call and a manual
// clock: a probe that never ends is ended at its deadline, freeing its slot.
import { EventEmitter } from 'node:events';
import t from 'tap';
import { ManualClock } from '../shared/clock.js';
import { grpc } from '../shared/transport/grpc.js';
import { PROBE_DURATION_MAX_MS, PROBES_MAX, ProbeReceiver } from '../target-agent/probe.js';

type Answer = { error: { code?: number; details?: string } | null; result: unknown };

function probe(receiver: ProbeReceiver): { call: EventEmitter; answers: Answer[] } {
  const call = new EventEmitter();
  const answers: Answer[] = [];
  receiver.handle(call as never, ((error: Answer['error'], result: unknown) => answers.push({ error, result })) as never);
  return { call, answers };
}

t.test('a probe that never ends is ended with DEADLINE_EXCEEDED at its deadline, and its slot is free again', async (t) => {
  const clock = new ManualClock(0);
  const receiver = new ProbeReceiver(clock);
  const stuck = Array.from({ length: PROBES_MAX }, () => probe(receiver));
  stuck[0].call.emit('data', { data: new Uint8Array(1024) });
  const refused = probe(receiver);
  t.equal(refused.answers[0]?.error?.code, grpc.status.RESOURCE_EXHAUSTED, 'every slot taken');
  await clock.advance(PROBE_DURATION_MAX_MS - 1);
  t.equal(stuck[0].answers.length, 0, 'not before its deadline');
  await clock.advance(1);
  for (const p of stuck) t.equal(p.answers[0]?.error?.code, grpc.status.DEADLINE_EXCEEDED);
  const next = probe(receiver);
  next.call.emit('data', { data: new Uint8Array(10) });
  next.call.emit('end');
  t.equal(next.answers[0]?.error, null, 'a slot is free again');
  t.match(next.answers[0]?.result, { receivedBytes: 10 });
  stuck[0].call.emit('end');
  t.equal(stuck[0].answers.length, 1, 'answered once');
});
