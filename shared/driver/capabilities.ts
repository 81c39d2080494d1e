// The capabilities a guest or a replica has, by name (types.ts DriverCapability), from the parts it offers.

import type { DriverCapability, SourceGuest, TargetReplica } from './types.js';

/** The capabilities `guest` has, by name (see DriverCapability). */
export function sourceCapabilities(guest: SourceGuest): DriverCapability[] {
  const out: DriverCapability[] = [];
  if (guest.recorder !== undefined) out.push('log-recording');
  if (guest.pages !== undefined) out.push('page-access');
  if (guest.deltas !== undefined) out.push('delta-checkpoint');
  if (guest.nativeStream !== undefined) out.push('native-stream');
  return out;
}

/** The capabilities `replica` has, by name (see DriverCapability). */
export function replicaCapabilities(replica: TargetReplica): DriverCapability[] {
  const out: DriverCapability[] = [];
  if (replica.replay !== undefined) out.push('checkpoint-replay');
  if (replica.pageRestore !== undefined) out.push('page-restore');
  if (replica.postcopy !== undefined) out.push('postcopy-resume');
  if (replica.deltaRestore !== undefined) out.push('delta-checkpoint');
  if (replica.nativeStream !== undefined) out.push('native-stream');
  return out;
}
