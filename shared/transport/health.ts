// The standard gRPC health service (grpc.health.v1.Health, from grpc-health-check) on an agent's
// server: what load balancers, Kubernetes probes and `grpc_health_probe` ask. It reports the agent
// as a whole (service '') and each of its services.
//
// Statuses: NOT_SERVING until the agent listens, SERVING from then on, NOT_SERVING again as soon
// as shutdown begins, so that orchestrators stop sending work while running migrations wind down.
// Watch streams are long-lived: grpc-js's graceful shutdown waits for every open stream, so at
// shutdown we send each watcher NOT_SERVING and then end its stream; otherwise one idle watcher
// would keep the agent from ever stopping.

import { HealthImplementation, service as healthServiceDefinition, type ServingStatus } from 'grpc-health-check';
import { assert } from '../assert.js';
import { LimitExceededError } from '../errors.js';
import { grpc, makeClient, unary } from './grpc.js';
import { failStream } from './handlers.js';

/** The services whose health an agent reports: '' is the agent as a whole. */
export const HEALTH_SERVICES = ['', 'vmmigrate.v1.Control', 'vmmigrate.v1.Migration'] as const;

/** Watch streams open at once; more are refused with RESOURCE_EXHAUSTED. */
export const HEALTH_WATCHERS_MAX = 64;

export const healthService = healthServiceDefinition as unknown as grpc.ServiceDefinition;

export interface AgentHealth {
  /** Every service SERVING (the agent listens). */
  serving(): void;
  /** Every service NOT_SERVING, and every Watch stream ended (shutdown began). For good. */
  shuttingDown(): void;
}

type WatchCall = grpc.ServerWritableStream<{ service: string }, { status: string }>;

/** Adds the health service to `server`, every service NOT_SERVING until `serving()`. */
export function addHealthService(server: grpc.Server): AgentHealth {
  const health = new HealthImplementation(Object.fromEntries(HEALTH_SERVICES.map((s) => [s, 'NOT_SERVING' satisfies ServingStatus])));
  const watchers = new Set<WatchCall>();
  let stopped = false;
  // HealthImplementation registers its handlers through this; we wrap Watch to bound the number of
  // streams and to be able to end them at shutdown.
  health.addToServer({
    addService(definition, handlers) {
      const watch = handlers.watch as ((call: WatchCall) => void) | undefined;
      assert(typeof watch === 'function', 'grpc-health-check registers a watch handler');
      server.addService(definition as unknown as grpc.ServiceDefinition, {
        ...handlers,
        watch: (call: WatchCall) => {
          if (stopped) {
            call.write({ status: 'NOT_SERVING' });
            call.end();
            return;
          }
          if (watchers.size >= HEALTH_WATCHERS_MAX) {
            const error = new LimitExceededError(`${watchers.size} health Watch streams open, the limit is ${HEALTH_WATCHERS_MAX}; use Check, or close a watcher`, { metadata: { limit: HEALTH_WATCHERS_MAX } });
            failStream(call, error);
            return;
          }
          watchers.add(call);
          call.on('cancelled', () => watchers.delete(call));
          call.on('close', () => watchers.delete(call));
          watch(call);
        },
      });
    },
  });
  const setAll = (status: ServingStatus) => {
    for (const s of HEALTH_SERVICES) health.setStatus(s, status);
  };
  return {
    serving() {
      if (!stopped) setAll('SERVING');
    },
    shuttingDown() {
      if (stopped) return;
      stopped = true;
      setAll('NOT_SERVING');
      for (const call of watchers) {
        try {
          call.end();
        } catch {
          // The watcher went away meanwhile.
        }
      }
      watchers.clear();
    },
  };
}

/** Asks the agent at `address` for the health of `service` ('' for the agent as a whole). */
export async function checkHealth(address: string, service: string, timeoutMs: number, credentials = grpc.credentials.createInsecure()): Promise<ServingStatus | 'SERVICE_UNKNOWN'> {
  const client = makeClient(healthService, 'Health', address, credentials);
  try {
    const check = healthService.Check as grpc.MethodDefinition<{ service: string }, { status: ServingStatus }>;
    const response = await unary(client, check, { service }, timeoutMs, `health of '${service}' at ${address}`);
    return response.status;
  } finally {
    client.close();
  }
}
