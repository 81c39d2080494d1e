// Names the simulation gives its parts.

/** The source, as the target's per-peer quotas name it (one source in a simulation). */
export const SIM_SOURCE_PEER = 'ipv4:127.0.0.1:40000';
