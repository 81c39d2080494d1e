// What the agent tests share: agents started in the test's process on 127.0.0.1:0 with their
// Control clients (closed when the test ends), and the Control calls every test makes.
import type { Test } from 'tap';
import { agentCommand, agentOptionsFrom, type RunningAgent, startAgent } from '../../cli/agent.js';
import { controlService, grpc, makeClient, pb, unary } from '../../shared/transport/grpc.js';

export const MiB = 2 ** 20;
export const GUEST_BYTES = 64 * MiB;

export interface Agent {
  agent: RunningAgent;
  ctl: grpc.Client;
  address: string;
}

/** An agent on 127.0.0.1:0 with its Control client, both closed when `t` ends. */
export async function startTestAgent(t: Test, extra: string[] = []): Promise<Agent> {
  // parseOptions, not parse: parse would run the command's action, which starts a daemon of its own.
  const command = agentCommand('source');
  command.parseOptions(['--listen', '127.0.0.1:0', '--log-level', 'error', ...extra]);
  const agent = await startAgent(agentOptionsFrom(command.opts()));
  const ctl = makeClient(controlService, 'Control', agent.address, grpc.credentials.createInsecure());
  t.teardown(async () => {
    ctl.close();
    await agent.shutdown('test over');
  });
  return { agent, ctl, address: agent.address };
}

/** Boots a 64 MiB guest on `a`. */
export async function startGuest(a: Agent, id: string, profile: string, rates: Record<string, number> = {}): Promise<void> {
  await unary(a.ctl, controlService.startGuest, pb.StartGuestRequest.create({ id, profile, memoryBytes: GUEST_BYTES, rates }), 30_000, `starting guest ${id}`);
}

/** The guest's state as the agent's ListGuests shows it, or 'absent'. */
export async function guestState(a: Agent, id: string): Promise<string> {
  const res = await unary(a.ctl, controlService.listGuests, pb.ListGuestsRequest.create(), 10_000, 'listing guests');
  return res.guests.find((g) => g.description?.id === id)?.state ?? 'absent';
}

export async function startMigration(a: Agent, request: Partial<InstanceType<typeof pb.StartMigrationRequest>>): Promise<string> {
  const res = await unary(a.ctl, controlService.startMigration, pb.StartMigrationRequest.create(request), 10_000, 'starting a migration');
  return res.jobId;
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
