// The operator CLI with guests that are not the built-in sim's, and with jobs that wait: as a child
// process against a stand-in Control v2 service. A guest is summed up in its driver's terms (a
// qemu guest has no workload, log units or pages), `guest start` needs no profile for it; a job
// in doubt is said once, with how to resolve it, and waited for to its end.

import t from 'tap';
import { guestSummary, guestsTable } from '../cli/views.js';
import { controlServiceV2, grpc, pb2 } from '../shared/transport/grpc.js';
import { runCli, startServer } from './support/cli-run.js';

const MiB = 2 ** 20;
const { JobState, Phase, ErrorReason } = pb2;

t.test('migrate says once what a job in doubt waits for, and how to resolve it, and waits on', async (t) => {
  const job = (state: number, phase: number, extra: object = {}) => ({
    jobId: 'job-doubt',
    role: pb2.JobRole.JOB_ROLE_SOURCE,
    guestId: 'g1',
    peerAddress: '127.0.0.1:7401',
    method: pb2.Method.METHOD_QEMU_NATIVE,
    state,
    phase,
    source: { memoryBytes: 128 * MiB, qemuNative: {} },
    ...extra,
  });
  const doubt = 'commit outcome unknown (the transfer to 127.0.0.1:7401 broke): the guest is kept suspended here while the target is asked what it decided';
  // The job as the agent shows it: committing, then in doubt (three events: the same doubt twice,
  // then the agent's call for an operator), then the target's answer came: completed.
  const events = [
    job(JobState.JOB_STATE_RUNNING, Phase.PHASE_COMMITMENT),
    job(JobState.JOB_STATE_IN_DOUBT, Phase.PHASE_COMMITMENT, { errorMessage: doubt }),
    job(JobState.JOB_STATE_IN_DOUBT, Phase.PHASE_COMMITMENT, { errorMessage: doubt }),
    job(JobState.JOB_STATE_IN_DOUBT, Phase.PHASE_COMMITMENT, { errorMessage: `${doubt}; an operator decides: vmmigrate resolve job-doubt --discard-here`, errorReason: ErrorReason.MIGRATION_IN_DOUBT }),
    job(JobState.JOB_STATE_SUCCEEDED, Phase.PHASE_DONE),
  ];
  const address = await startServer(t, (server) =>
    server.addService(controlServiceV2, {
      startMigration: (_call: unknown, callback: grpc.sendUnaryData<unknown>) => callback(null, pb2.StartMigrationResponse.create({ jobId: 'job-doubt', job: events[0] })),
      watchJob: (call: grpc.ServerWritableStream<unknown, unknown>) => {
        events.forEach((e, i) => call.write(pb2.JobEvent.create({ sequence: i + 1, kind: i === 0 ? pb2.JobEventKind.JOB_EVENT_KIND_SNAPSHOT : pb2.JobEventKind.JOB_EVENT_KIND_PHASE, phase: e.phase, job: e })));
        call.end();
      },
    }),
  );
  const run = await runCli(t, ['migrate', 'g1', '--to', '127.0.0.1:7401', '--method', 'qemu-native', '--agent', address, '--plaintext']);
  t.equal(run.code, 0, `it waited to the end: completed (stderr: ${run.stderr})`);
  t.match(run.stdout, /\(qemu-native\): completed/);
  const said = (pattern: RegExp) => run.stderr.split('\n').filter((line) => pattern.test(line)).length;
  t.equal(said(/job job-doubt is in doubt: commit outcome unknown \(the transfer to 127\.0\.0\.1:7401 broke\)/), 1, 'the in-doubt state, once');
  t.equal(said(/waiting for that/), 1, 'what it waits for, once');
  t.equal(said(/'vmmigrate resolve job-doubt' asks the target again; 'vmmigrate resolve job-doubt --resume-here' or '--discard-here' decides by hand/), 1, 'how an operator resolves it, once');
  t.equal(said(/job job-doubt needs an operator: .*--discard-here; still waiting/), 1, 'the agent\'s call for an operator, once');
});

t.test('a guest in its driver\'s terms; guest start without --profile', async (t) => {
  const { GuestState, GuestRole } = pb2;
  const qemu = { id: 'vm1', driver: 'qemu', memoryBytes: 128 * MiB, vcpus: 1, unitMs: 10, state: GuestState.GUEST_STATE_RUNNING, role: GuestRole.GUEST_ROLE_NONE, hypervisorStatus: 'running' };
  t.equal(guestSummary(qemu), 'qemu, 128 MiB, 1 vCPU', 'no profile, log units or pages for a qemu guest; QEMU\'s word left out when it is the state\'s');
  t.equal(guestSummary({ ...qemu, state: GuestState.GUEST_STATE_BLOCKED, hypervisorStatus: 'running, migration postcopy-paused' }), 'qemu, 128 MiB, 1 vCPU, QEMU: running, migration postcopy-paused');
  t.match(guestsTable([{ ...qemu, state: GuestState.GUEST_STATE_BLOCKED, hypervisorStatus: 'running, migration postcopy-paused' }]), /vm1 +blocked +- +128\.0 MiB +qemu, 128 MiB, 1 vCPU, QEMU: running, migration postcopy-paused/);
  t.equal(guestSummary({ id: 'g1', driver: 'sim', memoryBytes: 64 * MiB, unitMs: 10, sim: { profile: 'web' } }), 'sim web, 64 MiB, 10 ms units, 16384 pages', 'a sim guest as before');

  const asked: Array<InstanceType<typeof pb2.StartGuestRequest>> = [];
  const address = await startServer(t, (server) =>
    server.addService(controlServiceV2, {
      startGuest: (call: grpc.ServerUnaryCall<InstanceType<typeof pb2.StartGuestRequest>, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        asked.push(call.request);
        callback(null, pb2.StartGuestResponse.create({ guest: { ...qemu, id: call.request.id, memoryBytes: call.request.memoryBytes } }));
      },
    }),
  );
  const run = await runCli(t, ['guest', 'start', '--memory-mib', '128', '--id', 'vm1', '--agent', address, '--plaintext']);
  t.equal(run.code, 0, `no --profile needed (stderr: ${run.stderr})`);
  t.equal(asked[0]?.profile, '', 'and none sent');
  t.match(run.stdout, /^Started guest 'vm1' on 127\.0\.0\.1:\d+: qemu, 128 MiB, 1 vCPU \(running\)\.$/m, 'the summary in the qemu guest\'s terms');
  t.notMatch(run.stdout, /ms units|pages/);
});
