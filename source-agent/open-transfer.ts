// Opens a migration's transfer stream (the channel) and sends its Open: the target takes the
// reservation then. A broken stream is resumed within the smaller of our resume window and the
// target's; each attempt is logged, and the first one told to the job's watchers.

import type { Logger } from 'pino';
import type { VmMigrateError } from '../shared/errors.js';
import type { TransferChannel } from './channel.js';
import type { MigrationHooks } from './faults.js';
import type { MigrationRequest, TargetWindows, TransferMethod } from './methods/method.js';
import type { TargetPeer } from './peer.js';
import type { SourceOptions } from './source-options.js';

export interface TransferOpening {
  peer: TargetPeer;
  signal: AbortSignal;
  options: SourceOptions;
  request: MigrationRequest;
  windows: TargetWindows;
  hooks: MigrationHooks;
  log: Logger;
  /** A round event for the job's watchers. */
  announce(message: string): void;
  /** The guest is stopped for the switchover: a broken stream is resumed without backing off. */
  urgent(): boolean;
  open: { reservationId: string; migrationId: string; firstSequence: number; method: TransferMethod['name'] };
}

export function openTransfer(o: TransferOpening): TransferChannel {
  const resumeWindowMs = Math.min(o.options.resumeWindowMs ?? 0, o.windows.resumeWindowMs ?? 0);
  const onResumeAttempt = (attempt: number, error: VmMigrateError) => {
    if (attempt === 0) o.log.warn({ err: error.message, resumeWindowMs }, 'transfer stream broke: resuming it on a new stream');
    else o.log.warn({ attempt, err: error.message }, 'still resuming the transfer');
    if (attempt === 0) o.announce(`the transfer stream broke (${error.message}); resuming it`);
  };
  const { options } = o;
  const resumeForever = o.request.protection !== undefined;
  const opened = o.peer.openTransfer(o.signal, { compress: !o.request.disableCompression, pingIntervalMs: options.pingIntervalMs, packer: options.packer, resumeWindowMs, resumeForever, onResumeAttempt, urgent: () => o.urgent() });
  const channel = o.hooks.wrapChannel?.(opened) ?? opened;
  channel.send({ open: o.open });
  return channel;
}
