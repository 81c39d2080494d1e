// What a `sim` machine is: carried as the opaque `machineConfig` of a guest description, so that
// a target builds an identical machine. Boot-time content is not part of it: a replica gets its
// memory from the checkpoint.

import { CorruptDataError, echo, invalidField } from '../../errors.js';
import { PAGE_BYTES, UNIT_MS_DEFAULT, UNIT_MS_MAX, UNIT_MS_MIN } from '../types.js';
import { isProfileName, type PayloadKind, type ProfileName, resolveRates, type WorkloadRates } from './profiles.js';

export const SIM_MEMORY_BYTES_MIN = 64 * 1024 * 1024;
export const SIM_MEMORY_BYTES_MAX = 64 * 1024 * 1024 * 1024;
export { UNIT_MS_DEFAULT, UNIT_MS_MAX, UNIT_MS_MIN };

export interface SimMachineConfig {
  readonly profile: ProfileName;
  readonly rates: Readonly<WorkloadRates>;
  readonly payload: PayloadKind;
  readonly memoryBytes: number;
  readonly unitMs: number;
}

/** `field`: the request field refused if out of range (StartGuestRequest's by default). */
export function checkMemoryBytes(memoryBytes: number, field = 'memory_bytes'): void {
  if (!Number.isSafeInteger(memoryBytes) || memoryBytes < SIM_MEMORY_BYTES_MIN || memoryBytes > SIM_MEMORY_BYTES_MAX || memoryBytes % (2 * 1024 * 1024) !== 0) {
    throw invalidField(field, `guest memory of ${memoryBytes} bytes: expected a multiple of 2 MiB from ${SIM_MEMORY_BYTES_MIN / 2 ** 20} MiB to ${SIM_MEMORY_BYTES_MAX / 2 ** 30} GiB`);
  }
}

export function checkUnitMs(unitMs: number, field = 'unit_ms'): void {
  if (!Number.isInteger(unitMs) || unitMs < UNIT_MS_MIN || unitMs > UNIT_MS_MAX) {
    throw invalidField(field, `unit length ${unitMs} ms: expected an integer from ${UNIT_MS_MIN} to ${UNIT_MS_MAX} ms`);
  }
}

/** The request field a machine configuration travels in (ReserveRequest). */
const MACHINE_CONFIG_FIELD = 'guest.machine_config';

export function encodeMachineConfig(config: SimMachineConfig): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ v: 1, ...config }));
}

/** Parses and checks a machine configuration received from a peer. */
export function decodeMachineConfig(bytes: Uint8Array): SimMachineConfig {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (error) {
    throw new CorruptDataError(`sim machine configuration is not valid JSON: ${echo((error as Error).message)}`, { cause: error });
  }
  const c = parsed as Partial<SimMachineConfig> & { v?: number };
  if (typeof c !== 'object' || c === null || c.v !== 1) throw new CorruptDataError(`sim machine configuration version ${String(c?.v)} is not supported (expected 1)`);
  if (typeof c.profile !== 'string' || !isProfileName(c.profile)) throw invalidField(MACHINE_CONFIG_FIELD, `sim machine configuration: unknown profile '${echo(String(c.profile))}'`);
  if (c.payload !== 'text' && c.payload !== 'random' && c.payload !== 'mixed') {
    throw invalidField(MACHINE_CONFIG_FIELD, `sim machine configuration: unknown payload kind '${echo(String(c.payload))}'`);
  }
  checkMemoryBytes(Number(c.memoryBytes), MACHINE_CONFIG_FIELD);
  checkUnitMs(Number(c.unitMs), MACHINE_CONFIG_FIELD);
  const rates = resolveRates(c.profile, (c.rates ?? {}) as Partial<WorkloadRates>, MACHINE_CONFIG_FIELD);
  return { profile: c.profile, rates, payload: c.payload, memoryBytes: Number(c.memoryBytes), unitMs: Number(c.unitMs) };
}

export function summarizeConfig(config: SimMachineConfig): string {
  return `sim ${config.profile}, ${config.memoryBytes / 2 ** 20} MiB, ${config.unitMs} ms units, ${config.memoryBytes / PAGE_BYTES} pages`;
}
