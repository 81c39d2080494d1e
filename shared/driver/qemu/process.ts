// One QEMU process, owned by the agent: started with its serial console on its standard output,
// which is read into a bounded tail (the console's last bytes, for listings, logs and tests), and
// its standard error kept, bounded, for the message when it fails. Every QEMU started here is
// killed when the agent's process exits, even after a failure or a kill -9 (the parent-death
// signal), so that none outlives it.

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';

/** Bytes of QEMU's standard error kept for an error message. */
const STDERR_BYTES_MAX = 8192;

export interface QemuExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** The last bytes a guest wrote to its serial console, and how many it wrote in all. */
export class SerialTail {
  private chunks: Buffer[] = [];
  private bytes = 0;
  private readonly listeners = new Set<(text: string) => void>();
  /** Bytes written since the guest started, kept or not. */
  bytesTotal = 0;

  constructor(readonly bytesMax: number) {
    if (!(Number.isInteger(bytesMax) && bytesMax >= 1024)) throw new RangeError(`serial tail of ${bytesMax} bytes: expected an integer of at least 1024`);
  }

  /** Appends what the guest wrote, dropping the oldest bytes past the bound. */
  push(chunk: Buffer): void {
    this.bytesTotal += chunk.length;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    while (this.bytes - this.chunks[0]!.length >= this.bytesMax) this.bytes -= this.chunks.shift()!.length;
    if (this.bytes > this.bytesMax) {
      const first = this.chunks[0]!;
      this.chunks[0] = first.subarray(this.bytes - this.bytesMax);
      this.bytes = this.bytesMax;
    }
    if (this.listeners.size > 0) {
      const text = chunk.toString('utf8');
      for (const listener of [...this.listeners]) listener(text);
    }
  }

  /** The kept tail, as text (its first line may be cut). */
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }

  /** Calls `listener` with everything the guest writes from now on; returns the function that stops it. */
  onData(listener: (text: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

const live = new Set<ChildProcess>();
let exitHookSet = false;

/** The agent's process is ending: no QEMU of it may outlive it. */
function killAllAtExit(): void {
  for (const child of live) child.kill('SIGKILL');
  live.clear();
}

let setpriv: string | null | undefined;

/**
 * util-linux's setpriv (essential in Debian), which sets the parent-death signal and then runs
 * QEMU in its place (same pid); null where it is missing: QEMU then dies with the agent only when
 * the agent exits by itself.
 */
function deathSignalWrapper(): string | null {
  if (setpriv === undefined) setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((path) => existsSync(path)) ?? null;
  return setpriv;
}

/** A running (or ended) QEMU. */
export class QemuProcess {
  readonly serial: SerialTail;
  readonly pid: number;
  /** Settles when the process has exited (never rejects). */
  readonly exited: Promise<QemuExit>;
  private exit: QemuExit | null = null;
  private stderr = '';

  private constructor(private readonly child: ChildProcess, serialTailBytes: number) {
    this.serial = new SerialTail(serialTailBytes);
    this.pid = child.pid ?? -1;
    live.add(child);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        live.delete(child);
        this.exit = { code, signal };
        resolve(this.exit);
      });
      // A spawn failure (the binary vanished) ends like an exit with no code.
      child.once('error', (error) => {
        this.stderr += `\n${error.message}`;
        if (child.pid === undefined) {
          live.delete(child);
          this.exit = { code: null, signal: null };
          resolve(this.exit);
        }
      });
    });
    child.stdout!.on('data', (chunk: Buffer) => this.serial.push(chunk));
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => (this.stderr = (this.stderr + chunk).slice(-STDERR_BYTES_MAX)));
  }

  /** Starts `binary` with `args`. Its standard input stays open and unused, its output is the serial console. */
  static start(binary: string, args: readonly string[], serialTailBytes: number): QemuProcess {
    if (!exitHookSet) {
      process.on('exit', killAllAtExit);
      exitHookSet = true;
    }
    // Under setpriv --pdeathsig, the kernel kills QEMU when the agent dies, however it dies (kill -9
    // runs no exit hook): an agent started again finds no guest of the old one still running,
    // which it would not know of and might start a second copy of.
    const wrapper = deathSignalWrapper();
    const child = wrapper === null ? spawn(binary, args, { stdio: ['pipe', 'pipe', 'pipe'] }) : spawn(wrapper, ['--pdeathsig', 'KILL', '--', binary, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    return new QemuProcess(child, serialTailBytes);
  }

  /** How it ended, or null while it runs. */
  get exitStatus(): QemuExit | null {
    return this.exit;
  }

  /** The last bytes QEMU wrote to its standard error (its own messages, not the guest's). */
  get stderrTail(): string {
    return this.stderr.trim();
  }

  /** Sends `signal` unless it has exited. */
  signal(signal: NodeJS.Signals): void {
    if (this.exit === null) this.child.kill(signal);
  }

  /**
   * Ends the process: SIGTERM (QEMU shuts its guest down and exits), then SIGKILL if it has not
   * exited after `graceMs`. Settles once it has exited.
   */
  async stop(graceMs: number): Promise<QemuExit> {
    if (this.exit !== null) return this.exit;
    this.signal('SIGTERM');
    return this.killAfter(graceMs);
  }

  /** Its exit, if it exits within `ms`; null otherwise (the process is left alone). */
  async exitedWithin(ms: number): Promise<QemuExit | null> {
    if (this.exit !== null) return this.exit;
    let timer: NodeJS.Timeout | undefined;
    const exit = await Promise.race([this.exited, new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), ms)))]);
    clearTimeout(timer);
    return exit;
  }

  /** SIGKILL if it has not exited within `graceMs`; settles once it has exited. */
  async killAfter(graceMs: number): Promise<QemuExit> {
    if (this.exit !== null) return this.exit;
    const timer = setTimeout(() => this.signal('SIGKILL'), graceMs);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }
}

/** How long a failed QMP call or connection waits for QEMU's exit, to report how it ended instead. */
export const EXIT_WAIT_MS = 1_000;
/** Lines of QEMU's standard error a failure quotes (its last ones), and their bound in characters. */
const STDERR_LINES_QUOTED = 5;
const STDERR_CHARS_QUOTED = 1000;

/** The last lines QEMU wrote to its standard error, bounded, or 'no message'. */
export function lastLines(stderr: string): string {
  const lines = stderr.split('\n').map((line) => line.trim()).filter((line) => line !== '');
  const text = lines.slice(-STDERR_LINES_QUOTED).join(' | ');
  return text === '' ? 'no message' : text.slice(-STDERR_CHARS_QUOTED);
}

/** "exit status 1" or "killed by SIGKILL", for messages. */
export function describeExit(exit: QemuExit): string {
  return exit.signal !== null ? `killed by ${exit.signal}` : exit.code !== null ? `exit status ${exit.code}` : 'could not start';
}
