// The `qemu` hypervisor driver: QEMU processes owned by the agent, driven over QMP.
export { QemuDriver, QEMU_DRIVER_DEFAULTS, type QemuDriverOptions } from './driver.js';
export { QemuGuest, type DriverLog } from './guest.js';
export { type QemuAccel, type QemuAccelChoice, type QemuBoot, type QemuMachineConfig, kvmUsable, qemuArgs, resolveAccel } from './args.js';
export { QmpClient, QmpError, QMP_DEFAULTS, type QmpEvent, type QmpGreeting, type QmpOptions } from './qmp.js';
export { QemuProcess, SerialTail, describeExit, type QemuExit } from './process.js';
