// What the agent tests share: agents started in the test's process on 127.0.0.1:0 with their
// Control clients (closed when the test ends), and the Control calls every test makes.
import type { Logger } from 'pino';
import type { Test } from 'tap';
import { agentOptionsFromArgs, type RunningAgent, startAgent } from '../../cli/agent.js';
import { controlService, grpc, makeClient, pb, unary } from '../../shared/transport/grpc.js';
import { SimDriver, type SimSourceGuest } from '../../shared/driver/sim/index.js';

export const MiB = 2 ** 20;
export const GUEST_BYTES = 64 * MiB;

export interface Agent {
  agent: RunningAgent;
  ctl: grpc.Client;
  address: string;
}

/**
 * An agent on 127.0.0.1:0 (plaintext: loopback) with its Control client, both closed when `t`
 * ends. `log` replaces its logger (JSON on stderr at the --log-level), to capture what it logs.
 *
 * Its guests run their vCPU inline (on the event loop) unless `extra` says `--vcpu thread`: two
 * agents in one process share its event loop and this machine's cores, and a vCPU on a thread of
 * its own would then compete with the target's replay on the same host, which no deployment does
 * (a busy guest's log would outrun that replay; test/agent-vcpu-thread.test.ts covers the thread).
 */
export async function startTestAgent(t: Test, extra: string[] = [], log?: Logger): Promise<Agent> {
  const agent = await startAgent(agentOptionsFromArgs('source', ['--listen', '127.0.0.1:0', '--log-level', 'error', '--insecure-plaintext', '--vcpu', 'inline', ...extra]), log);
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

/** Guest `id` of `a`, an agent of the sim driver (the default), with the sim's own controls. */
export function simGuest(a: Agent, id: string): SimSourceGuest {
  const driver = a.agent.driver;
  if (!(driver instanceof SimDriver)) throw new Error(`agent ${a.address} runs driver '${driver.name}', not sim`);
  return driver.guest(id);
}
