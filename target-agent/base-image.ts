// A reservation over a base image (migration.proto BaseImage): when the source accepts one, the
// target looks for an image of the guest it holds already and adopts it as the replica's memory,
// so that the checkpoint carries only the pages that differ. Two are adopted:
//
//   standby   the replica of this guest's standby, whose transfer the same source (peer identity)
//             abandoned: its stream broke, or its primary has been silent past PRIMARY_SILENCE_MS.
//             The primary resyncs its protection after a link loss longer than its log buffer,
//             and only the pages written since go again. A standby whose primary still streams is
//             never taken (the Reserve is refused GUEST_EXISTS, as before).
//   stopped   the guest's own copy, stopped here for good by a failover (SourceGuest.retire): a
//             fail back, the new primary protecting or migrating the guest back here.
//
// Either image belongs to the new replica from then on: the old transfer has ended, and the
// stopped copy never runs again whatever becomes of the reservation.

import type { BaseSource, HypervisorDriver, TargetReplica } from '../shared/driver/types.js';
import { PAYLOAD_RAW_BYTES_MAX, payloadOf } from '../shared/protocol.js';
import { pb } from '../shared/transport/grpc.js';

/** What the base search needs of a transfer in progress here. */
export interface SupersedableTransfer {
  readonly guestId: string | null;
  /** Ends a standby its primary abandoned, handing its replica over; null when it is not one. */
  supersede(reason: string): TargetReplica | null;
}

/**
 * The base image for a new reservation of guest `guestId` asked by `peer`: a standby of it that
 * `peer`'s earlier transfer abandoned (taken from that transfer now), else the guest's retired
 * copy, if the driver holds one. `protection`: the request is a protection's (only a protection
 * takes over a standby).
 */
export function baseSourceFor(guestId: string, peer: string, protection: boolean, transfers: Iterable<[SupersedableTransfer, string]>, driver: HypervisorDriver): BaseSource | undefined {
  if (protection) {
    for (const [transfer, transferPeer] of transfers) {
      if (transfer.guestId !== guestId || transferPeer !== peer) continue;
      const replica = transfer.supersede('superseded: its primary resyncs the protection over this standby');
      if (replica !== null) return { kind: 'standby', replica };
    }
  }
  return driver.listGuests().some((g) => g.id === guestId && g.state === 'suspended') ? { kind: 'stopped' } : undefined;
}

/**
 * The BaseImage message of `replica`'s base, or undefined when it has none or its page hashes do
 * not fit a payload (a guest over 8 GiB: the source then sends a full checkpoint, which a replica
 * over a base restores all the same).
 */
export function baseImageMessage(replica: TargetReplica): InstanceType<typeof pb.BaseImage> | undefined {
  const base = replica.base;
  if (base === null || base === undefined) return undefined;
  const hashes = base.pageHashes();
  if (hashes.byteLength > PAYLOAD_RAW_BYTES_MAX) return undefined;
  // Little-endian on the wire: the typed array's own byte order on the hosts the agents run on.
  const raw = new Uint8Array(hashes.buffer, hashes.byteOffset, hashes.byteLength);
  return pb.BaseImage.create({ kind: base.kind, pageCount: hashes.length, pageHashes: payloadOf(raw), unitSequence: base.unitSequence });
}
