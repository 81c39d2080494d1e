// An in-doubt job whose method's copy can no longer run here once the commit went (QEMU's
// post-copy switch): an operator's resume-here is refused, forced or not, since it would report a
// guest resumed that stays stopped; discard-here is still taken. Without that limit, a forced
// resume-here is taken as before.
import { pino } from 'pino';
import t from 'tap';
import { ManualClock } from '../shared/clock.js';
import type { TargetPeer } from '../source-agent/peer.js';
import { InDoubt, verdictOf } from '../source-agent/in-doubt.js';

/** A target that never answers the outcome query. */
const silentPeer = { queryOutcome: () => new Promise(() => {}), redial: () => {} } as unknown as TargetPeer;
const log = pino({ level: 'silent' });

t.test("a copy that cannot run again: resume-here is refused even when forced; discard-here is taken", async (t) => {
  const doubt = new InDoubt(silentPeer, 'job-1', Date.now(), new ManualClock(), log, "QEMU's post-copy has switched");
  const resolved = doubt.resolve();
  t.throws(() => doubt.act('resume-here', true), { code: 'FAILED_PRECONDITION', reason: 'MIGRATION_IN_DOUBT', message: /cannot resume here: QEMU's post-copy has switched/ });
  doubt.act('discard-here', true);
  t.match(await resolved, { kind: 'committed', by: 'operator' }, 'the operator dropped the copy here');
});

t.test('a copy that can run again: a forced resume-here is taken', async (t) => {
  const doubt = new InDoubt(silentPeer, 'job-2', Date.now(), new ManualClock(), log);
  const resolved = doubt.resolve();
  t.throws(() => doubt.act('resume-here', false), { code: 'FAILED_PRECONDITION', reason: 'MIGRATION_IN_DOUBT' }, 'not without force');
  doubt.act('resume-here', true);
  t.match(await resolved, { kind: 'not-committed', by: 'operator' });
});

t.test('verdictOf: a target that did not commit resumes the copy here, unless that copy cannot run again', async (t) => {
  const notCommitted = { kind: 'not-committed', by: 'target', detail: 'no commit recorded' } as const;
  t.match(verdictOf(notCommitted, 'answer lost'), { action: 'resume', status: 'failed' });
  t.match(verdictOf(notCommitted, 'answer lost', "QEMU's post-copy has switched"), { action: 'keep', status: 'failed', errorReason: 'MIGRATION_IN_DOUBT', error: /cannot resume here either.*runs nowhere/ });
});
