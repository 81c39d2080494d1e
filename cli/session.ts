// One client command's run: its options, the Control client it makes on first use, how it
// prints (lines for a person, one JSON document with --json), and how a failure becomes one
// line on stderr and an exit code.

import type { Command } from 'commander';
import { VmMigrateError } from '../shared/errors.js';
import { call, CallError, errorLine, exitCodeForStatus, statusNameOf } from './calls.js';
import { type ConnectionOptions, type ControlClient, controlClient } from './connect.js';

export interface ClientOptions extends ConnectionOptions {
  timeoutMs: number;
  json?: boolean;
}

/** What a client command works with: its options, a Control client made on first use, output. */
export class Session {
  private client: ControlClient | null = null;

  constructor(readonly options: ClientOptions) {}

  /** Credentials are checked here, before anything is dialled. */
  control(): ControlClient {
    this.client ??= controlClient(this.options);
    return this.client;
  }

  call<Req, Res>(method: Parameters<typeof call<Req, Res>>[1], request: Req, what: string, timeoutMs = this.options.timeoutMs): Promise<Res> {
    return call(this.control(), method, request, timeoutMs, `${what} on ${this.options.agent}`);
  }

  /** Lines for a person; nothing with --json. */
  say(...lines: string[]): void {
    if (!this.options.json) process.stdout.write(`${lines.join('\n')}\n`);
  }

  /** The one JSON document of --json. */
  document(value: unknown): void {
    if (this.options.json) process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  }

  close(): void {
    this.client?.close();
  }
}

/** The exit code of a failed command: by gRPC status for calls and operating errors. */
export function exitCodeOf(error: unknown): number {
  return exitCodeForStatus(statusNameOf(error));
}

/**
 * A commander action for a client command: `run` gets the session and the positional arguments
 * and returns the exit code. Operating failures (a call's status, a configuration error) become
 * one line on stderr and their exit code; anything else is a bug and propagates.
 */
export function clientAction(run: (session: Session, ...args: string[]) => Promise<number>) {
  return async (...args: unknown[]): Promise<void> => {
    const command = args[args.length - 1] as Command;
    const session = new Session(command.opts<ClientOptions>());
    try {
      process.exitCode = await run(session, ...(args.slice(0, -2) as string[]));
    } catch (error) {
      if (!(error instanceof CallError || error instanceof VmMigrateError)) throw error;
      process.stderr.write(`${errorLine(error, session.options.agent)}\n`);
      process.exitCode = exitCodeOf(error);
    } finally {
      session.close();
    }
  };
}

