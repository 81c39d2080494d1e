// The protections' gauges (Prometheus), read at scrape time from what the agent holds: one series
// per protected guest and role, so that an alert can name the guest whose standby lags.

import { Gauge, type Registry } from 'prom-client';

export interface ProtectionGaugeView {
  guestId: string;
  role: 'primary' | 'standby';
  /** syncing, protected, degraded, switching-over, failed-over, stopped. */
  state: string;
  lagReceivedMs: number;
  lagReplayedMs: number;
  outputsHeld: number;
  logBytesPerSec: number;
  /** Times the primary made its standby again (a lost standby, a link down past the log buffer). */
  resyncs: number;
  /** Raw bytes the current standby's checkpoint saved by going over a base image (a resync, a fail back). */
  checkpointBytesSaved: number;
}

const PREFIX = 'vmmigrate_';

export function registerProtectionGauges(registry: Registry, read: () => ProtectionGaugeView[]): void {
  const registers = [registry];
  const active = () => read().filter((p) => p.state !== 'stopped' && p.state !== 'failed-over');
  new Gauge({
    name: `${PREFIX}protections`,
    help: 'Protections this agent holds, by role and state (ended ones included, as long as their job is kept).',
    labelNames: ['role', 'state'],
    registers,
    collect() {
      this.reset();
      const counts = new Map<string, number>();
      for (const p of read()) counts.set(`${p.role}\u0000${p.state}`, (counts.get(`${p.role}\u0000${p.state}`) ?? 0) + 1);
      for (const [key, n] of counts) {
        const [role, state] = key.split('\u0000');
        this.set({ role, state }, n);
      }
    },
  });
  new Gauge({
    name: `${PREFIX}protection_lag_seconds`,
    help: 'Guest time the standby lags behind its primary: `received` (not yet at the standby; the recovery point) and `replayed` (not yet replayed there).',
    labelNames: ['guest_id', 'role', 'kind'],
    registers,
    collect() {
      this.reset();
      for (const p of active()) {
        if (p.role === 'primary') this.set({ guest_id: p.guestId, role: p.role, kind: 'received' }, p.lagReceivedMs / 1000);
        this.set({ guest_id: p.guestId, role: p.role, kind: 'replayed' }, p.lagReplayedMs / 1000);
      }
    },
  });
  // One series per primary protection, named by its guest.
  const perPrimary = (name: string, help: string, value: (p: ProtectionGaugeView) => number) =>
    new Gauge({
      name: `${PREFIX}${name}`,
      help,
      labelNames: ['guest_id'],
      registers,
      collect() {
        this.reset();
        for (const p of active()) if (p.role === 'primary') this.set({ guest_id: p.guestId }, value(p));
      },
    });
  perPrimary('protection_outputs_held', 'Outputs of a protected guest held until the standby has the units that produced them (sync mode).', (p) => p.outputsHeld);
  perPrimary('protection_log_bytes_per_second', 'The log a protected guest streams to its standby, bytes per second.', (p) => p.logBytesPerSec);
  perPrimary('protection_resyncs', 'Times the primary made the standby of a protected guest again since it was protected (a standby lost, or a link down past the log buffer).', (p) => p.resyncs);
  perPrimary('protection_checkpoint_bytes_saved', "Raw bytes the current standby's checkpoint did not send because the DR agent held them already (a resync over the standby, a fail back over the stopped copy).", (p) => p.checkpointBytesSaved);
}
