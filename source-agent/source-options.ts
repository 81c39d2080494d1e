// What an outgoing migration is configured with: the agent's timeouts, intervals, credentials and
// shared parts (compression workers, decision journal).

import type { DecisionJournal } from '../shared/journal.js';
import type { PayloadPacker } from '../shared/pack-pool.js';
import { grpc } from '../shared/transport/grpc.js';

export interface SourceOptions {
  /** Deadline of the unary calls (capacity, reservation, release). */
  callTimeoutMs: number;
  /** Wait for the target's activation confirmation after the commit. */
  activationTimeoutMs: number;
  /** Window over which the backlog must shrink to count as converging. */
  convergenceWindowMs: number;
  /** How often the monitor samples the backlog and the clock. */
  monitorIntervalMs: number;
  /** Round-trip pings on the transfer stream. */
  pingIntervalMs: number;
  credentials: grpc.ChannelCredentials;
  /** This agent's id for this run: a target answering with it is this agent itself ('' : not checked). */
  agentInstanceId?: string;
  /** Where checkpoint chunks are packed (lz4, xxh64): the agent's compression workers (default: the event loop). */
  packer?: PayloadPacker;
  /** After the transfer stream broke before the commit, how long to try resuming it (0: never; the target's grant caps it). */
  resumeWindowMs?: number;
  /** The agent's decision journal (default: one in memory for this migration). */
  journal?: DecisionJournal;
}

export const SOURCE_DEFAULTS: SourceOptions = {
  callTimeoutMs: 10_000,
  activationTimeoutMs: 60_000,
  convergenceWindowMs: 2_000,
  monitorIntervalMs: 250,
  pingIntervalMs: 500,
  resumeWindowMs: 10_000,
  credentials: grpc.credentials.createInsecure(),
};

