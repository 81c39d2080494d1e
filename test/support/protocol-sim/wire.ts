// The calls between the agents, over the simulated network: each message serialized with the real
// codecs (the bytes counted as the source agent counts them), given to the faults, then carried on
// its lane, and delivered to the real handlers of the target's MigrationService or back to the
// caller. A unary call has its deadline; it fails UNAVAILABLE when the target is down or the
// connection breaks, DEADLINE_EXCEEDED when its request or answer is lost on a connection that
// looks fine. Transfer streams are in transfer-stream.ts.

import type { ManualClock } from '../../../shared/clock.js';
import { countingService, fromServiceError, grpc, migrationService, pb, type StreamByteCounter } from '../../../shared/transport/grpc.js';
import type { FaultAction, FaultInjector } from './faults.js';
import type { Direction, SimNetwork } from './network.js';
import type { BreakMode, SimConnection, SimTarget } from './target.js';
import type { Trace } from './trace.js';
import { SIM_SOURCE_PEER } from './names.js';

export type UnaryName = 'getCapacity' | 'reserve' | 'release' | 'queryOutcome';

/** A gRPC status as grpc-js gives it to a client: code, details, metadata. */
export function statusError(code: grpc.status, details: string): Error & { code: grpc.status; details: string; metadata: grpc.Metadata } {
  return Object.assign(new Error(`${code} ${grpc.status[code]}: ${details}`), { code, details, metadata: new grpc.Metadata() });
}

/** One message about to go: where, which way, what it is, and what its arrival does. */
export interface Outgoing {
  lane: string;
  direction: Direction;
  kind: string;
  bytes: number;
  connection: SimConnection;
  unary: boolean;
  deliver: () => void;
}

export class SimWire {
  /** The source's client methods: serializers that count every byte, as GrpcTargetPeer's do. */
  readonly client: typeof migrationService;
  /** The target's last answer to an outcome query that reached the source (null: none). */
  lastOutcome: number | null = null;
  /** The last answer was COMMITTED with the guest gone from the target (its agent restarted): the source's copy is the last one. */
  lastGuestLost = false;
  private calls = 0;

  constructor(
    readonly clock: ManualClock,
    readonly net: SimNetwork,
    readonly target: SimTarget,
    readonly faults: FaultInjector,
    readonly trace: Trace,
    counter: StreamByteCounter,
  ) {
    this.client = countingService(migrationService, counter, 'client');
  }

  nextCallId(): number {
    return ++this.calls;
  }

  /** Sends `m`, unless a fault has it otherwise. */
  send(m: Outgoing): void {
    const arrow = m.direction === 'toTarget' ? '->T' : '->S';
    if (m.connection.broken) return this.trace.add(`${arrow} ${m.lane} ${m.kind} lost: the connection is broken`);
    const action = this.faults.onMessage(m.kind, m.direction);
    this.trace.add(`${arrow} ${m.lane} ${m.kind} ${m.bytes}B${action ? ` [${action.kind}]` : ''}`);
    const deliver = m.deliver;
    const traced = this.trace.lines === null ? m : { ...m, deliver: () => (this.trace.detail(`arrives ${m.lane} ${m.kind}`), deliver()) };
    if (action === null) return this.net.carry(m.lane, m.direction, m.bytes, traced.deliver);
    this.apply(action, traced);
  }

  private apply(action: FaultAction, m: Outgoing): void {
    switch (action.kind) {
      case 'reset':
        return m.connection.break('reset');
      case 'blackhole':
        // Lost where nobody notices: a unary caller waits out its deadline; a stream's connection resets.
        if (!m.unary) m.connection.break('reset');
        return;
      case 'hold':
        return this.net.carry(m.lane, m.direction, m.bytes, m.deliver, action.ms);
      case 'stall':
      case 'cancel':
      case 'journal':
        this.faults.act(action);
        return this.net.carry(m.lane, m.direction, m.bytes, m.deliver);
      case 'crash': {
        const crash = () => this.target.crash(action.downMs);
        if (action.when === 'before' && m.direction === 'toSource') return crash();
        // Before: the message reaches a process that dies on it. After: handled (or out), then the crash.
        const deliver = action.when === 'before' ? crash : () => (m.deliver(), this.clock.timeout(0, crash));
        return this.net.carry(m.lane, m.direction, m.bytes, deliver);
      }
    }
  }

  /** A unary call of the Migration service; `label` names it for the faults and the trace (a ping is a getCapacity). */
  unary<Res>(name: UnaryName, label: string, request: unknown, timeoutMs: number, what: string): Promise<Res> {
    const id = this.nextCallId();
    return new Promise<Res>((resolve, reject) => {
      let settled = false;
      let forget = () => {};
      const finish = (error: (Error & { code: grpc.status }) | null, value?: unknown) => {
        if (settled) return;
        settled = true;
        deadline.cancel();
        forget();
        this.trace.add(`${label}#${id} ${error === null ? 'answered' : `fails ${grpc.status[error.code]}`}`);
        if (error === null && name === 'queryOutcome') {
          const answer = value as { outcome: number; guestPresent?: boolean; missingPages?: number };
          this.lastOutcome = answer.outcome;
          this.lastGuestLost = answer.outcome === pb.OutcomeResponse.Outcome.COMMITTED && answer.guestPresent !== true && (answer.missingPages ?? 0) === 0;
        }
        if (error === null) resolve(value as Res);
        else reject(fromServiceError(error, what));
      };
      const deadline = this.clock.timeout(timeoutMs, () => finish(statusError(grpc.status.DEADLINE_EXCEEDED, `Deadline exceeded after ${timeoutMs} ms`)));
      const connection = this.target.connect();
      if (connection === null) {
        this.clock.timeout(this.net.delayMs(), () => finish(statusError(grpc.status.UNAVAILABLE, 'connect ECONNREFUSED (the target agent is down)')));
        return;
      }
      forget = connection.onBreak((mode) => this.unaryBroken(id, mode, finish));
      const m = this.client[name];
      const bytes = m.requestSerialize(request as never);
      const decoded = migrationService[name].requestDeserialize(bytes);
      const deliver = () => this.handle(connection, name, label, id, decoded, finish);
      this.send({ lane: `u${id}>`, direction: 'toTarget', kind: label, bytes: bytes.length, connection, unary: true, deliver });
    });
  }

  /** The connection of unary call `id` broke: a reset is seen after a one-way delay; a crash once the answer in flight (if any) arrived. */
  private unaryBroken(id: number, mode: BreakMode, finish: (error: Error & { code: grpc.status }) => void): void {
    this.net.close(`u${id}>`);
    const error = statusError(grpc.status.UNAVAILABLE, mode === 'reset' ? 'read ECONNRESET' : 'Connection dropped (the target agent died)');
    if (mode === 'reset') {
      this.net.close(`u${id}<`);
      this.clock.timeout(this.net.delayMs(), () => finish(error));
    } else {
      this.net.carry(`u${id}<`, 'toSource', 0, () => finish(error));
    }
  }

  /** The request arrived: the target's handler answers, and the answer goes back unless the target died meanwhile. */
  private handle(connection: SimConnection, name: UnaryName, label: string, id: number, request: unknown, finish: (error: (Error & { code: grpc.status }) | null, value?: unknown) => void): void {
    const process = connection.process;
    if (connection.broken || !process.alive) return;
    const handler = process.handlers[name] as grpc.handleUnaryCall<unknown, unknown>;
    const call = { request, getPeer: () => SIM_SOURCE_PEER, getAuthContext: () => ({}) };
    handler(call as unknown as grpc.ServerUnaryCall<unknown, unknown>, (error, response) => {
      if (connection.broken || !process.alive) return;
      const failed = error !== null && error !== undefined;
      const bytes = failed ? Buffer.alloc(32) : migrationService[name].responseSerialize(response as never);
      const answer = failed ? null : this.client[name].responseDeserialize(bytes);
      const status = failed ? (error as Error & { code: grpc.status }) : null;
      this.send({ lane: `u${id}<`, direction: 'toSource', kind: label, bytes: bytes.length, connection, unary: true, deliver: () => finish(status, answer) });
    });
  }
}
