// The agent's hypervisor driver, made from its configuration: the built-in sim (the default) or
// qemu (QEMU processes the agent starts and owns). Either ends its guests when the agent stops.

import type { Logger } from 'pino';
import type { AgentConfig } from '../shared/config.js';
import { QemuDriver } from '../shared/driver/qemu/driver.js';
import type { QemuBoot } from '../shared/driver/qemu/args.js';
import { SimDriver } from '../shared/driver/sim/driver.js';
import type { HypervisorDriver } from '../shared/driver/types.js';
import { assert } from '../shared/assert.js';

/** A driver as the agent holds it: the interface, and its stop (which ends every guest it hosts). */
export type AgentDriver = HypervisorDriver & { shutdown(): void | Promise<void> };

/** The sim, with the host's memory, vCPUs and unit length. */
function simDriver(config: AgentConfig, log: Logger): SimDriver {
  return new SimDriver({
    memoryBytesTotal: config.host.memoryMib * 2 ** 20,
    vcpusTotal: config.host.vcpus,
    unitMsDefault: config.host.unitMs,
    // A bug in one guest's runner stops that guest, not the agent and every other guest.
    guest: { vcpu: config.host.vcpu, logQueueUnitsMax: config.host.logBufferUnits, onRunnerFailure: (guestId, error) => log.error({ guestId, err: error }, 'the guest runner failed: the guest is suspended') },
  });
}

/** QEMU, booting what the qemu section says; the host's memory and CPUs are the operating system's. */
function qemuDriver(config: AgentConfig, log: Logger): QemuDriver {
  const qemu = config.qemu;
  assert(qemu !== undefined, 'driver qemu without a qemu section passed validation');
  const boot: QemuBoot = qemu.kernel !== undefined ? { kind: 'kernel', kernel: qemu.kernel, initrd: qemu.initrd, append: qemu.append } : { kind: 'disk', disk: qemu.disk!, format: qemu.diskFormat };
  const driver = new QemuDriver({
    binary: qemu.binary,
    boot,
    accel: qemu.accel,
    vcpusPerGuest: qemu.vcpus,
    stateDir: qemu.stateDir ?? null,
    unitMsDefault: config.host.unitMs,
    serialTailBytes: qemu.serialTailBytes,
    stopGraceMs: qemu.stopGraceMs,
    qmp: { connectTimeoutMs: qemu.qmpTimeoutMs, commandTimeoutMs: qemu.qmpTimeoutMs },
    log: log.child({ driver: 'qemu' }),
  });
  log.info({ accel: driver.accel, boot, memoryBytesTotal: driver.capacity().memoryBytesTotal, vcpusTotal: driver.capacity().vcpusTotal }, 'qemu driver ready');
  return driver;
}

/** The driver the configuration names. */
export function hostDriver(config: AgentConfig, log: Logger): AgentDriver {
  return config.driver === 'qemu' ? qemuDriver(config, log) : simDriver(config, log);
}
