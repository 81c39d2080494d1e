// `vmmigrate migrate GUEST --to TARGET --dry-run` as a person or a script runs it: the CLI as a
// child process against two agents started in this process on loopback. It prints the table of
// predictions and the recommendation, migrates nothing, and fails with the CLI's exit codes.
import t from 'tap';
import { EXIT } from '../cli/calls.js';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../shared/transport/grpc.js';
import { GUEST_BYTES, startTestAgent } from './support/agents.js';
import { runCli } from './support/cli-run.js';

t.test('migrate --dry-run predicts and migrates nothing', async (t) => {
  const source = await startTestAgent(t);
  const target = await startTestAgent(t);
  const control = makeClient(controlServiceV2, 'Control', source.address, grpc.credentials.createInsecure());
  t.teardown(() => control.close());
  await unary(control, controlServiceV2.startGuest, pb2.StartGuestRequest.create({ id: 'vm-dry', profile: 'web', memoryBytes: GUEST_BYTES }), 30_000, 'start guest');
  const dry = (...extra: string[]) => runCli(t, ['migrate', 'vm-dry', '--to', target.address, '--dry-run', '--sample-ms', '500', '--agent', source.address, '--plaintext', ...extra]);

  const human = await dry();
  t.equal(human.code, EXIT.ok, `exit 0 (stderr: ${human.stderr})`);
  t.match(human.stdout, /nothing is migrated/);
  t.match(human.stdout, /round trip [\d.]+ ms \(median of 5\), bandwidth [\d.]+ MB\/s \(measured/, 'the link as measured');
  t.match(human.stdout, /log [\d.]+ MB\/s \(modelled from the workload\)/, 'the modelled log rate says so');
  t.match(human.stdout, /method +converges +downtime +total time +data +disruption +rounds/, 'the table of predictions');
  for (const m of ['crtr', 'crtr \\(log only\\)', 'precopy', 'postcopy']) t.match(human.stdout, new RegExp(`^${m} +(yes|no) `, 'm'), `a row for ${m}`);
  t.match(human.stdout, /^recommended: (crtr|precopy|postcopy): /m, 'a recommendation with its reason');
  t.equal(human.stderr, '', 'nothing on stderr');

  const json = await dry('--json');
  t.equal(json.code, EXIT.ok, json.stderr);
  const doc = JSON.parse(json.stdout) as { methods: Array<{ method: string; converges: boolean }>; link: { bandwidthSource: string; rttMs: number }; recommendedMethod: string };
  t.same(
    doc.methods.map((m) => m.method),
    ['METHOD_CRTR', 'METHOD_CRTR', 'METHOD_PRECOPY', 'METHOD_POSTCOPY'],
    'enum values by name',
  );
  t.equal(doc.link.bandwidthSource, 'INPUT_SOURCE_MEASURED');
  t.ok(doc.link.rttMs > 0);
  t.match(doc.recommendedMethod, /^METHOD_(CRTR|PRECOPY|POSTCOPY)$/);

  const jobs = await unary(control, controlServiceV2.listJobs, pb2.ListJobsRequest.create(), 10_000, 'jobs');
  t.same(jobs.jobs, [], 'no job was started');
  const guests = await unary(control, controlServiceV2.listGuests, pb2.ListGuestsRequest.create(), 10_000, 'guests');
  t.same(
    guests.guests.map((g) => [g.id, g.state]),
    [['vm-dry', pb2.GuestState.GUEST_STATE_RUNNING]],
    'the guest runs on here',
  );

  const unknown = await runCli(t, ['migrate', 'nope', '--to', target.address, '--dry-run', '--agent', source.address, '--plaintext']);
  t.equal(unknown.code, EXIT.failed, 'an unknown guest fails');
  t.match(unknown.stderr, /NOT_FOUND: .*no guest 'nope'/);
  const usage = await dry('--sample-ms', '10');
  t.equal(usage.code, EXIT.usage, 'a sample shorter than the agents take is a usage error');
  t.match(usage.stderr, /--sample-ms '10': expected an integer from 250 to 30000/);
});
