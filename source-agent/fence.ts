// A copy of a guest stopped for good: its protection was fenced by the arbiter, or the guest was
// failed over to its standby. Nothing it produces leaves any more, it stops, and it is retired: it
// never resumes, and stays only as a base image a fail back sends the differences to.

import type { SourceGuest } from '../shared/driver/types.js';

/** Drops what the guest's output holds and shuts it, suspends the guest if it runs, retires it. */
export async function stopForGood(guest: SourceGuest): Promise<void> {
  // First, and synchronously: outputs of a unit the vCPU finishes before it stops never leave.
  guest.output?.dropHeld();
  if (guest.describe().state === 'running') await guest.suspend();
  guest.retire?.();
}
