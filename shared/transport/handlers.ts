// The server side of a call, written once for every service: a unary handler that turns what its
// function returns or throws into the callback, and the way a server stream fails.

import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { VmMigrateError } from '../errors.js';
import { toServiceError } from './grpc.js';

/**
 * A factory of unary handlers for `service`: each answers with what `fn` returns (or resolves
 * to), or with the error it throws as a precise status with its details. An error that is not an
 * operating error is a bug: logged, and answered INTERNAL.
 */
export function unaryHandlers(log: Logger, service: string) {
  return <Req, Res>(fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Res | Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
    (call, callback) => {
      Promise.resolve()
        .then(() => fn(call.request, call))
        .then(
          (res) => callback(null, res),
          (error: unknown) => {
            if (!(error instanceof VmMigrateError)) log.error({ err: error }, `unexpected error in a ${service} call`);
            callback(toServiceError(error));
          },
        );
    };
}

/** Ends a server stream with `error`'s status: grpc-js sends it on 'error' (destroy() sends none). */
export function failStream(call: { emit(event: 'error', error: unknown): boolean }, error: unknown): void {
  call.emit('error', toServiceError(error));
}
