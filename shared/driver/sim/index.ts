// The built-in deterministic guest: the `sim` hypervisor driver.
export { SimDriver, type CreateGuestSpec, type SimDriverOptions } from './driver.js';
export { SimSourceGuest, type Pacing, type SimGuestOptions, SIM_GUEST_DEFAULTS, VCPU_MODES, type VcpuMode } from './guest.js';
export { SimReplica } from './replica.js';
export { PROFILES, PROFILE_NAMES, type ProfileName, type WorkloadRates, resolveRates, eventsPerSec, payloadBytesPerSec } from './profiles.js';
export { DEFAULT_CONTENT_MIX, ZERO_CONTENT_MIX, type ContentMix } from './content.js';
export { SIM_MEMORY_BYTES_MIN, SIM_MEMORY_BYTES_MAX, UNIT_MS_DEFAULT } from './config.js';
