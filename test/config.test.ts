// The agent's configuration: the example file is valid; flags override the file; every invalid
// field is refused with its name (and the flag that set it); the daemon exits with status 2
// naming the field.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { agentOptionsFromArgs } from '../cli/agent.js';
import { ConfigError, readConfigFile, validateConfig } from '../shared/config.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vmm-config-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
execFileSync('bash', [join(root, 'scripts/gen-test-certs.sh'), dir, 'agent-a', 'agent-b'], { stdio: 'ignore' });
const other = join(dir, 'other');
execFileSync('bash', [join(root, 'scripts/gen-test-certs.sh'), other, 'agent-x'], { stdio: 'ignore', env: { ...process.env, VMMIGRATE_CA_NAME: 'other CA' } });

let n = 0;
function file(text: string): string {
  const path = join(dir, `c${n++}.yaml`);
  writeFileSync(path, text);
  return path;
}
const tlsYaml = (cert = 'agent-a', key = 'agent-a', ca = join(dir, 'ca.pem')) => `
tls:
  ca: ${ca}
  cert: ${join(dir, `${cert}.pem`)}
  key: ${join(dir, `${key}-key.pem`)}
allow:
  peers: [agent-b]
  control: [orchestrator]
`;

/** The ConfigError the arguments give (its field and message), or null if they are valid. */
function refusal(args: string[]): { field: string; message: string } | null {
  try {
    agentOptionsFromArgs('source', args);
    return null;
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    return { field: error.field, message: error.message };
  }
}

t.test('the example configuration is valid', async (t) => {
  const config = validateConfig(readConfigFile(join(root, 'deploy/agent.example.yaml')), 'deploy/agent.example.yaml');
  t.equal(config.listen, '0.0.0.0:7400');
  t.same(config.allow.peers, ['dom0-a.example.org', 'dom0-b.example.org']);
  t.equal(config.migration.nonConvergencePolicy, 'abort');
  t.equal(config.metricsListen, '127.0.0.1:9464');
});

t.test('a valid file with TLS loads its material; flags override fields', async (t) => {
  const path = file(`listen: "127.0.0.1:0"\nhost: { memoryMib: 2048 }\nmigration: { maxBandwidth: 1gbit, downtimeLimitMs: 200 }\n${tlsYaml()}`);
  const options = agentOptionsFromArgs('source', ['--config', path, '--downtime-limit-ms', '150', '--allow-peer', 'agent-b', 'agent-c']);
  t.equal(options.source, path);
  t.ok(options.tls, 'TLS material loaded');
  t.same(options.tls?.identities.slice(0, 2), ['agent-a', 'localhost']);
  t.equal(options.config.host.memoryMib, 2048, 'from the file');
  t.equal(options.config.migration.maxBandwidth, 125_000_000, '1gbit in bytes/s');
  t.equal(options.config.migration.downtimeLimitMs, 150, 'the flag wins over the file');
  t.same(options.config.allow.peers, ['agent-b', 'agent-c']);
  t.equal(options.config.host.vcpus, 16, 'built-in default');
});

t.test('defaults: the role picks the port; plaintext only when asked', async (t) => {
  const target = agentOptionsFromArgs('target', ['--insecure-plaintext']);
  t.equal(target.config.listen, '127.0.0.1:7401');
  t.equal(target.tls, null);
  t.equal(agentOptionsFromArgs('source', ['--insecure-plaintext']).config.listen, '127.0.0.1:7400');
});

t.test('invalid fields are refused by name', async (t) => {
  const cases: Array<{ args: string[]; field: string; says: RegExp }> = [
    { args: [], field: 'tls.ca', says: /mutual TLS needs tls\.ca, tls\.cert and tls\.key/ },
    { args: ['--insecure-plaintext', '--listen', '0.0.0.0:7400'], field: 'tls.plaintext', says: /only on a loopback address/ },
    { args: ['--config', file('tls: { plaintext: true }\nlisten: "10.1.2.3:7400"\n')], field: 'tls.plaintext', says: /loopback/ },
    { args: ['--insecure-plaintext', '--memory-mib', 'lots'], field: 'host.memoryMib', says: /set by --memory-mib/ },
    { args: ['--insecure-plaintext', '--unit-ms', '500'], field: 'host.unitMs', says: /host\.unitMs \(set by --unit-ms\)/ },
    { args: ['--insecure-plaintext', '--listen', 'nowhere'], field: 'listen', says: /host:port/ },
    { args: ['--insecure-plaintext', '--max-bandwidth', 'fast'], field: 'migration.maxBandwidth', says: /expected bytes per second/ },
    { args: ['--insecure-plaintext', '--max-bandwidth', '1000'], field: 'migration.maxBandwidth', says: /125000.*0 \(or leaving it out\) means no limit/ },
    { args: ['--config', file('tls: { plaintext: true }\nlog: { levle: debug }\n')], field: 'log.levle', says: /unknown field 'levle'/ },
    { args: ['--config', file('tls: { plaintext: true }\nmigration: { nonConvergencePolicy: retry }\n')], field: 'migration.nonConvergencePolicy', says: /abort/ },
    { args: ['--config', file('tls: { plaintext: true }\nlimits: { chunkWindow: -1 }\n')], field: 'limits.chunkWindow', says: /limits\.chunkWindow/ },
    { args: ['--config', file('tls: { plaintext: true }\nhooks: { activation: "echo hi" }\n')], field: 'hooks.activation', says: /hooks\.activation/ },
    { args: ['--config', file('- just\n- a list\n')], field: '(file)', says: /YAML mapping/ },
    { args: ['--config', file('listen: [unclosed\n')], field: '(file)', says: /not valid YAML/ },
    { args: ['--config', join(dir, 'absent.yaml')], field: '(file)', says: /cannot read/ },
    { args: ['--config', file(tlsYaml().replace('peers: [agent-b]', 'peers: []'))], field: 'allow.peers', says: /empty/ },
    { args: ['--config', file(tlsYaml().replace(`${join(dir, 'agent-a.pem')}`, join(dir, 'nope.pem')))], field: 'tls.cert', says: /cannot read/ },
    { args: ['--config', file(tlsYaml('agent-a', 'agent-b'))], field: 'tls.key', says: /not the private key/ },
    { args: ['--config', file(tlsYaml('agent-a', 'agent-a', join(other, 'ca.pem')))], field: 'tls.cert', says: /not issued by the CA/ },
    { args: ['--config', file(tlsYaml('agent-a', 'agent-a', join(dir, 'agent-b.pem')))], field: 'tls.ca', says: /not a CA certificate/ },
    { args: ['--config', file(tlsYaml()), '--insecure-plaintext'], field: 'tls.plaintext', says: /choose one/ },
  ];
  for (const c of cases) {
    const got = refusal(c.args);
    t.equal(got?.field, c.field, `${c.args.join(' ')} → ${got?.message}`);
    t.match(got?.message ?? '', c.says);
  }
});

t.test('rates in the configuration: numbers, text with units, 0 or unlimited', async (t) => {
  const rate = (v: unknown) => validateConfig({ tls: { plaintext: true }, migration: { maxBandwidth: v } }, 'test').migration.maxBandwidth;
  t.equal(rate(125000), 125_000);
  t.equal(rate('100mbit'), 12_500_000);
  t.equal(rate('1gbit'), 125_000_000);
  t.equal(rate('125MB/s'), 125_000_000);
  t.equal(rate('64MiB/s'), 64 * 2 ** 20);
  t.equal(rate(0), 0);
  t.equal(rate('unlimited'), 0);
  t.throws(() => rate('100mb'), /migration\.maxBandwidth: .*ambiguous/);
  t.throws(() => rate(-5), /migration\.maxBandwidth/);
});

t.test('the daemon refuses a bad configuration at start: exit status 2, the field named', async (t) => {
  const main = join(root, 'dist/source-agent/main.js');
  const bad = file('tls: { plaintext: true }\nlisten: "127.0.0.1:0"\nhost: { vcpus: 0 }\n');
  const res = spawnSync(process.execPath, [main, '--config', bad], { encoding: 'utf8', timeout: 30_000 });
  t.equal(res.status, 2);
  t.match(res.stderr, /source-agent: invalid configuration in .*: host\.vcpus: /);
  t.equal(res.stdout, '', 'it never listened');
  const check = spawnSync(process.execPath, [main, '--config', file(`listen: "127.0.0.1:0"\n${tlsYaml()}`), '--check-config'], { encoding: 'utf8', timeout: 30_000 });
  t.equal(check.status, 0, check.stderr);
  t.match(check.stdout, /is valid .*mutual TLS as \[agent-a, localhost\]/);
  const noTls = spawnSync(process.execPath, [main, '--listen', '127.0.0.1:0'], { encoding: 'utf8', timeout: 30_000 });
  t.equal(noTls.status, 2);
  t.match(noTls.stderr, /tls\.ca: missing/);
});
