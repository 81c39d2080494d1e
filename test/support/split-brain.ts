// What the split-brain tests share: a protected guest between two agent processes whose every
// link can be cut (the primary to its standby, and each agent to a private etcd, through link
// emulators in this process), a sampler of both agents' guest state that runs through a whole
// episode, and the released outputs of a guest as its agent's GetOutputs keeps them.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { type AgentProcess, startAgentProcess, stopAgentProcess } from '../../cli/agent-process.js';
import { controlServiceV2, type grpc, pb2, unary } from '../../shared/transport/grpc.js';
import { LinkEmulator } from '../../shared/transport/link.js';
import { sleep } from './agents.js';
import type { EtcdServer } from './etcd.js';
import { untilProtection, v2Client } from './protection.js';

/** One agent process, its Control v2 client, and its own link to etcd. */
export interface PartitionableAgent {
  readonly process: AgentProcess;
  readonly client: grpc.Client;
  /** The only way this agent reaches etcd: its configuration names this link's address. */
  readonly etcdLink: LinkEmulator;
}

export interface ProtectedPair {
  readonly primary: PartitionableAgent;
  readonly dr: PartitionableAgent;
  /** The primary's transfer stream to its standby goes through this link. */
  readonly standbyLink: LinkEmulator;
  readonly guestId: string;
}

/** Bound on stopping one agent process by SIGTERM before SIGKILL. */
const STOP_GRACE_MS = 2_000;

async function linkTo(t: Test, target: string): Promise<LinkEmulator> {
  const link = new LinkEmulator({ listen: '127.0.0.1:0', target, profile: 'loopback' });
  await link.start();
  t.teardown(() => link.close());
  return link;
}

/** An agent's configuration file: the arbiter at `endpoint`, then `more` (YAML sections), removed when `t` ends. */
function agentConfig(t: Test, endpoint: string, leaseTtlMs: number, more: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmmigrate-split-brain-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'agent.yaml');
  writeFileSync(file, `arbiter:\n  kind: etcd\n  endpoints: [${JSON.stringify(endpoint)}]\n  leaseTtlMs: ${leaseTtlMs}\n${more}`);
  return file;
}

async function partitionableAgent(t: Test, role: 'source' | 'target', etcd: EtcdServer, leaseTtlMs: number, procs: AgentProcess[], more = ''): Promise<PartitionableAgent> {
  const etcdLink = await linkTo(t, etcd.endpoint.replace(/^http:\/\//, ''));
  const config = agentConfig(t, `http://${etcdLink.address}`, leaseTtlMs, more);
  const proc = await startAgentProcess(role, ['--log-level', 'error', '--insecure-plaintext', '--config', config]);
  procs.push(proc);
  return { process: proc, client: v2Client(t, proc.address), etcdLink };
}

/** What a protected pair may vary. */
export interface PairOptions {
  /** More of the primary's configuration, YAML sections after `arbiter` (e.g. a `host` section). */
  primaryConfig?: string;
}

/**
 * Two agent processes with an etcd arbiter of `leaseTtlMs`, each reaching etcd through its own
 * link; a `web` guest of 64 MiB started on the first and protected (sync) to the second through a
 * third link; resolves once both sides say PROTECTED. The processes are stopped when `t` ends,
 * a stopped (SIGSTOP) one continued first.
 */
export async function protectedPair(t: Test, etcd: EtcdServer, leaseTtlMs: number, guestId: string, options: PairOptions = {}): Promise<ProtectedPair> {
  const procs: AgentProcess[] = [];
  t.teardown(async () => {
    for (const proc of procs) {
      proc.child.kill('SIGCONT');
      await stopAgentProcess(proc, STOP_GRACE_MS);
    }
  });
  const primary = await partitionableAgent(t, 'source', etcd, leaseTtlMs, procs, options.primaryConfig);
  const dr = await partitionableAgent(t, 'target', etcd, leaseTtlMs, procs);
  const standbyLink = await linkTo(t, dr.process.address);
  const State = pb2.ProtectionState;
  await unary(primary.client, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: guestId, profile: 'web', memoryBytes: 64 * 2 ** 20 }), 30_000, 'start guest');
  await unary(primary.client, controlServiceV2.protect, pb2.ProtectRequest.create({ guestId, drAddress: standbyLink.address, mode: pb2.ProtectionMode.PROTECTION_MODE_SYNC }), 10_000, 'protect');
  await untilProtection(primary.client, guestId, (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'primary protected');
  await untilProtection(dr.client, guestId, (x) => x.state === State.PROTECTION_STATE_PROTECTED, 'standby protected');
  return { primary, dr, standbyLink, guestId };
}

/** What ListGuests said of the guest: a GuestState word ('running', 'suspended', 'replica', ...), 'absent', or 'no answer'. */
export type SampledState = string;

export interface Sample {
  /** Date.now() when both questions were sent, and when the later answer came. */
  sentAtMs: number;
  doneAtMs: number;
  primary: SampledState;
  dr: SampledState;
}

/**
 * Bound on one ListGuests of a sample: an agent that says nothing by then counts as 'no answer'.
 * Below the fence margin of the shortest etcd lease (a quarter of 2 s), so that the two answers of
 * one sample are closer in time than the arbiter keeps an old primary's stop and a standby's start.
 */
const SAMPLE_CALL_MS = 400;
/** Pause between samples. */
const SAMPLE_INTERVAL_MS = 20;
/** Samples kept at most (over ten minutes at the interval). */
const SAMPLES_MAX = 30_000;

async function stateAt(client: grpc.Client, guestId: string): Promise<SampledState> {
  try {
    const res = await unary(client, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), SAMPLE_CALL_MS, 'list guests');
    const guest = res.guests.find((g) => g.id === guestId);
    if (guest === undefined) return 'absent';
    return (pb2.GuestState[guest.state ?? 0] ?? String(guest.state)).replace(/^GUEST_STATE_/, '').toLowerCase();
  } catch {
    return 'no answer';
  }
}

/**
 * Asks both agents for the guest's state, both at once, every SAMPLE_INTERVAL_MS from `start`
 * until `stop`. A sample in which both say 'running' is two running copies: its two answers came
 * less than SAMPLE_CALL_MS apart.
 */
export class StateSampler {
  readonly samples: Sample[] = [];
  private running = false;
  private loop: Promise<void> = Promise.resolve();

  constructor(private readonly pair: ProtectedPair) {}

  start(): void {
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<Sample[]> {
    this.running = false;
    await this.loop;
    return this.samples;
  }

  private async run(): Promise<void> {
    const { primary, dr, guestId } = this.pair;
    while (this.running && this.samples.length < SAMPLES_MAX) {
      const sentAtMs = Date.now();
      const [p, d] = await Promise.all([stateAt(primary.client, guestId), stateAt(dr.client, guestId)]);
      this.samples.push({ sentAtMs, doneAtMs: Date.now(), primary: p, dr: d });
      await sleep(SAMPLE_INTERVAL_MS);
    }
  }
}

/** Index of the first sample at or after `from` for which `ok` holds, or -1. */
export function firstSample(samples: Sample[], ok: (s: Sample) => boolean, from = 0): number {
  for (let i = from; i < samples.length; i++) if (ok(samples[i])) return i;
  return -1;
}

/** How a run of samples went, for a test's message: how many, the longest, how many unanswered. */
export function describeSamples(samples: Sample[]): string {
  const longestMs = samples.reduce((m, s) => Math.max(m, s.doneAtMs - s.sentAtMs), 0);
  const unanswered = samples.filter((s) => s.primary === 'no answer' || s.dr === 'no answer').length;
  return `${samples.length} samples, the longest ${longestMs} ms, ${unanswered} with an agent not answering`;
}

/** Most GetOutputs pages read for one guest (the ring keeps 65,536 outputs: one page). */
const OUTPUT_PAGES_MAX = 16;

/** One released output as GetOutputs shows it. */
export interface ReleasedOutput {
  payload: string;
  /** The unit that produced it. */
  unit: number;
  /** From its production to its release. */
  delayMs: number;
}

/** Every released output the agent still keeps for the guest, by sequence. */
export async function releasedOutputs(client: grpc.Client, guestId: string): Promise<Map<number, ReleasedOutput>> {
  const outputs = new Map<number, ReleasedOutput>();
  let after = -1;
  for (let page = 0; page < OUTPUT_PAGES_MAX; page++) {
    const res = await unary(client, controlServiceV2.getOutputs, pb2.GetOutputsRequest.create({ guestId, afterSequence: after, max: 65_536 }), 10_000, 'outputs');
    if (res.packets.length === 0) break;
    for (const o of res.packets) outputs.set(Number(o.sequence), { payload: o.payload ?? '', unit: Number(o.unit), delayMs: o.delayMs ?? 0 });
    after = Number(res.packets.at(-1)!.sequence);
  }
  return outputs;
}

/**
 * The outputs `before` (the old primary's) that `after` (the new primary's) does not reproduce
 * with an equal payload, among those from the first `after` keeps on, as [sequence, output]; and
 * how many were compared.
 */
export function lostOutputs(before: Map<number, ReleasedOutput>, after: Map<number, ReleasedOutput>): { lost: [number, ReleasedOutput][]; compared: number } {
  const first = Math.min(...after.keys());
  const compared = [...before].filter(([sequence]) => sequence >= first);
  return { lost: compared.filter(([sequence, output]) => after.get(sequence)?.payload !== output.payload), compared: compared.length };
}

/** Lost outputs in a sentence: how many, their sequences and units, their longest release delay. */
export function describeLost(lost: [number, ReleasedOutput][]): string {
  if (lost.length === 0) return 'none lost';
  const units = [...new Set(lost.map(([, o]) => o.unit))];
  const delayMsMax = Math.max(...lost.map(([, o]) => o.delayMs));
  return `${lost.length} lost: sequences ${lost[0][0]} to ${lost.at(-1)![0]}, of units ${units.join(', ')}, released at most ${delayMsMax.toFixed(2)} ms after they were produced`;
}
