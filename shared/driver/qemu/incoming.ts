// An incoming guest of the `qemu` driver: the reservation is a QEMU started with `-incoming
// defer -S` (the source guest's machine, waiting, its vCPUs held) and the replica is what it
// loads from the migration stream. open() makes it listen on a unix socket of its own
// (migrate-incoming) and connects to it: the agent writes the stream there, counted and hashed
// (the commit compares that hash with the source's), and reads QEMU's return path back.
//
// Pre-copy: QEMU reports `completed` with the guest loaded and held (-S): the replica is
// complete, and activate() (after the agents' commit) makes it the host's guest and runs it.
// Post-copy: once QEMU has the device state (its run state leaves `inmigrate`), runWhenSwitched()
// activates it at once; its pages keep arriving while it runs.

import { connect, type Socket } from 'node:net';
import { rmSync } from 'node:fs';
import type { GuestDescription, SourceGuest, TargetReplica } from '../types.js';
import { type NativeConnection, type NativeStopReason, type NativeStreamTarget, StreamHasher } from '../native-types.js';
import type { QemuGuest } from './guest.js';
import { describeExit, EXIT_WAIT_MS, lastLines } from './process.js';
import { QmpError } from './qmp.js';

/** How long a connection to QEMU's incoming socket, and the wait for post-copy's device state, may take. */
const CONNECT_TIMEOUT_MS = 10_000;
const SWITCH_TIMEOUT_MS = 60_000;
/** Pause between two looks at the run state while post-copy's device state loads. */
const SWITCH_POLL_MS = 2;
/** What QEMU writes to its standard error when an incoming stream does not load (migration/migration.c). */
const LOAD_FAILED = /load of migration failed/;

export interface QemuIncomingDeps {
  /** Where the incoming socket goes. */
  readonly socketPath: string;
  /** The replica became the host's guest (activation). */
  readonly activated: (guest: QemuGuest) => void;
  readonly log: { error(object: object, message: string): void };
}

/** The stream's end at QEMU's incoming socket: writes counted and hashed. */
class HashedConnection implements NativeConnection {
  private readonly hasher = new StreamHasher();

  constructor(readonly socket: Socket) {}

  write(bytes: Uint8Array): boolean {
    this.hasher.update(bytes);
    return this.socket.write(bytes);
  }

  digest(): string {
    return this.hasher.digest();
  }

  get bytesWritten(): number {
    return this.hasher.bytes;
  }
}

export class QemuIncoming implements TargetReplica, NativeStreamTarget {
  readonly memoryReady: Promise<void>;
  private connection: HashedConnection | null = null;

  /** The status of the incoming migration, as QEMU's MIGRATION events say ('' before the first). */
  get status(): string {
    return this.guest.migrationStatus;
  }
  private activatedGuest: QemuGuest | null = null;

  constructor(
    readonly guest: QemuGuest,
    private readonly deps: QemuIncomingDeps,
  ) {
    // The reservation answers once QEMU is up (its QMP answers), or is refused with why it is not.
    this.memoryReady = guest.qmp().then(
      () => undefined,
      (error: unknown) => {
        throw new QmpError('FAILED_PRECONDITION', `the target's QEMU for guest '${guest.id}' did not start: ${(error as Error).message}`, { cause: error, metadata: { guestId: guest.id, command: '(start)' } });
      },
    );
    // A QEMU that exits before it has the whole stream breaks the stream at once, saying so.
    void guest.process.exited.then((exit) => {
      if (!this.complete) this.connection?.socket.destroy(new Error(`the target's QEMU exited (${describeExit(exit)})`));
    });
  }

  get id(): string {
    return this.guest.id;
  }

  get nativeStream(): NativeStreamTarget {
    return this;
  }

  describe(): GuestDescription {
    return { ...this.guest.describe(), state: this.complete ? 'replica' : 'restoring' };
  }

  /** Pre-copy's stream ended and QEMU loaded it: the guest is here, held. */
  get complete(): boolean {
    return this.status === 'completed';
  }

  /** The hash of the stream as QEMU was given it (the commit compares the source's). */
  digest(): string {
    return this.connection?.digest() ?? new StreamHasher().digest();
  }

  activate(): SourceGuest {
    const guest = this.takeGuest();
    guest.resume();
    return guest;
  }

  discard(): void {
    this.connection?.socket.destroy();
    if (this.activatedGuest === null) this.guest.discard();
  }

  async open(options: { postcopy: boolean }): Promise<NativeConnection> {
    try {
      return await this.listen(options);
    } catch (error) {
      // A QEMU gone says more than its broken connection: how it ended.
      const exit = await this.guest.process.exitedWithin(EXIT_WAIT_MS);
      if (exit === null) throw error;
      throw new QmpError('FAILED_PRECONDITION', `the target's QEMU for guest '${this.id}' exited (${describeExit(exit)}) before the migration stream`, { cause: error, metadata: { guestId: this.id, command: 'migrate-incoming' } });
    }
  }

  private async listen(options: { postcopy: boolean }): Promise<NativeConnection> {
    if (this.connection !== null) throw new QmpError('FAILED_PRECONDITION', `guest '${this.id}': its incoming stream is open already`, { metadata: { guestId: this.id, command: 'migrate-incoming' } });
    const client = await this.guest.qmp();
    await client.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'events', state: true },
        { capability: 'postcopy-ram', state: options.postcopy },
        { capability: 'postcopy-blocktime', state: options.postcopy },
      ],
    });
    rmSync(this.deps.socketPath, { force: true });
    await client.execute('migrate-incoming', { uri: `unix:${this.deps.socketPath}` });
    const socket = await connectUnix(this.deps.socketPath, this.id);
    this.connection = new HashedConnection(socket);
    return this.connection;
  }

  onStatus(listener: (status: string) => void): () => void {
    let stop: (() => void) | null = null;
    let stopped = false;
    void this.guest.qmp().then(
      (client) => {
        if (stopped) return;
        stop = client.onEvent((event) => {
          if (event.event === 'MIGRATION' && typeof event.data.status === 'string') listener(event.data.status);
        });
      },
      () => undefined,
    );
    return () => {
      stopped = true;
      stop?.();
    };
  }

  /**
   * Post-copy: lets QEMU run the guest as soon as it has loaded the device state (a cont while it
   * is still `inmigrate` does that), waits until it left `inmigrate`, and makes it the host's guest.
   * A guest the source had paused arrives paused: it is run then.
   */
  async runWhenSwitched(): Promise<number> {
    const client = await this.guest.qmp();
    await client.execute('cont');
    const deadline = Date.now() + SWITCH_TIMEOUT_MS;
    for (;;) {
      const { status } = await client.execute<{ status: string }>('query-status');
      if (status !== 'inmigrate') break;
      if (Date.now() > deadline) throw new QmpError('DEADLINE_EXCEEDED', `guest '${this.id}': QEMU did not load post-copy's device state within ${SWITCH_TIMEOUT_MS} ms`, { metadata: { guestId: this.id, command: 'query-status' } });
      await new Promise((resolve) => setTimeout(resolve, SWITCH_POLL_MS));
    }
    const resumedAtMs = performance.now();
    const guest = this.takeGuest();
    await guest.cont();
    return resumedAtMs;
  }

  async blockedMs(): Promise<number> {
    const client = await this.guest.qmp();
    const answer = await client.execute<Record<string, unknown>>('query-migrate');
    const blocked = answer['postcopy-blocktime'];
    return typeof blocked === 'number' && Number.isFinite(blocked) ? blocked : 0;
  }

  /**
   * QEMU 7.2 ends its process when an incoming stream does not load ("load of migration failed",
   * exit status 1) and says `failed` first: that is a stream it rejected. Killed by a signal, or
   * exited without saying so, it failed by itself.
   */
  async stopReason(): Promise<NativeStopReason> {
    const { process } = this.guest;
    const exit = await process.exitedWithin(EXIT_WAIT_MS);
    const said = process.stderrTail;
    const loadFailed = exit !== null && exit.signal === null && exit.code !== 0 && LOAD_FAILED.test(said);
    return { exit: exit === null ? null : describeExit(exit), rejectedStream: this.status === 'failed' || loadFailed, said: said === '' ? '' : lastLines(said) };
  }

  /** The replica becomes the host's guest (once). */
  private takeGuest(): QemuGuest {
    if (this.activatedGuest === null) {
      this.activatedGuest = this.guest;
      this.deps.activated(this.guest);
    }
    return this.activatedGuest;
  }
}

/** A connection to the unix socket at `path`, where QEMU listens (it does once migrate-incoming answered). */
function connectUnix(path: string, guestId: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new QmpError('DEADLINE_EXCEEDED', `guest '${guestId}': no connection to QEMU's incoming socket ${path} within ${CONNECT_TIMEOUT_MS} ms`, { metadata: { guestId, command: '(incoming)' } }));
    }, CONNECT_TIMEOUT_MS);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(new QmpError('UNAVAILABLE', `guest '${guestId}': cannot connect to QEMU's incoming socket ${path}: ${error.message}`, { cause: error, metadata: { guestId, command: '(incoming)' } }));
    });
  });
}
