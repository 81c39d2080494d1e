// A migration's preparation, phases 1 and 2: is the target able to take the guest (room, driver,
// the method's capabilities, not this agent itself), then the reservation with the version
// handshake, which brings back the target's windows.

import type { GuestDescription } from '../shared/driver/types.js';
import { PAGE_BYTES } from '../shared/driver/types.js';
import { bounded, CorruptDataError, echo, InvalidArgumentError, InvalidStateError, ReservationRefusedError, UnimplementedError } from '../shared/errors.js';
import { AGENT_VERSION, PROTOCOL_VERSION, unpackPayload } from '../shared/protocol.js';
import { pb } from '../shared/transport/grpc.js';
import { checkCapabilities } from './methods/capabilities.js';
import type { MigrationRequest, TargetWindows, TransferMethod } from './methods/method.js';
import type { TargetPeer } from './peer.js';

/** Phase 1: refuses a target without room, with another driver, without the method's capabilities, or that is this agent. */
export async function checkTarget(peer: TargetPeer, method: TransferMethod, description: GuestDescription, selfInstanceId: string | undefined): Promise<readonly string[]> {
  const address = echo(peer.address);
  const capacity = await peer.capacity();
  if (selfInstanceId && capacity.agentInstanceId === selfInstanceId) {
    throw new InvalidArgumentError(`target ${address} is this agent itself; migrate to another agent`, {
      reason: 'TARGET_IS_SELF',
      fieldViolations: [{ field: 'target_address', description: "the target answers with this agent's own instance id" }],
    });
  }
  if (capacity.driver !== description.driver) {
    throw new ReservationRefusedError(`target ${address} runs driver '${echo(capacity.driver)}', the guest needs '${description.driver}'`);
  }
  if (capacity.memoryBytesFree < description.memoryBytes) {
    throw new ReservationRefusedError(
      `target ${address} has ${(capacity.memoryBytesFree / 2 ** 20).toFixed(0)} MiB free, the guest needs ${(description.memoryBytes / 2 ** 20).toFixed(0)} MiB`,
    );
  }
  // An agent that reports no capabilities predates them: its Open refuses what it cannot do.
  if (capacity.capabilities.length > 0) checkCapabilities(method, 'target', capacity.capabilities, `target ${address} (driver '${echo(capacity.driver)}')`);
  return capacity.capabilities;
}

/** Phase 2: the reservation for job `jobId`; returns its id and the windows the target grants. */
export async function reserveOnTarget(peer: TargetPeer, jobId: string, description: GuestDescription, request: MigrationRequest, canSendOverBase = false): Promise<{ reservationId: string; windows: TargetWindows }> {
  const reservation = await peer.reserve(
    pb.ReserveRequest.create({
      protocolVersion: PROTOCOL_VERSION,
      agentVersion: AGENT_VERSION,
      migrationId: jobId,
      guest: { ...description, machineConfig: description.machineConfig },
      downtimeLimitMs: request.downtimeLimitMs,
      // A protection has no maximum duration: it streams until it ends.
      maxDurationMs: request.protection === undefined ? request.maxDurationMs : 0,
      protection: request.protection === undefined ? undefined : { mode: request.protection.mode === 'sync' ? pb.Protection.Mode.SYNC : pb.Protection.Mode.ASYNC, rpoMsMax: request.protection.rpoMsMax },
      // CR/TR's checkpoint can go over an image of the guest the target holds (a resync, a fail back).
      acceptBase: request.method === 'crtr' && canSendOverBase,
    }),
  );
  if (request.protection !== undefined && reservation.protection !== true) {
    await peer.release(reservation.reservationId, 'the target keeps no standby', jobId).catch(() => {});
    throw new UnimplementedError(`target ${peer.address} does not keep standbys (an agent that predates protections)`, { reason: 'NOT_SUPPORTED', metadata: { target: peer.address } });
  }
  if (reservation.protocolVersion !== PROTOCOL_VERSION) {
    throw new InvalidStateError(`target speaks protocol version ${reservation.protocolVersion}, this agent ${PROTOCOL_VERSION}`, {
      reason: 'PEER_VERSION_MISMATCH',
      metadata: { protocolVersion: PROTOCOL_VERSION, peerProtocolVersion: reservation.protocolVersion },
    });
  }
  const windows = {
    chunks: Math.max(1, reservation.chunkWindow),
    units: Math.max(1, reservation.unitWindow),
    unitBytes: Math.max(1, reservation.unitWindowBytes),
    earlyCommit: reservation.earlyCommit,
    resumeWindowMs: reservation.resumeWindowMs ?? 0,
    base: canSendOverBase ? baseOf(reservation.base, description, peer.address) : null,
  };
  return { reservationId: reservation.reservationId, windows };
}

/** The target's base image, checked against the guest (a malformed one: CorruptDataError, nothing reserved is kept). */
function baseOf(base: { kind?: string | null; pageCount?: number | null; pageHashes?: Parameters<typeof unpackPayload>[0] } | null | undefined, description: GuestDescription, address: string): TargetWindows['base'] {
  if (base === null || base === undefined) return null;
  const pageCount = description.memoryBytes / PAGE_BYTES;
  const raw = unpackPayload(base.pageHashes, `the base image's page hashes from ${echo(address)}`);
  if (base.pageCount !== pageCount || raw.length !== pageCount * 8) {
    throw new CorruptDataError(`target ${echo(address)} offers a base image of ${base.pageCount} pages (${raw.length} bytes of hashes), the guest has ${pageCount}`);
  }
  // Copied: the hashes must be 8-byte aligned, and little-endian as on the wire.
  return { kind: bounded(base.kind ?? '', 32), pageHashes: new BigUint64Array(raw.slice().buffer) };
}
