// What --json prints: the Control API v2's messages as they are, enum values by name, as
// protobufjs's toObject would give them (the generated code has none: pbjs runs with --no-convert).

import { pb2 } from '../shared/transport/grpc.js';

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
type JsonObject = { [key: string]: JsonValue };
type EnumNames = Readonly<Record<number, string>>;

/**
 * The enum fields of each message --json prints, by message class. The generated code has no
 * toObject (pbjs runs with --no-convert), and without reflection a message does not say which of
 * its numbers are enums: this table does.
 */
const ENUM_FIELDS = new Map<unknown, Readonly<Record<string, EnumNames>>>([
  [pb2.Guest, { state: pb2.GuestState, role: pb2.GuestRole }],
  [pb2.Capacity, { methods: pb2.Method }],
  [pb2.Job, { role: pb2.JobRole, method: pb2.Method, state: pb2.JobState, phase: pb2.Phase, phasesPassed: pb2.Phase, errorReason: pb2.ErrorReason }],
  [pb2.EstimateMigrationResponse, { recommendedMethod: pb2.Method }],
  [pb2.MethodEstimate, { method: pb2.Method }],
  [pb2.GuestMeasurements, { dirtySource: pb2.InputSource, busySource: pb2.InputSource, logSource: pb2.InputSource }],
  [pb2.LinkMeasurements, { bandwidthSource: pb2.InputSource }],
  [pb2.Protection, { role: pb2.ProtectionRole, state: pb2.ProtectionState, mode: pb2.ProtectionMode }],
]);

/**
 * A decoded message as protobufjs's `toObject(message, { enums: String, longs: Number, defaults:
 * true })` would give it: every field in .proto order, defaults included, 64-bit integers as
 * numbers, enum values by name (a number this CLI does not know stays a number). Message fields
 * not set are left out: of a oneof, only the member that is set shows (a job has `source` or
 * `target`).
 */
export function messageJson(message: object): JsonObject {
  const prototype = Object.getPrototypeOf(message) as object;
  const generated = prototype !== Object.prototype && prototype !== null;
  // The generated classes keep every field's default on the prototype, in .proto order; the
  // oneof names (`view`, `workload`) are accessors there, not enumerable.
  const keys = generated ? Object.keys(prototype) : Object.keys(message);
  const enums = ENUM_FIELDS.get(message.constructor) ?? {};
  const out: JsonObject = {};
  for (const key of keys) {
    const value = (message as Record<string, unknown>)[key];
    if (value === null || value === undefined || typeof value === 'function') continue;
    out[key] = valueJson(value, enums[key]);
  }
  return out;
}

function valueJson(value: unknown, names: EnumNames | undefined): JsonValue {
  if (Array.isArray(value)) return value.map((v) => valueJson(v, names));
  if (typeof value === 'number') return names !== undefined ? (names[value] ?? value) : value;
  if (typeof value === 'string' || typeof value === 'boolean') return value;
  if (ArrayBuffer.isView(value)) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64');
  if (typeof value === 'object' && value !== null) {
    // A map field is a plain object; a nested message is an instance of its generated class.
    if (Object.getPrototypeOf(value) !== Object.prototype) return messageJson(value);
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, valueJson(v, undefined)]));
  }
  return String(value);
}

