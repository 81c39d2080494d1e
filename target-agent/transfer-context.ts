// What a method's receivers (methods.ts MethodContext) get for one transfer: the session's port
// (session.ts), the reservation's replay windows and switchover deadline, a standby's holds
// (session-standby.ts), and the commit's post-copy resume (session-commit.ts).

import { SWITCHOVER_DEADLINE_SHARE } from '../shared/convergence.js';
import type { MethodContext } from './methods.js';
import type { Reservation } from './reservation.js';
import type { SessionCommit, SessionCommitPort } from './session-commit.js';
import type { SessionStandby } from './session-standby.js';

export function transferContext(r: Reservation, port: SessionCommitPort, parts: { commit: SessionCommit; standby: SessionStandby; progress(force: boolean): void }): MethodContext {
  const { host } = port;
  const { unitWindow, unitWindowBytes } = host.options;
  const switchoverDeadlineMs = r.maxDurationMs > 0 ? r.reservedAtMs + SWITCHOVER_DEADLINE_SHARE * r.maxDurationMs : Number.POSITIVE_INFINITY;
  return {
    clock: port.clock,
    defer: host.options.defer,
    log: port.log,
    windows: { unitWindow, unitWindowBytes, switchoverDeadlineMs, stopsHeld: () => parts.standby.holdsStops, ackReceipt: () => parts.standby.acksReceipt },
    phase: () => port.phase(),
    restored: () => port.setPhase('replaying'),
    resuming: () => host.decisions?.committed(r.migrationId, r.replica.id),
    resumedHere: (resumedAtMs) => parts.commit.resumedHere(r, resumedAtMs),
    progress: (force) => parts.progress(force),
    send: (body) => port.send(body),
    fail: (error) => port.fail(error),
    unitReplayed: () => host.metrics?.unitsReplayed(),
    acceptNativeStream: host.nativeStreams === undefined ? undefined : (accept) => host.nativeStreams!.register(r.id, { migrationId: r.migrationId, peer: r.peer, accept }),
  };
}
