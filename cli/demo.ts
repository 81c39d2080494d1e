// `npm run demo`: record a running guest, then replay it elsewhere, and show that both end in the
// same state. One process, two `sim` hosts: the source runs a guest in real time, takes a live
// checkpoint while it keeps running, records its nondeterministic events into log units; the
// target restores the checkpoint and replays the units, skipping the guest's idle time.

import { Command } from 'commander';
import { InvalidArgumentError } from '../shared/errors.js';
import { compressBlock } from '../shared/lz4.js';
import { PROFILE_NAMES, type ProfileName, SimDriver } from '../shared/driver/sim/index.js';
import { isProfileName } from '../shared/driver/sim/profiles.js';

const program = new Command()
  .name('demo')
  .description('Record a running sim guest and replay it on a second host; compare state digests.')
  .option('--profile <name>', `workload profile: ${PROFILE_NAMES.join(', ')}`, 'web')
  .option('--memory-mib <n>', 'guest memory in MiB', '512')
  .option('--seconds <n>', 'guest seconds to record after the checkpoint', '3')
  .option('--json', 'print one JSON object as the last line')
  .parse();

const opts = program.opts<{ profile: string; memoryMib: string; seconds: string; json?: boolean }>();
if (!isProfileName(opts.profile)) throw new InvalidArgumentError(`--profile ${opts.profile}: expected one of ${PROFILE_NAMES.join(', ')}`);
const profile: ProfileName = opts.profile;
const memoryBytes = Number(opts.memoryMib) * 2 ** 20;
const recordMs = Number(opts.seconds) * 1000;
if (!(recordMs > 0 && recordMs <= 600_000)) throw new InvalidArgumentError(`--seconds ${opts.seconds}: expected a number in (0, 600]`);
const say = (line: string) => {
  if (!opts.json) console.log(line);
};
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

const source = new SimDriver();
const target = new SimDriver();
const bootStart = performance.now();
const guest = source.createGuest({ id: 'demo-guest', profile, memoryBytes });
say(`Booted a '${profile}' guest of ${mib(memoryBytes)} in ${(performance.now() - bootStart).toFixed(0)} ms; it now runs in real time in 10 ms units.`);
await new Promise((resolve) => setTimeout(resolve, 300));

const start = guest.startRecording();
say(`Recording started at unit ${start.firstSequence} (instruction ${start.position}); taking a live checkpoint while the guest keeps running...`);
const replica = target.reserve(guest.describe());
let checkpointRawBytes = 0;
let checkpointWireBytes = 0;
const checkpointStart = performance.now();
for await (const chunk of guest.liveCheckpoint()) {
  checkpointRawBytes += chunk.bytes.length;
  checkpointWireBytes += compressBlock(chunk.bytes)?.length ?? chunk.bytes.length;
  replica.restoreChunk(chunk);
}
const checkpointMs = performance.now() - checkpointStart;
say(
  `Checkpoint restored on the target in ${checkpointMs.toFixed(0)} ms: ${mib(checkpointRawBytes)} after eliding zero pages, ${mib(checkpointWireBytes)} with lz4.`,
);

say(`Recording ${(recordMs / 1000).toFixed(1)} s of guest execution while replaying each unit as it is sealed...`);
let unitsReplayed = 0;
let logBytes = 0;
let events = 0;
let guestNsReplayed = 0;
let replayMs = 0;
const replayLoop = (async () => {
  for (;;) {
    const unit = await guest.nextSealedUnit();
    if (unit === null) return;
    logBytes += unit.bytes.length;
    events += unit.eventCount;
    const t0 = performance.now();
    const applied = replica.applyUnit(unit.bytes);
    replayMs += performance.now() - t0;
    guestNsReplayed += applied.guestNs;
    unitsReplayed++;
  }
})();
await new Promise((resolve) => setTimeout(resolve, recordMs));
const suspendAt = performance.now();
await guest.suspend();
await replayLoop;
const caughtUpMs = performance.now() - suspendAt;
const sourceDigest = guest.digest();
const targetDigest = replica.digest();
const stats = guest.recordingStats();
const equal = sourceDigest === targetDigest;

say(`Suspended the source; the replica had replayed every unit ${caughtUpMs.toFixed(1)} ms later.`);
say(`  units replayed:      ${unitsReplayed} (${events} nondeterministic events)`);
say(`  log:                 ${mib(logBytes)} (${((logBytes / (guestNsReplayed / 1e9 || 1)) / 2 ** 10).toFixed(0)} KiB per guest second)`);
say(`  replay speed-up:     ${(guestNsReplayed / 1e6 / replayMs).toFixed(1)}x faster than the guest ran (idle time skipped)`);
say(`  guest stalled:       ${stats.stallMs.toFixed(0)} ms`);
say(`  source digest:       ${sourceDigest}`);
say(`  replica digest:      ${targetDigest}`);
say(equal ? 'The replica is bit-for-bit the source: same memory, same vCPU and device state.' : 'MISMATCH: the replica diverged from the source.');

if (opts.json) {
  console.log(
    JSON.stringify({
      status: equal ? 'completed' : 'failed',
      method: 'record-replay',
      profile,
      memoryBytes,
      checkpointBytes: checkpointRawBytes,
      checkpointWireBytes,
      logBytes,
      unitsReplayed,
      events,
      replaySpeedup: guestNsReplayed / 1e6 / replayMs,
      sourceDigest,
      targetDigest,
    }),
  );
}
guest.discard();
replica.discard();
process.exitCode = equal ? 0 : 1;
