// What a target session (session.ts) needs of the agent that accepted its stream, and of the
// stream itself: narrow, so that tests drive a session with fakes.

import type { AgentMetrics } from '../shared/metrics.js';
import type { MigrationMethod } from '../shared/stats.js';
import type { pb, Preserialized } from '../shared/transport/grpc.js';
import type { TransferView } from './incoming-jobs.js';
import type { TargetOptions } from './options.js';
import type { TransferPhase } from './receivers/context.js';
import type { Reservation } from './reservation.js';
import type { TargetDecisions } from './decisions.js';
import type { NativeStreamEndpoints } from './native-streams.js';

type SourceMessage = InstanceType<typeof pb.SourceMessage>;
type TargetMessage = InstanceType<typeof pb.TargetMessage>;

/** What a session needs of the agent that accepted its stream (MigrationService). */
export interface SessionHost {
  readonly options: Pick<TargetOptions, 'unitWindow' | 'unitWindowBytes' | 'progressIntervalMs' | 'activationHooks' | 'hookTimeoutMs' | 'transferIdleTimeoutMs' | 'defer'> & Partial<Pick<TargetOptions, 'resumeWindowMs'>>;
  readonly metrics?: Pick<AgentMetrics, 'incomingEnded' | 'unitsReplayed'>;
  /** Takes reservation `reservationId` for this transfer (NotFoundError, InvalidStateError). */
  open(reservationId: string, method: MigrationMethod): Reservation;
  /** Releases the reservation and discards its replica (unless `keepReplica`: handed over as a base image). */
  release(reservationId: string, reason: string, keepReplica?: boolean): void;
  /** Drops the reservation of a replica that became a guest here. */
  forget(reservationId: string): void;
  /** Discards a guest running here (a post-copy whose commit failed). */
  discardGuest(guestId: string): void;
  /** The agent's commit decisions (journal): a commit is recorded before it is answered. */
  readonly decisions?: Pick<TargetDecisions, 'committed' | 'resumed' | 'dropped'>;
  /** A transfer of `reservationId` whose stream broke and waits to be resumed, if any. */
  waitingForResume?(reservationId: string, migrationId: string, attempt: number): { attach(call: TransferStream, attempt: number): void } | undefined;
  /** qemu-native: where a transfer waits for its hypervisor's stream (absent: this agent takes none). */
  readonly nativeStreams?: Pick<NativeStreamEndpoints, 'register'>;
  /** The transfer of job `jobId` entered `phase`; `view` tells its state (incoming jobs as Control shows them). */
  phaseChanged?(jobId: string, phase: TransferPhase, method: MigrationMethod | null, view: () => TransferView): void;
}

/** The server side of a Transfer stream, as the session uses it. */
export interface TransferStream {
  on(event: 'data', listener: (message: SourceMessage) => void): unknown;
  on(event: 'end' | 'cancelled', listener: () => void): unknown;
  on(event: 'error', listener: (error: Error) => void): unknown;
  /** `message` serialized already (outbox.ts); `callback` once the transport took it. */
  write(message: TargetMessage | Preserialized, callback?: () => void): unknown;
  /** Ends the stream with OK, once what was written is sent. */
  end(): unknown;
  /** Ends the stream with `error`'s status (a grpc.StatusObject), once what was written is sent. */
  emit(event: 'error', error: unknown): unknown;
}
