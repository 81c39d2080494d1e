// Protobuf messages built from the driver's own types, written once for both services.

import type { GuestDescription, HostCapacity } from './driver/types.js';
import { AGENT_VERSION, PROTOCOL_VERSION } from './protocol.js';
import { pb } from './transport/grpc.js';

/** The Capacity message (Control and Migration GetCapacity): the host's room, driver, capabilities and versions. */
export function capacityMessage(capacity: HostCapacity, agentInstanceId = ''): InstanceType<typeof pb.Capacity> {
  return pb.Capacity.create({ ...capacity, capabilities: [...capacity.capabilities], protocolVersion: PROTOCOL_VERSION, agentVersion: AGENT_VERSION, agentInstanceId });
}

/** The Guest message of a guest description. */
export function guestMessage(d: GuestDescription): InstanceType<typeof pb.Guest> {
  return pb.Guest.create({
    description: { id: d.id, driver: d.driver, memoryBytes: d.memoryBytes, vcpus: d.vcpus, unitMs: d.unitMs, machineConfig: d.machineConfig, summary: d.summary },
    state: d.state,
  });
}
