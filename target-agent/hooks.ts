// Activation hooks (phase 7): commands the operator configured to run once a guest resumes here
// (advertise its IP, reattach devices). Each runs with `sh -c`, bounded by its timeout; a failing
// hook is reported to the source and logged, and does not undo the activation.

import { spawn } from 'node:child_process';
import type { Logger } from 'pino';
import type { Clock } from '../shared/clock.js';

export interface HookResult {
  command: string;
  /** -1 when the hook could not start or was killed. */
  exitCode: number;
  /** Why it failed: the start error, the kill, or the first KiB of its stderr. */
  error: string;
}

/** Stderr kept from a hook while it runs, and the part of it reported. */
const HOOK_OUTPUT = { stderrCharsMax: 4096, errorCharsMax: 1024 } as const;

/**
 * Runs `commands` one after the other with `env` added to the agent's environment, each
 * bounded by `timeoutMs`; logs each that fails.
 */
export async function runActivationHooks(
  commands: readonly string[],
  timeoutMs: number,
  env: Record<string, string>,
  clock: Clock,
  log: Logger,
): Promise<HookResult[]> {
  const results: HookResult[] = [];
  for (const command of commands) {
    const result = await runHook(command, timeoutMs, env, clock);
    results.push(result);
    if (result.exitCode !== 0) log.warn({ hook: command, exitCode: result.exitCode, error: result.error }, 'activation hook failed');
  }
  return results;
}

/**
 * Runs one activation hook with `sh -c` in its own process group. Resolves when the shell exits
 * (a background process it left holding stderr does not keep us waiting); on timeout the whole
 * group is killed.
 */
export function runHook(command: string, timeoutMs: number, env: Record<string, string>, clock: Clock): Promise<HookResult> {
  return new Promise((resolve) => {
    const child = spawn('sh', ['-c', command], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let stderr = '';
    let timedOut = false;
    child.stderr.on('data', (d: Buffer) => {
      if (stderr.length < HOOK_OUTPUT.stderrCharsMax) stderr += d.toString();
    });
    const timer = clock.timeout(timeoutMs, () => {
      timedOut = true;
      try {
        // A negative pid signals the process group (spawned detached, so the shell leads one).
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    });
    child.on('error', (e) => {
      timer.cancel();
      resolve({ command, exitCode: -1, error: e.message });
    });
    child.on('exit', (code, signal) => {
      timer.cancel();
      child.stderr.destroy();
      resolve({
        command,
        exitCode: code ?? -1,
        error: timedOut ? `killed after its ${timeoutMs} ms timeout` : signal ? `killed by ${signal}` : stderr.trim().slice(0, HOOK_OUTPUT.errorCharsMax),
      });
    });
  });
}
