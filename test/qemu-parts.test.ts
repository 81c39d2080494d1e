// The qemu driver's parts that need no QEMU: its command line, the choice of accelerator, the
// serial console's bounded tail, the configuration's qemu section (checked at start, each fault
// named), a StartGuest whose QEMU exits at once (a stand-in binary), and the test guest's
// initramfs (a newc cpio that busybox's own cpio lists back).

import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import t from 'tap';
import { agentOptionsFromArgs } from '../cli/agent.js';
import { ConfigError } from '../shared/config.js';
import { kvmUsable, qemuArgs, resolveAccel } from '../shared/driver/qemu/args.js';
import { SerialTail } from '../shared/driver/qemu/process.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';
import { startTestAgent } from './support/agents.js';
import { cpioNewc } from './support/cpio.js';
import { skipUnlessDebianPackage } from './support/debian.js';
import { buildGuestImage, BUSYBOX_PACKAGE, BUSYBOX_PATH, parseTicks, patternBytesOf, skipUnlessGuestPackages } from './support/initramfs.js';
import { tempDirFor } from './support/qemu.js';

t.test('the command line: no defaults, serial on stdout, QMP on its socket, the boot', async (t) => {
  const kernel = qemuArgs('vm-1', { memoryBytes: 256 * 2 ** 20, vcpus: 2, accel: 'tcg', boot: { kind: 'kernel', kernel: '/k', initrd: '/i', append: 'console=ttyS0' } }, '/run/q/vm-1.qmp');
  t.match(kernel.join(' '), '-nodefaults -nographic');
  const pair = (flag: string) => kernel[kernel.indexOf(flag) + 1];
  t.equal(pair('-accel'), 'tcg');
  t.equal(pair('-m'), '256M');
  t.equal(pair('-smp'), '2');
  t.equal(pair('-serial'), 'chardev:serial0');
  t.equal(pair('-chardev'), 'stdio,id=serial0,signal=off');
  t.equal(pair('-qmp'), 'unix:/run/q/vm-1.qmp,server=on,wait=off');
  t.same([pair('-kernel'), pair('-initrd'), pair('-append')], ['/k', '/i', 'console=ttyS0']);
  t.notOk(kernel.includes('-cpu'), 'TCG keeps its default CPU model');
  const disk = qemuArgs('vm-2', { memoryBytes: 64 * 2 ** 20, vcpus: 1, accel: 'kvm', boot: { kind: 'disk', disk: '/img/a,b.qcow2', format: 'qcow2' } }, '/s');
  t.equal(disk[disk.indexOf('-drive') + 1], 'file=/img/a,,b.qcow2,format=qcow2,if=virtio,snapshot=on', 'a comma in the path is escaped; writes go to a throwaway overlay');
  t.equal(disk[disk.indexOf('-cpu') + 1], 'host', 'KVM passes the host CPU through');
  t.notOk(disk.includes('-kernel'));
});

t.test('the accelerator: auto is KVM only where /dev/kvm opens and the CPU offers vmx or svm', async (t) => {
  const dir = tempDirFor(t);
  const dev = join(dir, 'kvm');
  writeFileSync(dev, '');
  const cpuinfo = (flags: string) => {
    const path = join(dir, `cpuinfo-${flags.length}`);
    writeFileSync(path, `processor\t: 0\nflags\t\t: fpu ${flags} sse2\n`);
    return path;
  };
  t.ok(kvmUsable(dev, cpuinfo('vmx')));
  t.ok(kvmUsable(dev, cpuinfo('svm lm')));
  t.notOk(kvmUsable(dev, cpuinfo('hypervisor')), 'a /dev/kvm without hardware virtualization (a VM without nesting) is not used');
  t.notOk(kvmUsable(join(dir, 'absent'), cpuinfo('vmx')), 'no /dev/kvm');
  t.equal(resolveAccel('auto', () => true), 'kvm');
  t.equal(resolveAccel('auto', () => false), 'tcg');
  t.equal(resolveAccel('kvm', () => false), 'kvm', 'an explicit choice stands');
});

t.test('the serial tail keeps the last bytes, and counts them all', async (t) => {
  const tail = new SerialTail(1024);
  const seen: string[] = [];
  const stop = tail.onData((text) => seen.push(text));
  for (let i = 0; i < 100; i++) tail.push(Buffer.from(`tick ${i} pattern ok\n`));
  stop();
  tail.push(Buffer.from('x'.repeat(3000)));
  t.equal(tail.bytesTotal, seen.join('').length + 3000);
  t.equal(tail.text(), 'x'.repeat(1024), 'bounded: only the last 1024 bytes');
  const small = new SerialTail(1024);
  for (let i = 1; i <= 100; i++) small.push(Buffer.from(`tick ${i} pattern ok\n`));
  t.equal(small.text().length, 1024);
  t.equal(parseTicks(small.text()).counters.at(-1), 100, 'the newest tick is kept');
  t.throws(() => new SerialTail(10), RangeError);
});

t.test('the qemu section is checked at start, each fault named', async (t) => {
  const dir = tempDirFor(t);
  const kernel = join(dir, 'vmlinuz');
  writeFileSync(kernel, 'not really a kernel');
  let n = 0;
  const refusal = (yaml: string): { field: string; message: string } | null => {
    const path = join(dir, `c${n++}.yaml`);
    writeFileSync(path, yaml);
    try {
      agentOptionsFromArgs('source', ['--config', path, '--insecure-plaintext']);
      return null;
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      return { field: error.field, message: error.message };
    }
  };
  t.match(refusal('driver: qemu\n'), { field: 'qemu', message: /needs a qemu section/ });
  t.match(refusal(`driver: qemu\nqemu:\n  kernel: ${kernel}\n  disk: ${kernel}\n  binary: /bin/true\n`), { field: 'qemu.kernel', message: /exactly one/ });
  t.match(refusal(`driver: qemu\nqemu:\n  kernel: ${join(dir, 'absent')}\n  binary: /bin/true\n`), { field: 'qemu.kernel', message: /absent cannot be read \(ENOENT\)/ });
  // QEMU exits at once on a boot file that is a directory: refused here, naming which.
  t.match(refusal(`driver: qemu\nqemu:\n  kernel: ${dir}\n  binary: /bin/true\n`), { field: 'qemu.kernel', message: /is a directory, not a file/ });
  t.match(refusal(`driver: qemu\nqemu:\n  kernel: ${kernel}\n  initrd: ${dir}\n  binary: /bin/true\n`), { field: 'qemu.initrd', message: new RegExp(`qemu.initrd: ${dir} is a directory`) });
  t.match(refusal(`driver: qemu\nqemu:\n  disk: /dev/null\n  binary: /bin/true\n`), { field: 'qemu.disk', message: /is not a regular file/ });
  t.match(refusal(`driver: qemu\nqemu:\n  kernel: ${kernel}\n  binary: ${dir}\n`), { field: 'qemu.binary', message: /no executable/ }, 'a directory is no QEMU binary');
  t.match(refusal(`driver: qemu\nqemu:\n  disk: ${kernel}\n  initrd: ${kernel}\n  binary: /bin/true\n`), { field: 'qemu.initrd', message: /goes with qemu.kernel/ });
  t.match(refusal(`driver: qemu\nqemu:\n  kernel: ${kernel}\n  binary: no-such-qemu-here\n`), { field: 'qemu.binary', message: /no executable no-such-qemu-here on PATH/ });
  t.match(refusal(`driver: qemu\nqemu:\n  kernel: ${kernel}\n  accel: hvf\n`), { field: 'qemu.accel' });
  t.match(refusal(`driver: qemu\nqemu:\n  kernel: ${kernel}\n  stateDir: /a/directory/name/far/too/long/for/a/unix/socket\n`), { field: 'qemu.stateDir' });
  t.match(refusal('driver: xen\n'), { field: 'driver' });
  t.equal(refusal(`driver: qemu\nqemu:\n  kernel: ${kernel}\n  binary: /bin/true\n`), null, 'a kernel and a binary that runs: valid');
  t.equal(refusal(`qemu:\n  kernel: ${join(dir, 'absent')}\n`), null, 'the section is not checked while the driver is sim');
  const options = agentOptionsFromArgs('source', ['--insecure-plaintext']);
  t.equal(options.config.driver, 'sim', 'sim by default');
});

t.test('StartGuest whose QEMU exits at once: refused with its exit status and last words, leaving nothing', async (t) => {
  const dir = tempDirFor(t);
  const kernel = join(dir, 'vmlinuz');
  writeFileSync(kernel, 'not really a kernel');
  // A stand-in for QEMU that fails as QEMU does on a kernel it cannot load.
  const binary = join(dir, 'qemu-fails');
  writeFileSync(binary, "#!/bin/sh\necho 'qemu-system-x86_64: warming up' >&2\necho \"qemu: could not load kernel '/boot': Is a directory\" >&2\nexit 1\n", { mode: 0o755 });
  const stateDir = join(dir, 'run');
  const config = join(dir, 'agent.yaml');
  writeFileSync(config, `driver: qemu\nqemu:\n  binary: ${binary}\n  kernel: ${kernel}\n  stateDir: ${stateDir}\n  accel: tcg\n`);
  const a = await startTestAgent(t, ['--config', config]);
  const control = makeClient(controlServiceV2, 'Control', a.address, grpc.credentials.createInsecure());
  t.teardown(() => control.close());
  const start = unary(control, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'vm-fails', memoryBytes: 128 * 2 ** 20 }), 30_000, 'start');
  await t.rejects(start, { code: 'FAILED_PRECONDITION', reason: 'HYPERVISOR_FAILED', message: /guest 'vm-fails' did not start: its QEMU ended \(exit status 1\) before it ran the guest; QEMU said: qemu-system-x86_64: warming up \| qemu: could not load kernel '\/boot': Is a directory/ }, 'the start answers with the cause: QEMU\'s exit status and its last lines');
  const { guests } = await unary(control, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 10_000, 'list');
  t.same(guests, [], 'no guest is listed');
  const capacity = await unary(control, controlServiceV2.getCapacity, pb2.GetCapacityRequest.create(), 10_000, 'capacity');
  t.equal(Number(capacity.memoryBytesReserved), 0, 'no memory is held for it');
  t.same(readdirSync(stateDir), [], 'its runtime directory is gone');
});

t.test('cpio newc: what busybox cpio lists back', { skip: skipUnlessDebianPackage(BUSYBOX_PACKAGE, 'busybox') }, async (t) => {
  const archive = cpioNewc([
    { kind: 'dir', name: 'bin' },
    { kind: 'file', name: 'bin/hello', data: Buffer.from('hello\n'), mode: 0o755 },
    { kind: 'symlink', name: 'bin/sh', target: 'busybox' },
    { kind: 'char', name: 'console', major: 5, minor: 1 },
  ]);
  t.equal(archive.length % 4, 0, 'padded to 4 bytes');
  const listed = execFileSync(BUSYBOX_PATH, ['cpio', '-t', '-v'], { input: archive }).toString('utf8');
  t.match(listed, /^drwxr-xr-x .* bin$/m);
  t.match(listed, /^-rwxr-xr-x .* 6 .* bin\/hello$/m);
  t.match(listed, /^lrwxrwxrwx .* bin\/sh -> busybox$/m);
  t.match(listed, /^crw------- .* console$/m);
  t.throws(() => cpioNewc([{ kind: 'dir', name: '../etc' }]), RangeError, 'no way out of the archive');
});

t.test('the test guest\'s image: a static busybox, its init, the pattern it checks', { skip: skipUnlessGuestPackages() }, async (t) => {
  const image = buildGuestImage(tempDirFor(t), { patternBytes: 8000, tickMs: 250 });
  t.equal(image.patternBytes, 8000, '1000 lines of 8 bytes');
  t.equal(patternBytesOf(2).toString('ascii'), '1000000\n1000001\n');
  const archive = gunzipSync(readFileSync(image.initrd));
  const listed = execFileSync(BUSYBOX_PATH, ['cpio', '-t'], { input: archive }).toString('utf8').split('\n');
  for (const name of ['init', 'bin/busybox', 'bin/sh', 'dev/console']) t.ok(listed.includes(name), `holds ${name}`);
  const out = tempDirFor(t);
  execFileSync(BUSYBOX_PATH, ['cpio', '-i', 'init'], { input: archive, cwd: out, stdio: ['pipe', 'ignore', 'ignore'] });
  const init = readFileSync(join(out, 'init'), 'utf8');
  t.match(init, `seq 1000000 1000999 > /region/pattern`);
  t.match(init, `"$sum" = "${image.patternMd5}"`);
  t.match(init, 'sleep 0.250');
  t.same(parseTicks('boot 0123abcd-0000-4000-8000-00000000000a pattern 8000 bytes\ntick 1 pattern ok\ntick 2 pattern BAD 00ff\n'), { boots: ['0123abcd-0000-4000-8000-00000000000a'], counters: [1, 2], bad: 1 });
});
