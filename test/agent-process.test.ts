// The demo as a user runs it: two agent daemons as child processes of the demo process, a guest
// migrated between them over loopback, one JSON summary line at the end.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const DEMO = fileURLToPath(new URL('../cli/demo.js', import.meta.url));

t.test('the demo migrates a 64 MiB guest between two agent processes', async (t) => {
  // Its own process group, so that the teardown can end the demo and the agents it started even
  // if the demo itself hangs or fails half-way.
  const child = spawn(process.execPath, ['--enable-source-maps', DEMO, '--json', '--memory-mib', '64'], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, DEMO_LOG_LEVEL: 'error' },
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let done = false;
  void exited.then(() => (done = true));
  t.teardown(async () => {
    if (done || child.pid === undefined) return;
    const group = -child.pid;
    try {
      process.kill(group, 'SIGTERM');
    } catch {
      return; // Already gone.
    }
    const timer = setTimeout(() => {
      try {
        process.kill(group, 'SIGKILL');
      } catch {
        // Gone meanwhile.
      }
    }, 5_000);
    await exited;
    clearTimeout(timer);
  });

  const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 120_000).unref());
  const outcome = await Promise.race([exited, timeout]);
  if (outcome === 'timeout') {
    t.fail(`the demo did not exit within 120 s; stdout: ${stdout.slice(-2000)}; stderr: ${stderr.slice(-2000)}`);
    return;
  }
  t.equal(outcome.signal, null, 'not killed by a signal');
  t.equal(outcome.code, 0, `exit code 0 (stderr: ${stderr.slice(-2000)})`);

  const lines = stdout.split('\n').filter((l) => l.trim() !== '');
  t.equal(lines.length, 1, 'with --json, only the summary line is printed');
  let summary: Record<string, unknown> = {};
  try {
    summary = JSON.parse(lines[lines.length - 1] ?? '') as Record<string, unknown>;
  } catch (error) {
    t.fail(`the last line is not JSON (${(error as Error).message}): ${stdout.slice(-2000)}`);
    return;
  }
  t.comment(`downtime ${Number(summary.downtimeMs).toFixed(1)} ms, total ${Number(summary.totalTimeMs).toFixed(0)} ms, ${summary.transferredBytes} bytes`);
  t.equal(summary.status, 'completed', `status (error: ${String(summary.error)})`);
  t.equal(summary.method, 'crtr');
  t.equal(summary.profile, 'web');
  t.equal(summary.memoryBytes, 64 * 2 ** 20);
  t.match(summary.sourceDigest, /^[0-9a-f]{16}$/, 'source digest');
  t.equal(summary.targetDigest, summary.sourceDigest, 'target digest equals the source digest');
  t.equal(summary.guestOnTarget, 'running');
  t.equal(summary.guestOnSource, 'absent');
  t.ok(Number(summary.downtimeMs) > 0, 'downtime > 0');
  t.ok(Number(summary.totalTimeMs) > 0, 'total time > 0');
  t.ok(Number(summary.transferredBytes) > Number(summary.checkpointWireBytes), 'transferred more than the checkpoint');
  t.ok(Number(summary.checkpointWireBytes) > 0, 'checkpoint sent');
  t.ok(Number(summary.disruptionMs) >= Number(summary.downtimeMs), `the disruption (${summary.disruptionMs} ms) counts the downtime`);
  t.ok(Number(summary.throttledMs) >= 0 && Number(summary.throttledMs) <= Number(summary.disruptionMs), 'and the throttled work within it');
  t.notMatch(stderr, /stopping the agent destroys this guest/, 'the demo stops its guest before its agents');
  t.equal(summary.error, '');
});
