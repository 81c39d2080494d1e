// Mutual TLS between agents and on the Control API: a migration between two agents that trust
// each other; refusals of an untrusted certificate, of a trusted one not on the allowlist (both
// directions: an agent calling, and an agent being dialled), and of plaintext; each refusal logged.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import t from 'tap';
import { agentOptionsFromArgs, type RunningAgent, startAgent } from '../cli/agent.js';
import { controlService, grpc, makeClient, migrationService, pb, unary } from '../shared/transport/grpc.js';
import { checkHealth } from '../shared/transport/health.js';
import { clientCredentials, loadTlsMaterial } from '../shared/transport/tls.js';
import { GUEST_BYTES, sleep } from './support/agents.js';

const script = new URL('../../scripts/gen-test-certs.sh', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'vmm-tls-'));
const rogueDir = mkdtempSync(join(tmpdir(), 'vmm-rogue-'));
t.teardown(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(rogueDir, { recursive: true, force: true });
});
execFileSync('bash', [script, dir, 'agent-a', 'agent-b', 'agent-c', 'orchestrator'], { stdio: 'ignore' });
execFileSync('bash', [script, rogueDir, 'orchestrator'], { stdio: 'ignore', env: { ...process.env, VMMIGRATE_CA_NAME: 'rogue CA' } });

const files = (d: string, name: string) => ({ ca: join(d, 'ca.pem'), cert: join(d, `${name}.pem`), key: join(d, `${name}-key.pem`) });

interface Logged {
  agent: RunningAgent;
  lines: Array<Record<string, unknown>>;
}

/** An agent on 127.0.0.1:0 with mutual TLS as `name`, its log lines collected. */
async function tlsAgent(name: string, peers: string[], control: string[]): Promise<Logged> {
  const f = files(dir, name);
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  const options = agentOptionsFromArgs('source', [
    '--listen', '127.0.0.1:0', '--tls-ca', f.ca, '--tls-cert', f.cert, '--tls-key', f.key,
    '--allow-peer', ...peers, '--allow-control', ...control, '--log-level', 'info',
  ]);
  const agent = await startAgent(options, pino({ level: 'info' }, sink));
  t.teardown(() => agent.shutdown('test over'));
  return { agent, lines };
}

function client(service: typeof controlService | typeof migrationService, name: 'Control' | 'Migration', address: string, d: string, who: string): grpc.Client {
  const c = makeClient(service as typeof controlService, name, address, clientCredentials(loadTlsMaterial(files(d, who))));
  t.teardown(() => c.close());
  return c;
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (error) {
    const c = (error as { code: number | string }).code;
    return typeof c === 'string' ? c : (grpc.status[c] ?? String(error));
  }
}

async function until(ok: () => boolean, ms = 5_000): Promise<void> {
  for (const end = Date.now() + ms; !ok() && Date.now() < end; ) await sleep(20);
}

const a = await tlsAgent('agent-a', ['agent-b'], ['orchestrator']);
const b = await tlsAgent('agent-b', ['agent-a'], ['orchestrator']);
const c = await tlsAgent('agent-c', ['agent-a'], ['orchestrator']);
const orchestratorToA = client(controlService, 'Control', a.agent.address, dir, 'orchestrator');

t.test('a migration between two agents over mutual TLS completes', async (t) => {
  await unary(orchestratorToA, controlService.startGuest, pb.StartGuestRequest.create({ id: 'g1', profile: 'idle', memoryBytes: GUEST_BYTES }), 30_000, 'start');
  const { jobId } = await unary(orchestratorToA, controlService.startMigration, pb.StartMigrationRequest.create({ guestId: 'g1', targetAddress: b.agent.address }), 10_000, 'migrate');
  let job: InstanceType<typeof pb.Job>;
  for (;;) {
    job = await unary(orchestratorToA, controlService.getJob, pb.GetJobRequest.create({ jobId }), 10_000, 'get job');
    if (['completed', 'failed', 'cancelled'].includes(job.stats?.status ?? '')) break;
    await sleep(100);
  }
  t.equal(job.stats?.status, 'completed', job.stats?.error ?? '');
  t.equal(job.stats?.sourceDigest, job.stats?.targetDigest);
  t.ok(b.agent.driver.listGuests().some((g) => g.id === 'g1' && g.state === 'running'), 'the guest runs on the target');
});

t.test('a client certificate from another CA is refused in the handshake, and logged', async (t) => {
  const rogue = client(controlService, 'Control', a.agent.address, rogueDir, 'orchestrator');
  t.equal(await code(unary(rogue, controlService.listGuests, pb.ListGuestsRequest.create(), 5_000, 'list')), 'UNAVAILABLE');
  await until(() => a.lines.some((l) => String(l.msg).startsWith('refused a connection: TLS handshake failed')));
  t.ok(a.lines.some((l) => String(l.msg).startsWith('refused a connection: TLS handshake failed')), 'the agent logged the refused handshake');
});

t.test('a plaintext client is refused', async (t) => {
  const plain = makeClient(controlService, 'Control', a.agent.address, grpc.credentials.createInsecure());
  t.teardown(() => plain.close());
  t.equal(await code(unary(plain, controlService.listGuests, pb.ListGuestsRequest.create(), 5_000, 'list')), 'UNAVAILABLE');
});

t.test('a trusted identity not on the Control allowlist gets PERMISSION_DENIED, and it is logged', async (t) => {
  const peerAsControl = client(controlService, 'Control', a.agent.address, dir, 'agent-b');
  let message = '';
  try {
    await unary(peerAsControl, controlService.listGuests, pb.ListGuestsRequest.create(), 5_000, 'list');
  } catch (error) {
    message = (error as Error).message;
    t.equal((error as { code: string }).code, 'PERMISSION_DENIED');
    t.match(error, { reason: 'SECURITY_REFUSED', metadata: { allowlist: 'allow.control', identities: 'agent-b' } }, 'the reason and the identities, from the status details');
  }
  t.match(message, /agent-b.*allow\.control/);
  t.ok(a.lines.some((l) => String(l.msg).startsWith('refused a call') && (l.identities as string[]).includes('agent-b')), 'the refusal is logged with the identity');
});

t.test('a trusted identity not on the peer allowlist cannot call the Migration service', async (t) => {
  const orchestratorAsPeer = client(migrationService, 'Migration', a.agent.address, dir, 'orchestrator');
  t.equal(await code(unary(orchestratorAsPeer, migrationService.getCapacity, pb.GetCapacityRequest.create(), 5_000, 'capacity')), 'PERMISSION_DENIED');
});

t.test('a source does not send a guest to a target whose identity is not on its peer allowlist', async (t) => {
  await unary(orchestratorToA, controlService.startGuest, pb.StartGuestRequest.create({ id: 'g2', profile: 'idle', memoryBytes: GUEST_BYTES }), 30_000, 'start');
  // agent-c trusts agent-a, but agent-a does not list agent-c.
  const { jobId } = await unary(orchestratorToA, controlService.startMigration, pb.StartMigrationRequest.create({ guestId: 'g2', targetAddress: c.agent.address }), 10_000, 'migrate');
  let job: InstanceType<typeof pb.Job>;
  for (;;) {
    job = await unary(orchestratorToA, controlService.getJob, pb.GetJobRequest.create({ jobId }), 10_000, 'get job');
    if (['completed', 'failed', 'cancelled'].includes(job.stats?.status ?? '')) break;
    await sleep(100);
  }
  t.equal(job.stats?.status, 'failed');
  t.equal(job.stats?.errorCode, 'UNAVAILABLE');
  t.match(job.stats?.error ?? '', /allow\.peers|agent-c/, `the error says why: ${job.stats?.error}`);
  t.ok(a.agent.driver.listGuests().some((g) => g.id === 'g2' && g.state === 'running'), 'the guest still runs on the source');
  t.notOk(c.agent.driver.listGuests().some((g) => g.id === 'g2'), 'and not on the target');
});

t.test('the health service answers any certificate the CA issued, on no allowlist', async (t) => {
  // agent-c is neither on agent-a's allow.peers nor on its allow.control.
  const creds = clientCredentials(loadTlsMaterial(files(dir, 'agent-c')));
  t.equal(await checkHealth(a.agent.address, '', 5_000, creds), 'SERVING');
  t.equal(await checkHealth(a.agent.address, 'vmmigrate.v1.Migration', 5_000, creds), 'SERVING');
  const rogue = clientCredentials(loadTlsMaterial(files(rogueDir, 'orchestrator')));
  await t.rejects(checkHealth(a.agent.address, '', 5_000, rogue), { code: 'UNAVAILABLE' }, 'but not a certificate from another CA');
});

t.test('a plaintext agent refuses to migrate to a non-loopback target', async (t) => {
  const options = agentOptionsFromArgs('source', ['--listen', '127.0.0.1:0', '--insecure-plaintext', '--log-level', 'error']);
  const agent = await startAgent(options);
  t.teardown(() => agent.shutdown('test over'));
  const ctl = makeClient(controlService, 'Control', agent.address, grpc.credentials.createInsecure());
  t.teardown(() => ctl.close());
  await unary(ctl, controlService.startGuest, pb.StartGuestRequest.create({ id: 'g3', profile: 'idle', memoryBytes: GUEST_BYTES }), 30_000, 'start');
  let message = '';
  try {
    await unary(ctl, controlService.startMigration, pb.StartMigrationRequest.create({ guestId: 'g3', targetAddress: '192.0.2.1:7401' }), 5_000, 'migrate');
  } catch (error) {
    message = (error as Error).message;
    t.equal((error as { code: string }).code, 'INVALID_ARGUMENT');
  }
  t.match(message, /loopback/);
});
