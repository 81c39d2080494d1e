// A method's capabilities, checked: the guest's at StartMigration, the target's at pre-migration.
// A driver without one is refused by name, never met with a crash part-way.

import { sourceCapabilities } from '../../shared/driver/capabilities.js';
import type { DriverCapability, LogRecorder, PageAccess, SourceGuest } from '../../shared/driver/types.js';
import { UnimplementedError } from '../../shared/errors.js';
import type { TransferMethod } from './method.js';

/** Throws UnimplementedError naming what `have` lacks of `method`'s needs on `side`. */
export function checkCapabilities(method: TransferMethod, side: 'source' | 'target', have: readonly string[], who: string): void {
  const missing = method.needs[side].filter((c) => !have.includes(c));
  if (missing.length > 0) {
    throw new UnimplementedError(`method '${method.name}' needs ${missing.join(' and ')} on the ${side}, which ${who} lacks (it has: ${have.join(', ') || 'none'})`, {
      reason: 'CAPABILITY_MISSING',
      metadata: { capability: missing.join(','), side, method: method.name },
    });
  }
}

/** Checks the guest side of `method` for `guest` (driver `driver`). */
export function checkGuestCapabilities(method: TransferMethod, guest: SourceGuest, driver: string): void {
  checkCapabilities(method, 'source', sourceCapabilities(guest), `driver '${driver}'`);
}

function missing(guest: SourceGuest, capability: DriverCapability): never {
  throw new UnimplementedError(`guest '${guest.id}' has no ${capability} capability`, { reason: 'CAPABILITY_MISSING', metadata: { capability, side: 'source', guestId: guest.id } });
}

/** The guest's log recorder (capability log-recording). */
export function recorderOf(guest: SourceGuest): LogRecorder {
  return guest.recorder ?? missing(guest, 'log-recording');
}

/** The guest's page access (capability page-access). */
export function pagesOf(guest: SourceGuest): PageAccess {
  return guest.pages ?? missing(guest, 'page-access');
}
