// The arbiter: who may run a protected guest. A guest protected to a disaster-recovery site has
// two copies, a primary that runs and a standby that replays; the arbiter makes sure that at most
// one of them runs, whatever breaks (split brain is prevented by construction, not detected).
// Two implementations behind one interface (types.ts), with the same semantics:
// - EtcdArbiter (etcd.ts): over an etcd v3 cluster, through the etcd3 client;
// - MemoryArbiter (memory.ts): the same rules in this process (tests; a single process).
// createArbiter (factory.ts) builds one from the agents' configuration.
//
// Records. Each guest has, under `<keyPrefix>/guests/<guest id>/` (records.ts):
// - `epoch`: { epoch, holder, site, atUnixMs }, the last term granted, with no lease: it
//   survives every holder, so a primary that returns finds the epoch it no longer holds;
// - `primary`: the same record attached to the holder's lease; present while that lease lives.
// The epoch grows by one at every claim and every go-live; it is the term's number.
//
// Operations (an Arbiter per agent, named by its holderId):
// - claim(guest): become primary if the guest has no record or its record names this agent;
//   writes epoch + 1 under a new lease of leaseTtlMs, renewed until the term ends. Another
//   holder's record: FAILED_PRECONDITION (ARBITER_PRIMARY_HELD).
// - goLive(guest, expectedEpoch): compare-and-swap, one etcd transaction comparing both keys'
//   modification revisions with those just read: epoch still expectedEpoch, no other agent's
//   lease alive. Of two concurrent callers exactly one transaction succeeds; the other is ABORTED
//   (ARBITER_EPOCH_CONFLICT). The new holder is always the calling agent: the record must hang
//   on the new holder's lease, which only its own process keeps alive. A live primary elsewhere
//   is FAILED_PRECONDITION (ARBITER_PRIMARY_HELD) unless forced (below).
// - waitForVacancy(guest): for automatic failover: resolves when the primary key is gone (the
//   holder's lease expired or was revoked), with the epoch to pass to goLive.
// - stillPrimary(guest, epoch): a linearizable read plus the local term, for a check right
//   before a resume. term.isHeld(): the same locally and synchronously, for every output.
// - term.release() revokes the lease (a standby may go live at once); term.retire() removes the
//   records (the guest is no longer protected); close() releases every term.
// - A term is fenced (term.onFenced / term.fenced: "stop running this copy") when the watch on
//   the guest's keys shows a newer epoch or the primary key deleted, when a renewal is answered
//   "lease unknown", or when the local deadline passes (below). Fencing is final.
// Every etcd call has a deadline (dialTimeoutMs before the connection is up, callTimeoutMs
// after); reads, grants and revokes are tried at most attemptsMax times; a transaction whose
// answer was lost is read back to learn whether it was applied, never blindly repeated.
//
// Why the old primary has stopped before a standby goes live. Let TTL be the lease's granted
// TTL and M the fence margin (default TTL / 4; renewals every TTL / 4).
//   1. The holder sends a renewal at its instant S; etcd applies it at A >= S and extends the
//      lease to expire at A + TTL. (A new etcd leader extends every lease further: only later.)
//   2. The holder's local deadline is D = S + TTL - M, for the latest S whose renewal was
//      answered (the grant counts as the first). It never moves D on an unanswered renewal, so
//      D <= A + TTL - M for the last renewal etcd applied. At D it fences itself, whether or not
//      it hears from etcd: cut off from etcd, it stops by itself.
//   3. The lease expires at E >= A + TTL >= D + M. A standby learns of it at or after E (the
//      primary key's deletion) and its goLive succeeds at G >= E >= D + M.
// So the old primary fenced at least M before any standby could go live, whatever the network
// did. What the argument needs: only durations are compared, on two monotonic clocks whose rates
// agree within M / TTL (no clock offsets enter); the old primary stops its copy within M of its
// fence callback; and, for an event-loop pause longer than M (the callback runs late),
// term.isHeld() turns false at D by itself, so a copy that checks it before each output
// releases nothing after D. A renewal answered after a pause cannot revive a passed deadline:
// fencing is final. Shorter TTLs mean faster failover (detection takes up to TTL after the last
// renewal), longer ones survive longer etcd hiccups.
//
// Forced go-live (an operator's failover while the old primary's lease is alive): the
// compare-and-swap, then the old lease revoked (an old primary that still reaches etcd learns
// it at its next renewal, or from its watch), then a wait of the old lease's TTL, by the end of
// which an old primary that does not reach etcd has passed its deadline D (its last answered
// renewal preceded the revoke). Only then does goLive return the term. If the revoke fails,
// goLive fails and releases what it won: nothing runs.

export type { Arbiter, FenceEvent, FenceReason, GoLiveOptions, GuestView, PrimaryRecord, PrimaryTerm, TermState, WaitForVacancyOptions } from './types.js';
export { LeaseArbiter, type ArbiterOptions } from './core.js';
export { EtcdArbiter, type EtcdArbiterOptions } from './etcd.js';
export { MemoryArbiter } from './memory.js';
export { MemoryArbiterStore } from './memory-kv.js';
