// Strikes a case's fault when its phase begins: a watch of the job on the source (WatchJob) says
// when the phase begins, the case's seeded delay passes, and the fault is injected; the watch goes
// on meanwhile, so that the phase the fault landed in and a job seen in doubt are known.

import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { controlServiceV2, pb2 } from '../../shared/transport/grpc.js';
import type { LinkCorruptInfo } from '../../shared/transport/link.js';
import type { CaseChoices, FaultCase } from './cases.js';
import type { AgentRole, FaultCluster } from './cluster.js';
import type { Injection } from './observation.js';

type JobEvent = InstanceType<typeof pb2.JobEvent>;

/** How long a SIGTERMed agent may take to exit before it is SIGKILLed (and the case says so). */
export const SIGTERM_GRACE_MS = 15_000;

/** 'PHASE_STOP_AND_COPY' -> 'stop-and-copy'; 'JOB_STATE_IN_DOUBT' -> 'in-doubt'. */
export function enumText(values: Record<number, string>, value: number | null | undefined, prefix: string): string {
  const name = values[value ?? 0] ?? String(value);
  return name.startsWith(prefix) ? name.slice(prefix.length).toLowerCase().replaceAll('_', '-') : name;
}

export const phaseText = (value: number | null | undefined) => enumText(pb2.Phase as unknown as Record<number, string>, value, 'PHASE_');
export const jobStateText = (value: number | null | undefined) => enumText(pb2.JobState as unknown as Record<number, string>, value, 'JOB_STATE_');

export class Injector {
  /** The phase the source's watch stream last reported. */
  currentPhase = 'pre-migration';
  /** The job was reported in doubt at some point. */
  inDoubtSeen = false;
  /** Set when the injection struck. */
  injection: Injection | null = null;
  /** What must be over before the case is judged (an outage's restore, a stall's end). */
  private readonly lingering: Promise<unknown>[] = [];
  private corrupted: LinkCorruptInfo | null = null;

  constructor(
    private readonly cluster: FaultCluster,
    private readonly c: FaultCase,
    private readonly choices: CaseChoices,
    private readonly startedMs: number,
  ) {}

  /** Watches `jobId`; strikes once its phase begins. Resolves when the fault struck, or null if the job ended first. */
  async run(jobId: string): Promise<Injection | null> {
    const reached = await this.watch(jobId);
    if (!reached) return null;
    if (this.choices.delayMs > 0) await sleep(this.choices.delayMs);
    this.injection = await this.strike();
    return this.injection;
  }

  /** Resolves when what the fault left running is over (the outage restored, the stall ended). */
  async lingeringOver(): Promise<void> {
    await Promise.all(this.lingering);
  }

  /** The case is over: a corruption that never fired is disarmed, and the injection says whether it did. */
  finish(): void {
    const injection = this.injection;
    if (injection === null || this.c.fault !== 'corrupt') return;
    this.cluster.link.cancelCorrupt();
    const c = this.corrupted;
    injection.fired = c !== null;
    injection.detail +=
      c === null
        ? '; never fired (not that many bytes crossed after it was armed)'
        : `; fired on connection ${c.connectionId}: 0x${c.original.toString(16).padStart(2, '0')} at ${c.chunkOffset} into a read, ${c.around}`;
  }

  /** Resolves true once the case's phase began, false if the job ended (or the stream broke) before. */
  private watch(jobId: string): Promise<boolean> {
    const m = controlServiceV2.watchJob;
    const call = this.cluster.control('source').makeServerStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, pb2.WatchJobRequest.create({ jobId, intervalMs: 1000 }));
    const target = this.c.phase;
    return new Promise((resolve) => {
      call.on('data', (e: JobEvent) => {
        if (e.kind === pb2.JobEventKind.JOB_EVENT_KIND_PHASE) this.currentPhase = phaseText(e.phase);
        else if (e.kind === pb2.JobEventKind.JOB_EVENT_KIND_SNAPSHOT && e.job) this.currentPhase = phaseText(e.job.phase);
        if (e.job?.state === pb2.JobState.JOB_STATE_IN_DOUBT) this.inDoubtSeen = true;
        if (e.job?.phasesPassed?.some((p) => phaseText(p) === target)) resolve(true);
        if (e.kind === pb2.JobEventKind.JOB_EVENT_KIND_END) resolve(false);
      });
      // The stream breaks when the source agent dies; a watch that ends has nothing more to say.
      call.on('error', () => resolve(false));
      call.on('end', () => resolve(false));
    });
  }

  private async strike(): Promise<Injection> {
    const landedPhase = this.currentPhase;
    const atMs = performance.now() - this.startedMs;
    const { fault } = this.c;
    const injection: Injection = { landedPhase, atMs, detail: '', fired: true };
    if (fault === 'kill9-source' || fault === 'kill9-target' || fault === 'sigterm-source' || fault === 'sigterm-target') {
      const [kind, role] = fault.split('-') as ['kill9' | 'sigterm', AgentRole];
      const exit = await this.cluster.stop(role, kind === 'kill9' ? 'SIGKILL' : 'SIGTERM', kind === 'kill9' ? 5_000 : SIGTERM_GRACE_MS);
      await this.cluster.restart(role);
      injection.exit = exit;
      const how = exit === null ? `did not exit within ${SIGTERM_GRACE_MS} ms (SIGKILLed)` : `exited (code ${exit.code}, signal ${exit.signal})`;
      injection.detail = `${kind === 'kill9' ? 'SIGKILL' : 'SIGTERM'} to the ${role}: ${how}; restarted`;
    } else if (fault === 'cut') {
      const link = this.cluster.link;
      const info = link.cut({ block: true });
      this.lingering.push(sleep(this.choices.outageMs).then(() => link.restore()));
      injection.detail = `cut ${info.connections} connections; new ones refused for ${this.choices.outageMs} ms`;
    } else if (fault === 'stall') {
      this.cluster.link.stall(this.choices.stallMs);
      this.lingering.push(sleep(this.choices.stallMs));
      injection.detail = `stalled ${this.choices.stallMs} ms`;
    } else {
      const { corruptOffset, corruptDirection, corruptMask } = this.choices;
      this.cluster.link.once('corrupt', (info) => (this.corrupted = info));
      this.cluster.link.corruptAfterBytes(corruptOffset, { direction: corruptDirection, mask: corruptMask });
      injection.detail = `byte ${corruptOffset} of the ${corruptDirection} stream from then on, XOR 0x${corruptMask.toString(16).padStart(2, '0')}`;
    }
    return injection;
  }
}
