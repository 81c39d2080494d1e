// Server reflection on a real agent, asked the way grpcurl asks: list the services, fetch the file
// that defines a symbol, and follow its dependencies; the descriptors follow the rules of protoc
// that grpcurl and Postman check. Over mutual TLS, reflection answers the Control allowlist only.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { loadSync } from '@grpc/proto-loader';
import descriptor from 'protobufjs/ext/descriptor.js';
import t, { type Test } from 'tap';
import { agentOptionsFromArgs, startAgent } from '../cli/agent.js';
import { deadline, grpc } from '../shared/transport/grpc.js';
import { mapEntryName } from '../shared/transport/descriptors.js';
import { agentProtoFiles, PROTO_DIR } from '../shared/transport/reflection.js';
import { allowlistOf, clientCredentials, loadTlsMaterial } from '../shared/transport/tls.js';
import { startTestAgent } from './support/agents.js';

/** The v1 and v1alpha reflection protocols, from the .proto files @grpc/reflection ships. */
const protoDir = join(dirname(createRequire(import.meta.url).resolve('@grpc/reflection/package.json')), 'build', 'proto');
type ReflectionClient = grpc.Client & { ServerReflectionInfo(options: grpc.CallOptions): grpc.ClientDuplexStream<ReflectionRequest, ReflectionResponse> };
type ReflectionClientConstructor = new (address: string, credentials: grpc.ChannelCredentials) => ReflectionClient;
const reflectionClients = grpc.loadPackageDefinition(loadSync(['grpc/reflection/v1/reflection.proto', 'grpc/reflection/v1alpha/reflection.proto'], { includeDirs: [protoDir] })) as unknown as {
  grpc: { reflection: Record<'v1' | 'v1alpha', { ServerReflection: ReflectionClientConstructor }> };
};

interface ReflectionRequest {
  listServices?: string;
  fileContainingSymbol?: string;
  fileByFilename?: string;
}
interface ReflectionResponse {
  listServicesResponse?: { service: Array<{ name: string }> };
  fileDescriptorResponse?: { fileDescriptorProto: Buffer[] };
  errorResponse?: { errorCode: number; errorMessage: string };
}

function reflectionClient(t: Test, address: string, credentials = grpc.credentials.createInsecure(), version: 'v1' | 'v1alpha' = 'v1'): ReflectionClient {
  const client = new reflectionClients.grpc.reflection[version].ServerReflection(address, credentials);
  t.teardown(() => client.close());
  return client;
}

/** One request on a reflection stream, and its answer. */
function ask(client: ReflectionClient, request: ReflectionRequest): Promise<ReflectionResponse> {
  return new Promise((resolve, reject) => {
    const stream = client.ServerReflectionInfo({ deadline: deadline(10_000) });
    stream.once('data', (response: ReflectionResponse) => {
      resolve(response);
      stream.cancel();
    });
    stream.once('error', reject);
    stream.write(request);
  });
}

async function serviceNames(client: ReflectionClient): Promise<string[]> {
  const response = await ask(client, { listServices: '*' });
  return (response.listServicesResponse?.service ?? []).map((s) => s.name).sort();
}

type File = descriptor.IFileDescriptorProto;
const decode = (bytes: Buffer): File => descriptor.FileDescriptorProto.decode(bytes) as File;

/** The files of a symbol: its own first, then every file it depends on, directly or not. */
async function filesOf(client: ReflectionClient, symbol: string): Promise<File[]> {
  const response = await ask(client, { fileContainingSymbol: symbol });
  if (response.errorResponse) throw new Error(`${symbol}: ${response.errorResponse.errorMessage} (${grpc.status[response.errorResponse.errorCode]})`);
  return (response.fileDescriptorResponse?.fileDescriptorProto ?? []).map(decode);
}

const SERVICES = [
  'grpc.health.v1.Health',
  'grpc.reflection.v1.ServerReflection',
  'grpc.reflection.v1alpha.ServerReflection',
  'vmmigrate.v1.Control',
  'vmmigrate.v1.Migration',
  'vmmigrate.v2.Control',
];

t.test('proto/files.txt lists every .proto file of the project but the google.protobuf ones, which are imported', async (t) => {
  const onDisk = (readdirSync(PROTO_DIR, { recursive: true }) as string[]).filter((f) => f.endsWith('.proto') && !f.startsWith('google/protobuf/')).sort();
  t.same([...agentProtoFiles()].sort(), onDisk);
});

t.test('map entry type names as protoc writes them', async (t) => {
  t.equal(mapEntryName('rates'), 'RatesEntry');
  t.equal(mapEntryName('data_map'), 'DataMapEntry');
  t.equal(mapEntryName('_x__y_'), 'XYEntry');
});

t.test('reflection follows the Control allowlist', async (t) => {
  const allow = { peers: ['agent-b'], control: ['orchestrator'] };
  t.equal(allowlistOf('/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', allow), allow.control);
  t.equal(allowlistOf('/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo', allow), allow.control);
});

t.test('a plaintext agent on loopback', async (t) => {
  const { address } = await startTestAgent(t);
  const client = reflectionClient(t, address);

  t.test('lists its services, and the v1alpha protocol too', async (t) => {
    t.same(await serviceNames(client), SERVICES);
    t.same(await serviceNames(reflectionClient(t, address, undefined, 'v1alpha')), SERVICES);
  });

  t.test('describes vmmigrate.v2.Control and its methods', async (t) => {
    const [file] = await filesOf(client, 'vmmigrate.v2.Control');
    t.equal(file?.package, 'vmmigrate.v2');
    const control = file?.service?.find((s) => s.name === 'Control');
    const start = control?.method?.find((m) => m.name === 'StartMigration');
    t.equal(start?.inputType, '.vmmigrate.v2.StartMigrationRequest');
    t.equal(start?.outputType, '.vmmigrate.v2.StartMigrationResponse');
    t.ok(file?.messageType?.some((m) => m.name === 'StartMigrationRequest'), 'and the messages it takes');
    const [byMethod] = await filesOf(client, 'vmmigrate.v2.Control.StartMigration');
    t.equal(byMethod?.name, file?.name, 'a method is found too');
  });

  t.test('every file lists the files it refers to, and the answer holds them', async (t) => {
    // grpcurl links a file only against the files it lists as dependencies.
    const files = await filesOf(client, 'google.rpc.Status');
    t.equal(files[0]?.package, 'google.rpc');
    t.same(files[0]?.dependency, ['google_protobuf.proto']);
    t.ok(files.find((f) => f.name === 'google_protobuf.proto')?.messageType?.some((m) => m.name === 'Any'), 'google.protobuf.Any comes with it');
    for (const service of SERVICES) {
      const names = new Set((await filesOf(client, service)).map((f) => f.name));
      for (const file of await filesOf(client, service)) {
        for (const dependency of file.dependency ?? []) t.ok(names.has(dependency), `${service}: ${file.name} depends on ${dependency}, which the answer holds`);
      }
    }
  });

  t.test('field names are those of the .proto files, and map entry types are named as protoc names them', async (t) => {
    const [file] = await filesOf(client, 'vmmigrate.v1.StartGuestRequest');
    const message = file?.messageType?.find((m) => m.name === 'StartGuestRequest');
    t.ok(message?.field?.some((f) => f.name === 'memory_bytes'), 'memory_bytes, not memoryBytes');
    const rates = message?.field?.find((f) => f.name === 'rates');
    const entry = message?.nestedType?.find((m) => m.options?.mapEntry);
    // grpcurl refuses an entry type not named <Field>Entry: "incorrect implicit map entry name".
    t.equal(entry?.name, 'RatesEntry');
    t.equal(rates?.typeName?.replace(/^\.vmmigrate\.v1\.StartGuestRequest\./, ''), 'RatesEntry');
  });

  t.test('an unknown symbol is NOT_FOUND', async (t) => {
    const response = await ask(client, { fileContainingSymbol: 'vmmigrate.v9.Nothing' });
    t.equal(response.errorResponse?.errorCode, grpc.status.NOT_FOUND);
  });
});

t.test('an agent with mutual TLS answers reflection for the Control allowlist only', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-reflection-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  execFileSync('bash', [new URL('../../scripts/gen-test-certs.sh', import.meta.url).pathname, dir, 'agent-a', 'agent-b', 'orchestrator'], { stdio: 'ignore' });
  const files = (name: string) => ({ ca: join(dir, 'ca.pem'), cert: join(dir, `${name}.pem`), key: join(dir, `${name}-key.pem`) });
  const a = files('agent-a');
  const agent = await startAgent(
    agentOptionsFromArgs('source', ['--listen', '127.0.0.1:0', '--tls-ca', a.ca, '--tls-cert', a.cert, '--tls-key', a.key, '--allow-peer', 'agent-b', '--allow-control', 'orchestrator', '--log-level', 'silent']),
  );
  t.teardown(() => agent.shutdown('test over'));
  const as = (name: string) => reflectionClient(t, agent.address, clientCredentials(loadTlsMaterial(files(name))));
  t.same(await serviceNames(as('orchestrator')), SERVICES, 'a Control client lists the services');
  await t.rejects(serviceNames(as('agent-b')), { code: grpc.status.PERMISSION_DENIED, details: /agent-b.*allow\.control/ }, 'a peer not on allow.control is refused');
  await t.rejects(serviceNames(reflectionClient(t, agent.address)), { code: grpc.status.UNAVAILABLE }, 'so is a plaintext client');
});
