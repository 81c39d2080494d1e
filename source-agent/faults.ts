// Fault injection, for tests of an agent started with --allow-fault-injection: a faulty transfer
// channel (corrupt a chunk, a unit or a page batch after its checksum was taken, or the digest of
// the commit; lose the commit's answer or the activation's confirmation) and a phase hook (abort the migration as a phase begins). They are wired into a
// migration only when asked for and allowed; the production path has no fault checks.

import type { VmMigrateError } from '../shared/errors.js';
import type { PackedMessage, PayloadBody } from '../shared/protocol.js';
import type { MigrationPhase } from '../shared/stats.js';
import type { Activated, CommitResult, ControlBody, Progress, ResumeCounters, StopRequest, TransferChannel, WaitOptions } from './channel.js';

export interface FaultInjection {
  abortAtPhase?: MigrationPhase;
  /** A checkpoint chunk's index (CR/TR), or the number of a page batch (pre-copy, 0 first). */
  corruptChunkIndex?: number;
  corruptUnitSequence?: number;
  corruptCommitDigest?: boolean;
  /** The target's commit answer, or its activation confirmation, never reaches the migration. */
  loseCommitResult?: boolean;
  loseActivation?: boolean;
}

/** What a migration lets hooks change: its channel, and what happens as a phase begins. */
export interface MigrationHooks {
  wrapChannel?(channel: TransferChannel): TransferChannel;
  /** Called as each phase begins; `cancel` ends the migration as a CancelJob would. */
  onPhase?(phase: MigrationPhase, cancel: (reason: string) => void): void;
}

/** The hooks that inject `faults`. */
export function faultHooks(faults: FaultInjection): MigrationHooks {
  return {
    wrapChannel: (channel) => new FaultyChannel(channel, faults),
    onPhase: (phase, cancel) => {
      if (faults.abortAtPhase === phase) cancel(`fault injection: abort at phase ${phase}`);
    },
  };
}

/** Flips a byte in the middle of the payload's data, after its xxh64 was taken. */
function corrupt(message: PackedMessage): void {
  message.bytes[message.dataOffset + (message.dataBytes >> 1)] ^= 0xff;
}

function flipHex(digest: string): string {
  return (digest[0] === '0' ? '1' : '0') + digest.slice(1);
}

/** A transfer channel that corrupts what `faults` names on its way out. */
export class FaultyChannel implements TransferChannel {
  private pageBatchesPacked = 0;
  private pastPointOfNoReturn = false;

  constructor(
    private readonly inner: TransferChannel,
    private readonly faults: FaultInjection,
  ) {}

  pack(body: PayloadBody, raw: Uint8Array): PackedMessage {
    return this.tamper(body, this.inner.pack(body, raw));
  }

  async packAsync(body: PayloadBody, raw: Uint8Array): Promise<PackedMessage> {
    return this.tamper(body, await this.inner.packAsync(body, raw));
  }

  private tamper(body: PayloadBody, message: PackedMessage): PackedMessage {
    const f = this.faults;
    if (body.kind === 'chunk' && f.corruptChunkIndex === body.index) corrupt(message);
    if (body.kind === 'unit' && f.corruptUnitSequence === body.sequence) corrupt(message);
    // Post-copy's push comes after the point of no return: the guest already runs on the target.
    if (body.kind === 'pages' && !this.pastPointOfNoReturn && f.corruptChunkIndex === this.pageBatchesPacked++) corrupt(message);
    return message;
  }

  send(body: ControlBody): void {
    if (body.commit && this.faults.corruptCommitDigest) body = { ...body, commit: { ...body.commit, digest: flipHex(body.commit.digest ?? '') } };
    this.inner.send(body);
  }

  markPointOfNoReturn(): void {
    this.pastPointOfNoReturn = true;
    this.inner.markPointOfNoReturn();
  }

  get progress(): Progress {
    return this.inner.progress;
  }
  get acknowledged(): boolean {
    return this.inner.acknowledged;
  }
  get commitResult(): CommitResult | null {
    return this.faults.loseCommitResult === true ? null : this.inner.commitResult;
  }
  get activated(): Activated | null {
    return this.faults.loseActivation === true ? null : this.inner.activated;
  }
  get commitDigestSent(): string {
    return this.inner.commitDigestSent;
  }
  get rttMs(): number {
    return this.inner.rttMs;
  }
  get resumes(): ResumeCounters {
    return this.inner.resumes;
  }
  get error(): VmMigrateError | null {
    return this.inner.error;
  }

  get linkDown(): boolean {
    return this.inner.linkDown === true;
  }

  restart(cause: VmMigrateError): void {
    if (this.inner.restart !== undefined) this.inner.restart(cause);
    else this.inner.fail(cause);
  }
  get onStopRequest(): ((request: StopRequest) => void) | null {
    return this.inner.onStopRequest;
  }
  set onStopRequest(handler: ((request: StopRequest) => void) | null) {
    this.inner.onStopRequest = handler;
  }
  get onProgress(): (() => void) | null {
    return this.inner.onProgress;
  }
  set onProgress(handler: (() => void) | null) {
    this.inner.onProgress = handler;
  }
  get onPageRequest(): ((pages: number[], resend: boolean) => void) | null {
    return this.inner.onPageRequest;
  }
  set onPageRequest(handler: ((pages: number[], resend: boolean) => void) | null) {
    this.inner.onPageRequest = handler;
  }
  write(message: PackedMessage, rateBytesPerSec: number): Promise<void> {
    return this.inner.write(message, rateBytesPerSec);
  }
  until(predicate: () => boolean, options?: WaitOptions): Promise<void> {
    return this.inner.until(predicate, options);
  }
  sleep(ms: number): Promise<void> {
    return this.inner.sleep(ms);
  }
  fail(error: VmMigrateError): void {
    this.inner.fail(error);
  }
  notify(): void {
    this.inner.notify();
  }
  abort(reason: string, cancelled?: boolean): void {
    this.inner.abort(reason, cancelled);
  }
  close(): void {
    this.inner.close();
  }
}

