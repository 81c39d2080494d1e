// The QMP client's failures, each with its gRPC code and reason HYPERVISOR_FAILED: a command that
// times out (QEMU stopped by SIGSTOP; its late answer is dropped and the next command works),
// QEMU killed mid-command, QEMU's own refusal, too many commands pending, nothing listening, and
// a peer that sends a line past the bound or one that is not JSON. The QEMU here starts with no
// machine and no guest (-machine none -S): QMP is all it runs. The malformed peers are a fake
// QMP server on a unix socket.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import t, { type Test } from 'tap';
import { QemuProcess } from '../shared/driver/qemu/process.js';
import { QmpClient } from '../shared/driver/qemu/qmp.js';
import { skipUnlessDebianPackage } from './support/debian.js';
import { QEMU_EXECUTABLE, QEMU_PACKAGE } from './support/initramfs.js';
import { tempDirFor } from './support/qemu.js';

const skip = skipUnlessDebianPackage(QEMU_PACKAGE, QEMU_EXECUTABLE);

/** A QEMU with nothing but its QMP socket, and a client connected to it; both ended when `t` ends. */
async function bareQemu(t: Test, options: Parameters<typeof QmpClient.connect>[1] = {}): Promise<{ qemu: QemuProcess; qmp: QmpClient }> {
  const socket = join(tempDirFor(t), 'bare.qmp');
  const qemu = QemuProcess.start(QEMU_EXECUTABLE, ['-nodefaults', '-nographic', '-machine', 'none', '-S', '-qmp', `unix:${socket},server=on,wait=off`], 4096);
  t.teardown(async () => {
    qemu.signal('SIGCONT');
    await qemu.stop(2_000);
  });
  const qmp = await QmpClient.connect(socket, options);
  t.teardown(() => qmp.close());
  return { qemu, qmp };
}

t.test('a command that times out; the late answer is dropped and the next command works', { skip }, async (t) => {
  const { qemu, qmp } = await bareQemu(t);
  t.match(await qmp.execute('query-status'), { status: 'prelaunch', running: false }, 'QEMU answers');
  qemu.signal('SIGSTOP');
  await t.rejects(qmp.execute('query-status', undefined, 300), { code: 'DEADLINE_EXCEEDED', reason: 'HYPERVISOR_FAILED', message: /QEMU did not answer 'query-status' within 300 ms/, metadata: { command: 'query-status', timeoutMs: '300' } });
  t.equal(qmp.pendingCount, 0, 'the timed-out command no longer waits');
  qemu.signal('SIGCONT');
  const next = (await qmp.execute('query-name')) as Record<string, unknown>;
  t.same(next, {}, 'the next command gets its own answer, not the late one');
  t.notOk(qmp.closed);
});

t.test('QEMU killed mid-command: the command fails UNAVAILABLE, and so does every later one', { skip }, async (t) => {
  const { qemu, qmp } = await bareQemu(t);
  qemu.signal('SIGSTOP');
  const pending = qmp.execute('query-status', undefined, 60_000);
  const closed = new Promise((resolve) => qmp.onClose(resolve));
  qemu.signal('SIGKILL');
  await t.rejects(pending, { code: 'UNAVAILABLE', reason: 'HYPERVISOR_FAILED', message: /QMP connection .* closed by QEMU .*'query-status' got no answer/ });
  await closed;
  t.ok(qmp.closed);
  await t.rejects(qmp.execute('cont'), { code: 'UNAVAILABLE', message: /'cont' not sent/ }, 'nothing is sent on a closed connection');
  await t.rejects(qmp.waitEvent('STOP', 1000), { code: 'UNAVAILABLE' }, 'nor awaited');
  t.equal((await qemu.exited).signal, 'SIGKILL');
});

t.test("QEMU's refusal carries its class and words; a bound on pending commands", { skip }, async (t) => {
  const { qemu, qmp } = await bareQemu(t, { pendingMax: 2 });
  await t.rejects(qmp.execute('no-such-command'), { code: 'UNIMPLEMENTED', reason: 'HYPERVISOR_FAILED', metadata: { errorClass: 'CommandNotFound' }, message: /QEMU refused 'no-such-command'/ });
  await t.rejects(qmp.execute('migrate', { uri: 'bogus:' }), { code: 'FAILED_PRECONDITION', metadata: { errorClass: 'GenericError' } });
  qemu.signal('SIGSTOP');
  const waiting = [qmp.execute('query-status'), qmp.execute('query-status')];
  await t.rejects(qmp.execute('query-status'), { code: 'RESOURCE_EXHAUSTED', reason: 'LIMIT_EXCEEDED', message: /2 QMP commands wait .* the limit is 2/ });
  qemu.signal('SIGCONT');
  for (const answer of await Promise.all(waiting)) t.match(answer, { status: 'prelaunch' }, 'the two pending ones are answered');
});

t.test('nothing listening: connect gives up after its timeout', async (t) => {
  const path = join(tempDirFor(t), 'nobody.qmp');
  await t.rejects(QmpClient.connect(path, { connectTimeoutMs: 200 }), { code: 'DEADLINE_EXCEEDED', reason: 'HYPERVISOR_FAILED', message: /nothing listened there within 200 ms/ });
  const aborted = new AbortController();
  aborted.abort(new Error('guest discarded'));
  await t.rejects(QmpClient.connect(path, { signal: aborted.signal }), { code: 'UNAVAILABLE', message: /stopped connecting/ });
});

/** A fake QMP server on a unix socket: greets, then answers each command line by `answer`. */
async function fakeQmp(t: Test, answer: (socket: Socket, line: string) => void): Promise<string> {
  const path = join(tempDirFor(t), 'fake.qmp');
  const server: Server = createServer((socket) => {
    socket.write('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": []}}\r\n');
    let text = '';
    socket.on('data', (chunk) => {
      text += chunk.toString('utf8');
      for (let nl = text.indexOf('\n'); nl !== -1; nl = text.indexOf('\n')) {
        const line = text.slice(0, nl);
        text = text.slice(nl + 1);
        if (line.includes('qmp_capabilities')) socket.write(`{"return": {}, "id": ${JSON.parse(line).id}}\r\n`);
        else answer(socket, line);
      }
    });
  });
  server.listen(path);
  await once(server, 'listening');
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return path;
}

t.test('a line past the bound, or one that is not JSON, closes the connection', async (t) => {
  const long = await fakeQmp(t, (socket) => socket.write(`{"return": "${'x'.repeat(4096)}`));
  const qmp = await QmpClient.connect(long, { lineBytesMax: 1024 });
  t.equal(qmp.greeting.version.package, 'fake');
  await t.rejects(qmp.execute('query-status'), { code: 'UNAVAILABLE', reason: 'MALFORMED_MESSAGE', message: /a QMP line of more than \d+ bytes .* the limit is 1024/ });
  t.ok(qmp.closed);

  const garbage = await fakeQmp(t, (socket) => socket.write('this is not json\r\n'));
  const qmp2 = await QmpClient.connect(garbage);
  await t.rejects(qmp2.execute('query-status'), { code: 'UNAVAILABLE', reason: 'MALFORMED_MESSAGE', message: /not a JSON object/ });

  // Events are delivered between answers; an answer for an id no command has is dropped.
  const eventful = await fakeQmp(t, (socket, line) => {
    const id = JSON.parse(line).id as number;
    socket.write(`{"timestamp": {"seconds": 1, "microseconds": 5}, "event": "STOP"}\r\n{"return": {}, "id": 9999}\r\n{"return": {"status": "paused"}, "id": ${id}}\r\n`);
  });
  const qmp3 = await QmpClient.connect(eventful);
  t.teardown(() => qmp3.close());
  const stop = qmp3.waitEvent('STOP', 5_000);
  t.same(await qmp3.execute('query-status'), { status: 'paused' });
  t.match(await stop, { event: 'STOP', timestampUs: 1_000_005 });
});

t.test('a QEMU does not outlive its agent killed with -9 (its parent-death signal)', { skip }, async (t) => {
  // An agent stand-in: a Node process that starts a QEMU through QemuProcess, prints its pid and waits.
  const processModule = new URL('../shared/driver/qemu/process.js', import.meta.url).href;
  const script = `const { QemuProcess } = await import(${JSON.stringify(processModule)});
const q = QemuProcess.start(${JSON.stringify(QEMU_EXECUTABLE)}, ['-nodefaults', '-nographic', '-machine', 'none', '-S'], 4096);
console.log(q.pid);
setInterval(() => {}, 1000);`;
  const agent = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => agent.kill('SIGKILL'));
  const [line] = (await once(createInterface({ input: agent.stdout! }), 'line')) as [string];
  const pid = Number(line);
  t.ok(pid > 0 && isRunning(pid), `QEMU ${pid} runs`);
  agent.kill('SIGKILL');
  await once(agent, 'exit');
  let gone = false;
  for (let i = 0; i < 100 && !gone; i++) {
    gone = !isRunning(pid);
    if (!gone) await new Promise((resolve) => setTimeout(resolve, 50));
  }
  if (!gone) process.kill(pid, 'SIGKILL');
  t.ok(gone, 'QEMU ended with its agent');
});

/** Whether process `pid` exists and has not exited (a zombie counts as ended). */
function isRunning(pid: number): boolean {
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}
