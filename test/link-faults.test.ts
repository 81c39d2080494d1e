// The link emulator's faults beyond a cut (shared/transport/link-faults.ts): a stall holds every
// byte, both ways, for its duration and keeps the connections open; a corrupt byte is flipped
// exactly once, where it was asked for; a retargeted link relays new connections to the new
// address and leaves the open ones alone. Timings are lower bounds only (a stall is never cut
// short), which cannot flake. The payloads' seed is printed; rerun with LINK_TEST_SEED=<seed>.

import { once } from 'node:events';
import * as net from 'node:net';
import { performance } from 'node:perf_hooks';
import t, { type Test } from 'tap';
import { InvalidArgumentError } from '../shared/errors.js';
import { Random } from '../shared/random.js';
import { type LinkCorruptInfo, LinkEmulator } from '../shared/transport/link.js';

const KiB = 1024;
const MiB = 1024 * KiB;

const seed = process.env.LINK_TEST_SEED !== undefined ? Number(process.env.LINK_TEST_SEED) >>> 0 : Random.seedFromOs();
t.comment(`seed ${seed} (rerun with LINK_TEST_SEED=${seed})`);

/** A TCP server on 127.0.0.1:0 calling `handler` per connection; closed when `t` ends. */
async function startServer(t: Test, handler: (socket: net.Socket) => void): Promise<{ address: string; accepted: () => number }> {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    accepted++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    handler(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`, accepted: () => accepted };
}

function echo(socket: net.Socket): void {
  socket.on('data', (b: Buffer) => socket.write(b));
  socket.on('end', () => socket.end());
}

async function startLink(t: Test, target: string): Promise<{ link: LinkEmulator; address: string }> {
  const link = new LinkEmulator({ listen: '127.0.0.1:0', target, profile: 'loopback' });
  t.teardown(() => link.close());
  return { link, address: await link.start() };
}

async function connect(t: Test, address: string): Promise<net.Socket> {
  const [host, port] = address.split(':');
  const socket = net.connect({ host, port: Number(port), allowHalfOpen: true });
  t.teardown(() => {
    socket.destroy();
  });
  await once(socket, 'connect');
  return socket;
}

/** Resolves with the first `n` bytes `socket` receives, and when the last of them came. */
function receive(socket: net.Socket, n: number): Promise<{ bytes: Buffer; atMs: number }> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let got = 0;
    const onData = (b: Buffer) => {
      parts.push(b);
      got += b.length;
      if (got < n) return;
      socket.off('data', onData);
      resolve({ bytes: Buffer.concat(parts).subarray(0, n), atMs: performance.now() });
    };
    socket.on('data', onData);
    socket.once('error', reject);
  });
}

function randomBytes(rng: Random, size: number): Buffer {
  const b = Buffer.alloc(size);
  rng.fill(b);
  return b;
}

t.test('faults are validated, naming the parameter', async (t) => {
  const link = new LinkEmulator({ listen: '127.0.0.1:0', target: '127.0.0.1:9', profile: 'loopback' });
  t.throws(() => link.stall(-1), InvalidArgumentError);
  t.throws(() => link.stall(Number.NaN), /stall ms=NaN/);
  t.throws(() => link.corruptAfterBytes(-1), /corruptAfterBytes n=-1/);
  t.throws(() => link.corruptAfterBytes(0, { mask: 0 }), /mask=0/);
  t.throws(() => link.corruptAfterBytes(0, { direction: 'both' as never }), /direction 'both'/);
  t.throws(() => link.retarget('nowhere'), /link target 'nowhere'/);
});

t.test('a stall holds every byte both ways for its duration, keeps the connection open, then delivers everything intact', async (t) => {
  const { address: target } = await startServer(t, echo);
  const { link, address } = await startLink(t, target);
  const client = await connect(t, address);
  const first = receive(client, 5);
  client.write('hello');
  t.equal((await first).bytes.toString(), 'hello', 'an echo before the stall');

  const rng = new Random(seed);
  const payload = randomBytes(rng, 12 * MiB);
  const endsAtMs = link.stall(400);
  const echoed = receive(client, payload.length);
  let closedEarly = false;
  client.once('close', () => (closedEarly = true));
  for (let offset = 0; offset < payload.length; offset += 256 * KiB) {
    if (!client.write(payload.subarray(offset, offset + 256 * KiB))) await once(client, 'drain');
    // The sender blocks once the link's buffer is full; it must not block forever.
    if (performance.now() > endsAtMs + 10_000) break;
  }
  const { bytes, atMs } = await echoed;
  t.ok(atMs >= endsAtMs, `the echo came ${(atMs - endsAtMs).toFixed(1)} ms after the stall's end, not before`);
  t.ok(bytes.equals(payload), `${payload.length} bytes crossed the stall intact and in order, both ways`);
  t.notOk(closedEarly, 'the connection stayed open');
  t.ok(link.queuedBytesPeak <= link.bufferBytesMax + 64 * KiB, `the proxy queued at most ${link.queuedBytesPeak} bytes (bound ${link.bufferBytesMax} + one read)`);
  t.equal(link.stats().stalls, 1);
});

t.test('unstall ends a stall at once', async (t) => {
  const { address: target } = await startServer(t, echo);
  const { link, address } = await startLink(t, target);
  const client = await connect(t, address);
  link.stall(60_000);
  const echoed = receive(client, 4);
  client.write('ping');
  await new Promise((r) => setTimeout(r, 100));
  link.unstall();
  t.equal((await echoed).bytes.toString(), 'ping', 'delivered once unstalled');
});

t.test('a corrupt byte: exactly the byte asked for is flipped, once, in the direction asked for', async (t) => {
  const received: Buffer[] = [];
  const { address: target } = await startServer(t, (socket) => {
    socket.on('data', (b: Buffer) => received.push(b));
    socket.on('end', () => socket.end());
  });
  const { link, address } = await startLink(t, target);
  const corruptions: LinkCorruptInfo[] = [];
  link.on('corrupt', (info) => corruptions.push(info));
  const rng = new Random(seed ^ 0xf11b);
  const payload = randomBytes(rng, 2 * MiB);
  const n = rng.nextInt(payload.length);
  const mask = 1 + rng.nextInt(255);
  link.corruptAfterBytes(n, { mask });
  t.equal(link.faults.flipArmed, true);
  const client = await connect(t, address);
  for (let offset = 0; offset < payload.length; offset += 100_000) {
    if (!client.write(payload.subarray(offset, offset + 100_000))) await once(client, 'drain');
  }
  client.end();
  await once(client, 'end');
  const got = Buffer.concat(received);
  t.equal(got.length, payload.length, 'every byte arrived');
  const differing = [...got.keys()].filter((i) => got[i] !== payload[i]);
  t.same(differing, [n], `only byte ${n} differs`);
  t.equal(got[n], payload[n] ^ mask, `flipped with mask ${mask}`);
  t.same(corruptions.map((c) => [c.direction, c.offset, c.mask, c.original]), [['forward', n, mask, payload[n]]], "one 'corrupt' event says where, and what the byte was");
  t.match(corruptions[0].around, new RegExp(`\\[${payload.subarray(n, n + 1).toString('hex')}\\]`), 'and the bytes around it');
  t.equal(link.stats().corruptions, 1);
  t.equal(link.faults.flipArmed, false, 'disarmed once it happened');
});

t.test('a corrupt byte in the reverse direction leaves the forward one alone', async (t) => {
  const { address: target } = await startServer(t, echo);
  const { link, address } = await startLink(t, target);
  const client = await connect(t, address);
  link.corruptAfterBytes(3, { direction: 'reverse', mask: 0x20 });
  const echoed = receive(client, 8);
  client.write('abcdefgh');
  t.equal((await echoed).bytes.toString(), 'abcDefgh', 'the echo came back with its fourth byte flipped');
  link.cancelCorrupt();
});

t.test('retarget: new connections go to the new address, open ones stay where they were', async (t) => {
  const a = await startServer(t, (socket) => socket.end('A'));
  const b = await startServer(t, (socket) => socket.end('B'));
  const { link, address } = await startLink(t, a.address);
  const readAll = async (socket: net.Socket) => {
    const parts: Buffer[] = [];
    socket.on('data', (d: Buffer) => parts.push(d));
    await once(socket, 'end');
    return Buffer.concat(parts).toString();
  };
  t.equal(await readAll(await connect(t, address)), 'A');
  link.retarget(b.address);
  t.equal(await readAll(await connect(t, address)), 'B', 'relayed to the new target');
  t.equal(a.accepted(), 1);
  t.equal(b.accepted(), 1);
});
