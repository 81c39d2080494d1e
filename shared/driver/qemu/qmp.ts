// A client of QEMU's machine protocol (QMP) over a unix socket. No maintained npm client fits (the
// registry has none in use), and the protocol is small: QEMU greets with {"QMP": {...}}, the
// client enters command mode with qmp_capabilities, then sends one JSON object a line,
// {"execute": name, "arguments": {...}, "id": n}, and QEMU answers each with {"return": ...,
// "id": n} or {"error": {"class", "desc"}, "id": n}, interleaved with asynchronous events
// {"event": name, "data": {...}, "timestamp": {...}}.
//
// Limits: a line from QEMU longer than lineBytesMax closes the connection (a QEMU that sends one
// is not the QEMU we started); at most pendingMax commands wait for answers; connecting (QEMU
// creates its socket as it starts) and every command have a timeout. Every failure is an error
// with reason HYPERVISOR_FAILED that names the command and the socket: UNAVAILABLE when the
// connection is gone (QEMU exited) or never opened, DEADLINE_EXCEEDED on a timeout,
// FAILED_PRECONDITION (or UNIMPLEMENTED, NOT_FOUND) with QEMU's own words when it refuses a command.

import { connect, type Socket } from 'node:net';
import { type ErrorCode, type ErrorReason, VmMigrateError, type VmMigrateErrorOptions, echo } from '../../errors.js';

export interface QmpOptions {
  /** How long to keep trying to connect while QEMU starts and creates its socket. */
  connectTimeoutMs: number;
  /** Default bound on one command's answer (execute's `timeoutMs` overrides it). */
  commandTimeoutMs: number;
  /** Longest line accepted from QEMU (the largest answer in use, query-migrate, is a few KiB). */
  lineBytesMax: number;
  /** Commands waiting for their answers at once. */
  pendingMax: number;
  /** Stops connecting (QEMU exited first, or the guest was discarded). */
  signal?: AbortSignal;
}

export const QMP_DEFAULTS: QmpOptions = {
  connectTimeoutMs: 10_000,
  commandTimeoutMs: 10_000,
  lineBytesMax: 1024 * 1024,
  pendingMax: 64,
};

/** Pause between connection attempts while the socket does not exist yet. */
const CONNECT_RETRY_MS = 20;

/** An asynchronous event from QEMU (STOP, RESUME, SHUTDOWN, MIGRATION, ...). */
export interface QmpEvent {
  readonly event: string;
  readonly data: Record<string, unknown>;
  /** QEMU's timestamp, in microseconds since the epoch. */
  readonly timestampUs: number;
}

/** What QEMU said in its greeting. */
export interface QmpGreeting {
  readonly version: { major: number; minor: number; micro: number; package: string };
  readonly capabilities: readonly string[];
}

/**
 * A failure of QEMU or its tools (over QMP, or as a process: qemu-img, a QEMU that exited); `code`
 * by what happened (see the file's header), reason HYPERVISOR_FAILED unless said otherwise.
 */
export class QmpError extends VmMigrateError {
  static override readonly defaultReason: ErrorReason = 'HYPERVISOR_FAILED';
  constructor(
    readonly code: ErrorCode,
    message: string,
    options: VmMigrateErrorOptions = {},
  ) {
    super(message, options);
  }
}

/** QEMU's error classes, as the gRPC codes they become. */
function codeOfQemuClass(errorClass: string): ErrorCode {
  if (errorClass === 'CommandNotFound') return 'UNIMPLEMENTED';
  if (errorClass === 'DeviceNotFound') return 'NOT_FOUND';
  return 'FAILED_PRECONDITION';
}

interface Pending {
  readonly command: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
  readonly timer: ReturnType<typeof setTimeout>;
}

/** One QMP connection, in command mode. */
export class QmpClient {
  private readonly pending = new Map<number, Pending>();
  private readonly listeners = new Set<(event: QmpEvent) => void>();
  private readonly closeListeners = new Set<(error: QmpError) => void>();
  private nextId = 1;
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private closedWith: QmpError | null = null;

  private constructor(
    private readonly socket: Socket,
    readonly path: string,
    readonly options: QmpOptions,
  ) {}

  /** The greeting QEMU sent (set by connect). */
  greeting!: QmpGreeting;

  /**
   * Connects to the QMP socket at `path`, retrying while it does not exist yet or refuses (QEMU
   * still starting), reads the greeting and enters command mode.
   */
  static async connect(path: string, options: Partial<QmpOptions> = {}): Promise<QmpClient> {
    const opts = { ...QMP_DEFAULTS, ...options };
    const deadline = Date.now() + opts.connectTimeoutMs;
    const socket = await connectWithRetry(path, deadline, opts.connectTimeoutMs, opts.signal);
    const client = new QmpClient(socket, path, opts);
    const greeted = new Promise<QmpGreeting>((resolve, reject) => {
      client.onGreeting = resolve;
      client.onClose((error) => reject(error));
    });
    socket.on('data', (chunk: Buffer) => client.receive(chunk));
    // A QEMU that exits ends the connection either way: a clean close, or a reset.
    socket.on('error', (error) => client.close(client.fail('UNAVAILABLE', `QMP connection ${path} closed by QEMU (it exited?): ${error.message}`, '(connection)', error)));
    socket.on('close', () => client.close(client.fail('UNAVAILABLE', `QMP connection ${path} closed by QEMU (it exited?)`, '(connection)')));
    const left = Math.max(1, deadline - Date.now());
    const timer = setTimeout(() => client.close(client.fail('DEADLINE_EXCEEDED', `QEMU sent no QMP greeting on ${path} within ${opts.connectTimeoutMs} ms`, '(greeting)')), left);
    try {
      client.greeting = await greeted;
    } finally {
      clearTimeout(timer);
    }
    await client.execute('qmp_capabilities');
    return client;
  }

  private onGreeting: ((greeting: QmpGreeting) => void) | null = null;

  /** Whether the connection is gone; `closedError` says why. */
  get closed(): boolean {
    return this.closedWith !== null;
  }

  get closedError(): QmpError | null {
    return this.closedWith;
  }

  /** Commands sent and not answered yet. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /**
   * Runs `command` with `args` and resolves with QEMU's `return` value. Rejects with a QmpError:
   * QEMU's refusal (its class and description), a timeout (the command may still take effect in
   * QEMU; its late answer is dropped), the connection lost, or too many commands pending.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = this.options.commandTimeoutMs): Promise<T> {
    const closed = this.closedWith;
    if (closed !== null) return Promise.reject(new QmpError('UNAVAILABLE', `${closed.message}; '${command}' not sent`, { cause: closed, reason: closed.reason, metadata: { command, socket: this.path } }));
    if (this.pending.size >= this.options.pendingMax) {
      return Promise.reject(new QmpError('RESOURCE_EXHAUSTED', `${this.pending.size} QMP commands wait for QEMU's answers on ${this.path}, the limit is ${this.options.pendingMax}; '${command}' not sent`, { reason: 'LIMIT_EXCEEDED', metadata: { command, limit: this.options.pendingMax } }));
    }
    const id = this.nextId++;
    const line = `${JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id })}\n`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(this.fail('DEADLINE_EXCEEDED', `QEMU did not answer '${command}' within ${timeoutMs} ms on ${this.path}`, command, undefined, { timeoutMs }));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (value: unknown) => void, reject, timer });
      this.socket.write(line);
    });
  }

  /** Calls `listener` with every event from now on; returns the function that stops it. */
  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Calls `listener` once the connection is gone (at once if it is already). */
  onClose(listener: (error: QmpError) => void): void {
    if (this.closedWith !== null) listener(this.closedWith);
    else this.closeListeners.add(listener);
  }

  /**
   * The next event named `name` (and passing `accept`), or a QmpError after `timeoutMs` or when the
   * connection closes first.
   */
  waitEvent(name: string, timeoutMs: number, accept: (event: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    if (this.closedWith !== null) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => {
      const stop = this.onEvent((event) => {
        if (event.event !== name || !accept(event)) return;
        finish();
        resolve(event);
      });
      const timer = setTimeout(() => {
        finish();
        reject(this.fail('DEADLINE_EXCEEDED', `no ${name} event from QEMU within ${timeoutMs} ms on ${this.path}`, `(event ${name})`, undefined, { timeoutMs }));
      }, timeoutMs);
      const closed = (error: QmpError) => {
        finish();
        reject(error);
      };
      this.closeListeners.add(closed);
      const finish = () => {
        stop();
        clearTimeout(timer);
        this.closeListeners.delete(closed);
      };
    });
  }

  /** Closes the connection; commands still pending fail with `error` (default: closed by the client). */
  close(error: QmpError = this.fail('UNAVAILABLE', `the QMP connection to ${this.path} was closed by this agent`, '(connection)')): void {
    if (this.closedWith !== null) return;
    this.closedWith = error;
    this.socket.destroy();
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(new QmpError(error.code, `${error.message}; '${p.command}' got no answer`, { cause: error, reason: error.reason, metadata: { command: p.command, socket: this.path } }));
    }
    for (const listener of [...this.closeListeners]) listener(error);
    this.closeListeners.clear();
    this.listeners.clear();
  }

  private fail(code: ErrorCode, message: string, command: string, cause?: unknown, metadata: Record<string, string | number> = {}): QmpError {
    return new QmpError(code, message, { cause, metadata: { command, socket: this.path, ...metadata } });
  }

  /** Splits what QEMU sent into lines, each one JSON object; a line past its bound closes the connection. */
  private receive(chunk: Buffer): void {
    let start = 0;
    for (let newline = chunk.indexOf(10); newline !== -1 && this.closedWith === null; newline = chunk.indexOf(10, start)) {
      const piece = chunk.subarray(start, newline);
      start = newline + 1;
      if (this.bufferedBytes + piece.length > this.options.lineBytesMax) return this.tooLong(this.bufferedBytes + piece.length);
      const line = this.bufferedBytes === 0 ? piece : Buffer.concat([...this.buffered, piece]);
      this.buffered = [];
      this.bufferedBytes = 0;
      this.handleLine(line.toString('utf8'));
    }
    if (this.closedWith !== null || start === chunk.length) return;
    const rest = chunk.subarray(start);
    if (this.bufferedBytes + rest.length > this.options.lineBytesMax) return this.tooLong(this.bufferedBytes + rest.length);
    this.buffered.push(Buffer.from(rest));
    this.bufferedBytes += rest.length;
  }

  private tooLong(bytes: number): void {
    this.close(new QmpError('UNAVAILABLE', `QEMU sent a QMP line of more than ${bytes} bytes on ${this.path}, the limit is ${this.options.lineBytesMax}: connection closed`, { reason: 'MALFORMED_MESSAGE', metadata: { socket: this.path, limit: this.options.lineBytesMax } }));
  }

  private handleLine(text: string): void {
    if (text.trim() === '') return;
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(text) as Record<string, unknown>;
      if (message === null || typeof message !== 'object' || Array.isArray(message)) throw new Error('not a JSON object');
    } catch (error) {
      this.close(new QmpError('UNAVAILABLE', `QEMU sent a QMP line that is not a JSON object on ${this.path} (${(error as Error).message}): ${echo(text)}`, { reason: 'MALFORMED_MESSAGE', metadata: { socket: this.path } }));
      return;
    }
    if ('QMP' in message) return this.handleGreeting(message.QMP as Record<string, unknown>);
    if (typeof message.event === 'string') return this.handleEvent(message);
    const id = message.id;
    const pending = typeof id === 'number' ? this.pending.get(id) : undefined;
    // An answer to a command that timed out (or to no command of ours) is dropped.
    if (pending === undefined) return;
    this.pending.delete(id as number);
    clearTimeout(pending.timer);
    if ('return' in message) return pending.resolve(message.return);
    const error = (message.error ?? {}) as { class?: unknown; desc?: unknown };
    const errorClass = typeof error.class === 'string' ? error.class : 'GenericError';
    const desc = typeof error.desc === 'string' ? error.desc : JSON.stringify(message.error);
    pending.reject(new QmpError(codeOfQemuClass(errorClass), `QEMU refused '${pending.command}': ${echo(desc)} (${errorClass})`, { metadata: { command: pending.command, errorClass, socket: this.path } }));
  }

  private handleGreeting(qmp: Record<string, unknown>): void {
    const version = ((qmp?.version as Record<string, unknown>)?.qemu ?? {}) as Record<string, number>;
    const greeting: QmpGreeting = {
      version: { major: Number(version.major ?? 0), minor: Number(version.minor ?? 0), micro: Number(version.micro ?? 0), package: String((qmp?.version as Record<string, unknown>)?.package ?? '') },
      capabilities: Array.isArray(qmp?.capabilities) ? (qmp.capabilities as unknown[]).map(String) : [],
    };
    this.onGreeting?.(greeting);
    this.onGreeting = null;
  }

  private handleEvent(message: Record<string, unknown>): void {
    const ts = (message.timestamp ?? {}) as { seconds?: number; microseconds?: number };
    const event: QmpEvent = {
      event: message.event as string,
      data: (message.data ?? {}) as Record<string, unknown>,
      timestampUs: Number(ts.seconds ?? 0) * 1e6 + Number(ts.microseconds ?? 0),
    };
    for (const listener of [...this.listeners]) listener(event);
  }
}

/** A connected socket to `path`, retrying ENOENT and ECONNREFUSED until `deadline`. */
async function connectWithRetry(path: string, deadline: number, timeoutMs: number, signal: AbortSignal | undefined): Promise<Socket> {
  for (;;) {
    if (signal?.aborted) throw new QmpError('UNAVAILABLE', `stopped connecting to QEMU's QMP socket ${path}: ${String(signal.reason)}`, { cause: signal.reason, metadata: { command: '(connect)', socket: path } });
    const attempt = await new Promise<Socket | NodeJS.ErrnoException>((resolve) => {
      const socket = connect(path);
      socket.once('connect', () => {
        socket.removeAllListeners('error');
        resolve(socket);
      });
      socket.once('error', (error: NodeJS.ErrnoException) => {
        socket.destroy();
        resolve(error);
      });
    });
    if (!(attempt instanceof Error)) return attempt;
    const retryable = attempt.code === 'ENOENT' || attempt.code === 'ECONNREFUSED';
    if (!retryable || Date.now() + CONNECT_RETRY_MS > deadline) {
      const why = retryable ? `nothing listened there within ${timeoutMs} ms` : attempt.message;
      throw new QmpError(retryable ? 'DEADLINE_EXCEEDED' : 'UNAVAILABLE', `cannot connect to QEMU's QMP socket ${path}: ${why}`, { cause: attempt, metadata: { command: '(connect)', socket: path, timeoutMs } });
    }
    await new Promise((resolve) => setTimeout(resolve, CONNECT_RETRY_MS));
  }
}
