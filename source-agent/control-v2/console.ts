// GetConsole: a guest's console as its driver keeps it (the qemu driver: its first serial port's
// last bytes), so that an operator reads what the guest says, wherever it runs now.

import type { SourceGuest } from '../../shared/driver/types.js';
import { invalidField, UnimplementedError } from '../../shared/errors.js';
import { pb2 } from '../../shared/transport/grpc.js';

/** Bytes of a console GetConsole returns by default, and at most. */
const CONSOLE_BYTES_DEFAULT = 16 * 1024;
const CONSOLE_BYTES_MAX = 64 * 1024;

/** GetConsole: the last bytes of `guest`'s console; UNIMPLEMENTED for a driver that keeps none. */
export function consoleMessage(guest: SourceGuest, driver: string, maxBytes: number): InstanceType<typeof pb2.GetConsoleResponse> {
  if (maxBytes < 0 || maxBytes > CONSOLE_BYTES_MAX) throw invalidField('max_bytes', `max_bytes ${maxBytes}: expected 0 (${CONSOLE_BYTES_DEFAULT}) or 1 to ${CONSOLE_BYTES_MAX}`);
  if (guest.console === undefined) throw new UnimplementedError(`driver '${driver}' keeps no console of guest '${guest.id}'`, { reason: 'NOT_SUPPORTED', metadata: { guestId: guest.id, driver } });
  const { text, bytesTotal } = guest.console();
  const bytes = Buffer.from(text, 'utf8');
  const keep = maxBytes || CONSOLE_BYTES_DEFAULT;
  return pb2.GetConsoleResponse.create({ text: bytes.subarray(Math.max(0, bytes.length - keep)).toString('utf8'), bytesTotal });
}
