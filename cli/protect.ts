// The protection commands of `vmmigrate` (Control v2, protection.proto): protect a guest to a DR
// agent, end it, switch over to the standby, fail over at the DR agent, list and show
// protections (live with --watch), and a guest's released outputs.

import { Option, type Command } from 'commander';
import { LOG_BATCH_MS_MAX } from '../shared/driver/types.js';
import { REPLAY_LAG_MS_MAX_MAX, REPLAY_LAG_MS_MAX_MIN, RPO_MS_MAX_MAX, RPO_MS_MAX_MIN } from '../shared/rpo.js';
import { controlServiceV2, pb2 } from '../shared/transport/grpc.js';
import { PROTECTION_STATE_NAMES } from '../source-agent/control-v2/protection-reads.js';
import { EXIT, stream } from './calls.js';
import { messageJson } from './json-view.js';
import type { Session } from './session.js';

type Protection = InstanceType<typeof pb2.Protection>;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Action = (...args: any[]) => void | Promise<void>;

/** What the program lends: its client options, its action wrapper and argument parsers. */
export interface CommandKit {
  withClientOptions(command: Command): Command;
  clientAction(run: (session: Session, ...args: string[]) => Promise<number>): Action;
  agentAddress(text: string): string;
  integer(flag: string, min: number, max: number): (text: string) => number;
}

const ROLE_WORDS: Record<number, string> = { [pb2.ProtectionRole.PROTECTION_ROLE_PRIMARY]: 'primary', [pb2.ProtectionRole.PROTECTION_ROLE_STANDBY]: 'standby' };
const MODE_WORDS: Record<number, string> = { [pb2.ProtectionMode.PROTECTION_MODE_SYNC]: 'sync', [pb2.ProtectionMode.PROTECTION_MODE_ASYNC]: 'async' };

function protectionLine(p: Protection): string {
  const lag = p.role === pb2.ProtectionRole.PROTECTION_ROLE_PRIMARY ? `lag ${Math.round(p.lagReceivedMs)} ms received, ${Math.round(p.lagReplayedMs)} ms replayed` : `${Number(p.lagUnitsReplayed)} units to replay`;
  const outputs = p.role === pb2.ProtectionRole.PROTECTION_ROLE_PRIMARY ? `, outputs ${Number(p.outputsHeld)} held / ${Number(p.outputsReleased)} released, log ${(p.logBytesPerSec / 1e6).toFixed(2)} MB/s` : '';
  const detail = p.detail ? ` (${p.detail})` : '';
  const mib = (bytes: number | Long) => (Number(bytes) / 2 ** 20).toFixed(1);
  const base = p.baseKind ? `, checkpoint ${mib(p.checkpointBytes)} MiB over the ${p.baseKind} image (${mib(p.checkpointBytesSaved)} MiB saved)` : '';
  const resyncs = p.resyncs > 0 ? `, ${p.resyncs} resyncs` : '';
  return `${p.guestId}  ${ROLE_WORDS[p.role] ?? p.role} ${PROTECTION_STATE_NAMES[p.state] ?? p.state}  ${MODE_WORDS[p.mode] ?? p.mode}, rpo ${p.rpoMsMax} ms${p.replayLagMsMax > 0 ? `, replay lag ${p.replayLagMsMax} ms` : ''}${p.logBatchMs > 0 ? `, log batch ${p.logBatchMs} ms` : ''}  peer ${p.peer}  ${lag}${outputs}${resyncs}${base}${detail}`;
}

function show(session: Session, p: Protection): void {
  session.document(messageJson(p));
  session.say(protectionLine(p));
}

export function addProtectionCommands(program: Command, kit: CommandKit): void {
  const { withClientOptions, clientAction, agentAddress, integer } = kit;
  withClientOptions(
    program
      .command('protect <guest>')
      .description('keep a standby of a running guest at a DR agent: a checkpoint, then its log without end')
      .addOption(new Option('--to <host:port>', 'the DR agent, as this agent reaches it').argParser(agentAddress).makeOptionMandatory())
      .addOption(new Option('--mode <mode>', 'sync: an output leaves only once the standby has the unit that made it; async: at once, the lag bounded by --rpo-ms-max').choices(['sync', 'async']).default('sync'))
      .option('--rpo-ms-max <n>', "the most guest time the standby may lag behind (default: the agent's, 1000)", integer('--rpo-ms-max', RPO_MS_MAX_MIN, RPO_MS_MAX_MAX))
      .option('--replay-lag-ms-max <n>', "the most guest time the standby's replay may trail before the guest is slowed: a failover replays that much first (default: 1000)", integer('--replay-lag-ms-max', REPLAY_LAG_MS_MAX_MIN, REPLAY_LAG_MS_MAX_MAX))
      .option('--log-batch-ms <n>', 'how long sealed units may wait here to go to the standby together: fewer wake-ups of the agent, at that much more lag; a unit with output goes at once (default: 20, at most a quarter of --rpo-ms-max; under the unit length: each at once)', integer('--log-batch-ms', 1, LOG_BATCH_MS_MAX))
      .addOption(new Option('--on-link-loss <policy>', 'sync mode while the standby is unreachable: hold the outputs (bounded: past the bound, async) or release them at once until it is back').choices(['hold', 'release']).default('hold')),
  ).action(
    clientAction(async (s, guestId) => {
      const o = s.options as unknown as { to: string; mode: 'sync' | 'async'; rpoMsMax?: number; replayLagMsMax?: number; logBatchMs?: number; onLinkLoss: 'hold' | 'release' };
      const mode = o.mode === 'async' ? pb2.ProtectionMode.PROTECTION_MODE_ASYNC : pb2.ProtectionMode.PROTECTION_MODE_SYNC;
      const linkLoss = o.onLinkLoss === 'release' ? pb2.LinkLossPolicy.LINK_LOSS_POLICY_RELEASE : pb2.LinkLossPolicy.LINK_LOSS_POLICY_HOLD;
      const res = await s.call(controlServiceV2.protect, pb2.ProtectRequest.create({ guestId, drAddress: o.to, mode, rpoMsMax: o.rpoMsMax ?? 0, logBatchMs: o.logBatchMs ?? 0, replayLagMsMax: o.replayLagMsMax ?? 0, linkLoss }), `protecting guest ${guestId}`);
      show(s, pb2.Protection.create(res.protection ?? {}));
      s.say(`Follow it with 'vmmigrate protection status ${guestId} --watch'.`);
      return EXIT.ok;
    }),
  );
  withClientOptions(program.command('unprotect <guest>').description('end the protection of a guest: its standby is dropped, the guest runs on')).action(
    clientAction(async (s, guestId) => {
      const res = await s.call(controlServiceV2.unprotect, pb2.UnprotectRequest.create({ guestId }), `unprotecting guest ${guestId}`);
      show(s, pb2.Protection.create(res.protection ?? {}));
      return EXIT.ok;
    }),
  );
  withClientOptions(program.command('switchover <guest>').description('move a protected guest to its standby (a CR/TR migration with no second checkpoint)')).action(
    clientAction(async (s, guestId) => {
      const res = await s.call(controlServiceV2.switchover, pb2.SwitchoverRequest.create({ guestId }), `switching guest ${guestId} over`);
      show(s, pb2.Protection.create(res.protection ?? {}));
      return EXIT.ok;
    }),
  );
  withClientOptions(
    program
      .command('failover <guest>')
      .description('resume the standby of a guest on the DR agent (--agent): refused while its primary still streams, unless --force')
      .option('--force', 'fail over although the primary still streams: its copy then runs until it hears of it'),
  ).action(
    clientAction(async (s, guestId) => {
      const force = (s.options as unknown as { force?: boolean }).force === true;
      const res = await s.call(controlServiceV2.failover, pb2.FailoverRequest.create({ guestId, force }), `failing guest ${guestId} over`);
      s.document(messageJson(res));
      s.say(`Guest '${guestId}' runs on ${s.options.agent}: ${Number(res.unitsReplayedAtFailover)} units replayed at the failover, ${res.failoverMs.toFixed(1)} ms.`);
      return EXIT.ok;
    }),
  );
  const protection = program.command('protection').description('the protections this agent holds, as primary or standby');
  withClientOptions(protection.command('list').description('every protection held here, active and ended')).action(
    clientAction(async (s) => {
      const res = await s.call(controlServiceV2.listProtections, pb2.ListProtectionsRequest.create(), 'listing protections');
      const all = res.protections.map((p) => pb2.Protection.create(p));
      s.document(all.map((p) => messageJson(p)));
      s.say(...(all.length === 0 ? ['no protections'] : all.map(protectionLine)));
      return EXIT.ok;
    }),
  );
  withClientOptions(protection.command('status <guest>').description("a guest's protection: state, lag, outputs").option('--watch', 'print it every second until it ends')).action(
    clientAction(async (s, guestId) => {
      if ((s.options as unknown as { watch?: boolean }).watch !== true) {
        show(s, await s.call(controlServiceV2.getProtection, pb2.GetProtectionRequest.create({ guestId }), `getting the protection of ${guestId}`));
        return EXIT.ok;
      }
      for await (const p of stream(s.control(), controlServiceV2.watchProtection, pb2.WatchProtectionRequest.create({ guestId, intervalMs: 1_000 }), `watching the protection of ${guestId} on ${s.options.agent}`)) show(s, p);
      return EXIT.ok;
    }),
  );
}
