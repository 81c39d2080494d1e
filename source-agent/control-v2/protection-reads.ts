// The protection calls of Control v2 that read a protection rather than change it: the watch
// stream, the released outputs, the state's words, and the gauges' view (protection.ts keeps the
// protections themselves).

import type { SourceGuest } from '../../shared/driver/types.js';
import { invalidField, UnimplementedError } from '../../shared/errors.js';
import type { ProtectionGaugeView } from '../../shared/protection-metrics.js';
import { pb2 } from '../../shared/transport/grpc.js';
import { ended } from './protection.js';

type Req<K extends keyof typeof pb2> = (typeof pb2)[K] extends abstract new (...args: never) => infer T ? T : never;
type ProtectionMessage = InstanceType<typeof pb2.Protection>;

type WatchCall = {
  write(message: ProtectionMessage): boolean;
  end(): void;
  on(event: 'drain' | 'cancelled', listener: () => void): unknown;
};

/**
 * WatchProtection: the protection now, then at every interval until it ends (a snapshot is
 * skipped, never queued, for a slow reader), then the stream ends.
 */
export function watchProtection(call: WatchCall, read: () => ProtectionMessage, intervalMs: number): void {
  let backlogged = false;
  let over = false;
  call.on('drain', () => (backlogged = false));
  const stop = () => {
    if (over) return;
    over = true;
    clearInterval(timer);
    call.end();
  };
  const tick = () => {
    if (over) return;
    let p: ProtectionMessage;
    try {
      p = read();
    } catch {
      return stop(); // gone (pruned with its job)
    }
    if (!backlogged) backlogged = !call.write(p);
    if (ended(p)) stop();
  };
  const timer = setInterval(tick, intervalMs);
  call.on('cancelled', stop);
  tick();
}

const OUTPUTS_MAX_DEFAULT = 4_096;
const OUTPUTS_MAX = 65_536;

/** GetOutputs: the guest's released outputs after a sequence. */
export function outputsMessage(guest: SourceGuest, req: Req<'GetOutputsRequest'>): InstanceType<typeof pb2.GetOutputsResponse> {
  const output = guest.output;
  if (output === undefined) throw new UnimplementedError(`guest '${guest.id}' has no output device (its driver keeps none)`, { reason: 'NOT_SUPPORTED', metadata: { guestId: guest.id } });
  const max = req.max || OUTPUTS_MAX_DEFAULT;
  if (max > OUTPUTS_MAX) throw invalidField('max', `max ${max}: expected 0 (${OUTPUTS_MAX_DEFAULT}) or 1 to ${OUTPUTS_MAX}`);
  const { packets, firstKept } = output.releasedAfter(Number(req.afterSequence), max);
  const delays = output.delayPercentiles();
  return pb2.GetOutputsResponse.create({
    packets: packets.map((p) => ({ sequence: p.sequence, unit: p.unit, payload: p.payload, delayMs: p.releasedAtMs - p.producedAtMs })),
    firstKept,
    produced: output.produced,
    released: output.released,
    held: output.heldCount,
    delayP50Ms: delays.p50,
    delayP99Ms: delays.p99,
  });
}

/** A protection state's word (metrics, the CLI). */
export const PROTECTION_STATE_NAMES: Readonly<Record<number, string>> = {
  [pb2.ProtectionState.PROTECTION_STATE_SYNCING]: 'syncing',
  [pb2.ProtectionState.PROTECTION_STATE_PROTECTED]: 'protected',
  [pb2.ProtectionState.PROTECTION_STATE_DEGRADED]: 'degraded',
  [pb2.ProtectionState.PROTECTION_STATE_SWITCHING_OVER]: 'switching-over',
  [pb2.ProtectionState.PROTECTION_STATE_FAILED_OVER]: 'failed-over',
  [pb2.ProtectionState.PROTECTION_STATE_STOPPED]: 'stopped',
};

/** A protection as the metrics show it. */
export function gaugeView(p: ProtectionMessage): ProtectionGaugeView {
  return {
    guestId: p.guestId,
    role: p.role === pb2.ProtectionRole.PROTECTION_ROLE_STANDBY ? 'standby' : 'primary',
    state: PROTECTION_STATE_NAMES[p.state] ?? 'unknown',
    lagReceivedMs: p.lagReceivedMs,
    lagReplayedMs: p.lagReplayedMs,
    outputsHeld: Number(p.outputsHeld),
    logBytesPerSec: p.logBytesPerSec,
    resyncs: p.resyncs,
    checkpointBytesSaved: Number(p.checkpointBytesSaved),
  };
}
