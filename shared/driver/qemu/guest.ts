// A guest of the `qemu` driver: one QEMU process that this agent started and owns, and the QMP
// connection to it. The guest's state is QEMU's own (query-status), refreshed whenever QEMU
// announces a change (STOP, RESUME, SHUTDOWN, ...). Suspend and resume are QMP's stop and cont;
// discard asks QEMU to quit and kills it after a grace period.
//
// Its one migration capability is QEMU's own stream (native-stream, native-source.ts): it records
// no event log and lends no page access, so a method that needs those is refused by name before
// anything moves, and the calls only they make (machineState, digest, a throttle below 1) fail
// with UNIMPLEMENTED. A suspend leaves a guest that QEMU stopped itself (its migration's
// switchover) as it is, and a resume waits for a cancelled migration to end in QEMU first.

import { rmSync } from 'node:fs';
import { UnimplementedError } from '../../errors.js';
import type { GuestDescription, GuestState, SourceGuest } from '../types.js';
import { encodeMachineConfig, type QemuMachineConfig } from './args.js';
import { QemuNativeSource } from './native-source.js';
import { MIGRATION_RUNNING_STATUSES } from './migration-info.js';
import { describeExit, EXIT_WAIT_MS, lastLines, type QemuExit, type QemuProcess, type SerialTail } from './process.js';
import { QmpClient, QmpError, type QmpOptions } from './qmp.js';

/** Where the driver's messages go (a pino logger fits). */
export interface DriverLog {
  info(object: object, message: string): void;
  warn(object: object, message: string): void;
  error(object: object, message: string): void;
}

export interface QemuGuestDeps {
  /** The QEMU's private runtime directory (its sockets): removed once the process has exited. */
  readonly runtimeDir: string;
  readonly qmpSocket: string;
  readonly qmp: Partial<QmpOptions>;
  /** How long QEMU has to exit after quit (or SIGTERM) before it is killed. */
  readonly stopGraceMs: number;
  readonly log: DriverLog;
  /** The guest is gone (discarded, or its QEMU exited): off the host's books. */
  readonly onGone: (guest: QemuGuest) => void;
}


/** QEMU events after which its run state may have changed. */
const STATE_EVENTS = new Set(['STOP', 'RESUME', 'SHUTDOWN', 'RESET', 'SUSPEND', 'WAKEUP', 'GUEST_PANICKED', 'MIGRATION']);

/** Migration statuses in which a post-copy broke: the guest's memory is split, and the half here waits. */
const POSTCOPY_BROKEN = new Set(['postcopy-paused', 'postcopy-recover']);

/**
 * QEMU's run state as a GuestState: running, or stopped with its state intact (paused and the
 * like); a guest whose vCPUs run while its post-copy is broken is blocked (they wait for pages).
 */
function guestStateOf(status: string, migrationStatus: string): GuestState {
  if (status === 'exited') return 'discarded';
  if (status !== 'running' && status !== 'starting') return 'suspended';
  return POSTCOPY_BROKEN.has(migrationStatus) ? 'blocked' : 'running';
}

export class QemuGuest implements SourceGuest {
  readonly pagesMissing = 0;
  /**
   * Capability native-stream: QEMU's own outgoing migration. Not for a guest that boots a disk:
   * its writes go to an overlay of its own QEMU (snapshot=on), which QEMU's stream does not carry.
   */
  readonly nativeStream?: QemuNativeSource;
  /** QEMU's run state (query-status), 'starting' until QMP first answers, 'exited' once the process is gone. */
  private status = 'starting';
  /** The status of QEMU's last migration of this guest, either way, as its MIGRATION events say ('' for none). */
  private lastMigrationStatus = '';

  /** The status of QEMU's last migration of this guest, either way ('' for none). */
  get migrationStatus(): string {
    return this.lastMigrationStatus;
  }
  private client: QmpClient | null = null;
  private readonly connected: Promise<QmpClient>;
  /**
   * Settles once QEMU came up (its QMP answered, which it does only after it built the machine and
   * loaded the boot files); rejects with why not once its process is gone and nothing of it is left.
   */
  readonly started: Promise<void>;
  private readonly abortConnect = new AbortController();
  private discarded = false;
  /** QEMU exited before anyone asked it to (a failed boot, a crash, a kill from outside). */
  private endedOnItsOwn = false;
  private stopping: Promise<void> | null = null;

  constructor(
    readonly id: string,
    readonly machine: QemuMachineConfig,
    readonly unitMs: number,
    readonly process: QemuProcess,
    private readonly deps: QemuGuestDeps,
  ) {
    void process.exited.then((exit) => this.onExit(exit));
    if (machine.boot.kind === 'kernel') this.nativeStream = new QemuNativeSource(() => this.qmp(), id);
    this.connected = this.connect();
    // A QMP that never comes up is logged and ends the guest in connect(); callers see it on use.
    this.connected.catch(() => undefined);
    this.started = this.connected.then(
      () => undefined,
      async (error: unknown) => {
        const exit = await this.stopped();
        throw this.startFailure(exit, error);
      },
    );
    this.started.catch(() => undefined);
  }

  /** The QEMU's private runtime directory (its sockets), removed once it has exited. */
  get runtimeDir(): string {
    return this.deps.runtimeDir;
  }

  /** The guest's serial console: its last bytes, and a listener for what comes. */
  get serial(): SerialTail {
    return this.process.serial;
  }

  console(): { text: string; bytesTotal: number } {
    return { text: this.serial.text(), bytesTotal: this.serial.bytesTotal };
  }

  /** QEMU's run state as query-status last said it ('starting' before QMP answered, 'exited' after). */
  get qemuStatus(): string {
    return this.status;
  }

  /** The QMP connection, once open; rejects if it could not be opened or the guest is gone. */
  async qmp(): Promise<QmpClient> {
    const client = await this.connected;
    if (client.closed) throw client.closedError!;
    return client;
  }

  describe(): GuestDescription {
    const { machine } = this;
    // A migration's status is QEMU's word for the guest while one holds it (an ended one is history).
    const migrating = MIGRATION_RUNNING_STATUSES.has(this.lastMigrationStatus);
    const hypervisorStatus = migrating ? `${this.status}, migration ${this.lastMigrationStatus}` : this.status;
    return {
      id: this.id,
      driver: 'qemu',
      memoryBytes: machine.memoryBytes,
      vcpus: machine.vcpus,
      unitMs: this.unitMs,
      state: this.discarded ? 'discarded' : guestStateOf(this.status, this.lastMigrationStatus),
      machineConfig: encodeMachineConfig(machine),
      summary: `qemu pid ${this.process.pid} (${machine.accel}, ${machine.memoryBytes / 2 ** 20} MiB, ${machine.vcpus} vCPU): ${hypervisorStatus}`,
      hypervisorStatus,
    };
  }

  /**
   * Pauses the guest's vCPUs (QMP stop); its state stays intact for resume or discard. A guest
   * that QEMU stopped itself (its migration's switchover: finish-migrate, postmigrate) is left so.
   */
  async suspend(): Promise<void> {
    const client = await this.qmp();
    await this.refresh(client);
    if (this.status !== 'running') return;
    await client.execute('stop');
    await this.refresh(client);
  }

  /**
   * Runs the suspended guest again (QMP cont), once a cancelled migration has ended in QEMU; a
   * failure is logged (see cont() to wait for it).
   */
  resume(): void {
    void (this.nativeStream?.settled ?? Promise.resolve())
      .then(() => this.cont())
      .catch((error: unknown) => this.deps.log.error({ guestId: this.id, err: String(error) }, 'could not resume the guest'));
  }

  /** QMP cont, then the state QEMU reports. */
  async cont(): Promise<void> {
    const client = await this.qmp();
    await client.execute('cont');
    await this.refresh(client);
  }

  machineState(): Uint8Array {
    throw this.unsupported('its machine state (QEMU keeps it in its own migration stream)');
  }

  /** Only the factor 1 (no throttle): QEMU throttles a guest only while it migrates it (auto-converge). */
  setThrottle(factor: number): void {
    if (factor !== 1) throw this.unsupported('throttling outside a migration');
  }

  digest(): string {
    throw this.unsupported('a digest of its memory');
  }

  /**
   * Ends the guest: QMP quit, then SIGKILL once the grace period has passed. Off the host's list
   * at once; its memory stays on the books until its QEMU has exited (stopped()).
   */
  discard(): void {
    if (this.discarded) return;
    this.discarded = true;
    this.deps.onGone(this);
    this.stopping = this.stopProcess();
  }

  /** Settles once the guest's QEMU has exited, after discard (or on its own). */
  async stopped(): Promise<QemuExit> {
    await this.stopping;
    return this.process.exited;
  }

  private unsupported(what: string): UnimplementedError {
    return new UnimplementedError(`the qemu driver does not give ${what} yet: guest '${this.id}' cannot be migrated by this agent`, { reason: 'NOT_SUPPORTED', metadata: { guestId: this.id, driver: 'qemu' } });
  }

  private async connect(): Promise<QmpClient> {
    const exited = this.process.exited.then((exit): never => {
      throw this.endedEarly(exit);
    });
    try {
      const client = await Promise.race([QmpClient.connect(this.deps.qmpSocket, { ...this.deps.qmp, signal: this.abortConnect.signal }), exited]);
      this.client = client;
      client.onEvent((event) => {
        if (event.event === 'MIGRATION' && typeof event.data.status === 'string') this.lastMigrationStatus = event.data.status;
        if (STATE_EVENTS.has(event.event)) void this.refresh(client).catch(() => undefined);
      });
      if (this.discarded) client.close();
      else await this.refresh(client);
      return client;
    } catch (caught) {
      this.abortConnect.abort(caught);
      // QEMU opens its socket before it loads what it boots: a bad kernel ends it just after the
      // connection, which then breaks. Its exit and its own message say more than the reset.
      const exit = await this.process.exitedWithin(EXIT_WAIT_MS);
      const error = exit === null ? caught : this.endedEarly(exit, caught);
      if (!this.discarded) {
        this.deps.log.error({ guestId: this.id, err: (error as Error).message }, 'no QMP connection to the guest\'s QEMU: the guest is stopped');
        this.discard();
      }
      throw error;
    }
  }

  private endedEarly(exit: QemuExit, cause?: unknown): QmpError {
    return new QmpError('UNAVAILABLE', `QEMU of guest '${this.id}' ended (${describeExit(exit)}) before its QMP connection was ready: ${lastLines(this.process.stderrTail)}`, { cause, metadata: { guestId: this.id, command: '(connect)' } });
  }

  /**
   * Why the guest did not start, once its QEMU is gone: how QEMU ended and its last words (a boot
   * file it could not load, an option it refused), or why its QMP never answered.
   */
  private startFailure(exit: QemuExit, cause: unknown): QmpError {
    const metadata = { guestId: this.id, command: '(start)', exit: describeExit(exit) };
    const message = this.endedOnItsOwn
      ? `guest '${this.id}' did not start: its QEMU ended (${describeExit(exit)}) before it ran the guest; QEMU said: ${lastLines(this.process.stderrTail)}`
      : `guest '${this.id}' did not start, and its QEMU was ended: ${(cause as Error).message}`;
    return new QmpError('FAILED_PRECONDITION', message, { cause, metadata });
  }

  private async refresh(client: QmpClient): Promise<void> {
    const answer = await client.execute<{ status: string }>('query-status');
    if (this.status !== 'exited') this.status = answer.status;
  }

  /** Quit (SIGTERM if QMP does not answer), and SIGKILL once `stopGraceMs` has passed since the discard: one bound in all. */
  private async stopProcess(): Promise<void> {
    const { stopGraceMs } = this.deps;
    const deadline = performance.now() + stopGraceMs;
    this.abortConnect.abort(new Error('the guest was discarded'));
    const client = this.client;
    if (client !== null && !client.closed) {
      // QEMU answers quit and then exits; SIGTERM if it does not answer.
      await client.execute('quit', undefined, stopGraceMs).catch(() => this.process.signal('SIGTERM'));
    } else {
      this.process.signal('SIGTERM');
    }
    await this.process.killAfter(Math.max(0, deadline - performance.now()));
    client?.close();
  }

  private onExit(exit: QemuExit): void {
    this.status = 'exited';
    this.client?.close();
    // Nothing uses its sockets any more: the directory goes with the process.
    rmSync(this.deps.runtimeDir, { recursive: true, force: true });
    if (this.discarded) return;
    this.discarded = true;
    this.endedOnItsOwn = true;
    this.deps.onGone(this);
    this.deps.log.warn({ guestId: this.id, pid: this.process.pid, exit: describeExit(exit), stderr: this.process.stderrTail.slice(-2000) }, 'the guest\'s QEMU exited on its own');
  }
}
