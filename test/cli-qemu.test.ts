// What the operator CLI says of a job in doubt while it watches it, as a child process against a
// stand-in Control v2 service: the in-doubt state and how to resolve it, said once, and the wait
// going on to the job's end.

import t from 'tap';
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
