// The details every error carries on the wire: the standard google.rpc.Status, serialized in the
// grpc-status-details-bin trailer, with an ErrorInfo (reason, domain, metadata) and, when request
// fields were at fault, a BadRequest. Encoded by the server side (toServiceError), decoded by the
// client side (fromServiceError), both in grpc.ts.

import type * as grpc from '@grpc/grpc-js';
import { DETAILS_ENTRIES_MAX, type ErrorReason, type FieldViolation, InvalidArgumentError, VmMigrateError } from '../errors.js';
import { google, vmmigrate } from '../proto/generated.js';

const rpc = google.rpc;

/** Why an error happened, as google.rpc.ErrorInfo and BadRequest carry it. */
export interface ErrorDetails {
  reason?: ErrorReason;
  metadata?: Record<string, string>;
  fieldViolations?: FieldViolation[];
}

/** The trailer that carries google.rpc.Status (binary: grpc-js base64-encodes it). */
export const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
/** ErrorInfo.domain of every error this project sends. */
export const ERROR_DOMAIN = 'vmmigrate';
const ERROR_INFO_TYPE_URL = 'type.googleapis.com/google.rpc.ErrorInfo';
const BAD_REQUEST_TYPE_URL = 'type.googleapis.com/google.rpc.BadRequest';

/** The reason, metadata and field violations of `error`; INTERNAL_ERROR for anything not an operating error. */
export function detailsOf(error: unknown): Required<ErrorDetails> {
  if (!(error instanceof VmMigrateError)) return { reason: 'INTERNAL_ERROR', metadata: {}, fieldViolations: [] };
  const fieldViolations = error instanceof InvalidArgumentError ? [...error.fieldViolations] : [];
  return { reason: error.reason, metadata: { ...error.metadata }, fieldViolations };
}

/**
 * The google.rpc.Status of `error`, serialized: code, message, and as details an ErrorInfo
 * (reason, domain, metadata) and, if fields were at fault, a BadRequest.
 */
export function encodeStatus(code: grpc.status, message: string, details: ErrorDetails): Buffer {
  const errorInfo = rpc.ErrorInfo.create({ reason: details.reason ?? 'INTERNAL_ERROR', domain: ERROR_DOMAIN, metadata: details.metadata ?? {} });
  const any = [google.protobuf.Any.create({ type_url: ERROR_INFO_TYPE_URL, value: rpc.ErrorInfo.encode(errorInfo).finish() })];
  if (details.fieldViolations !== undefined && details.fieldViolations.length > 0) {
    const badRequest = rpc.BadRequest.create({ fieldViolations: details.fieldViolations.map((v) => ({ field: v.field, description: v.description })) });
    any.push(google.protobuf.Any.create({ type_url: BAD_REQUEST_TYPE_URL, value: rpc.BadRequest.encode(badRequest).finish() }));
  }
  return Buffer.from(rpc.Status.encode(rpc.Status.create({ code, message, details: any })).finish());
}

/**
 * What a serialized google.rpc.Status says of the error: the ErrorInfo of this project's domain
 * (a reason this build does not know is left out) and the BadRequest's field violations.
 * Undecodable bytes say nothing.
 */
export function decodeStatus(bytes: Uint8Array): ErrorDetails {
  let status: InstanceType<typeof rpc.Status>;
  try {
    status = rpc.Status.decode(bytes);
  } catch {
    return {};
  }
  const out: ErrorDetails = {};
  for (const any of status.details) {
    try {
      if (any.type_url === ERROR_INFO_TYPE_URL) {
        const info = rpc.ErrorInfo.decode(any.value ?? new Uint8Array(0));
        if (info.domain !== ERROR_DOMAIN) continue;
        if (isErrorReason(info.reason)) out.reason = info.reason;
        out.metadata = Object.fromEntries(Object.entries(info.metadata).slice(0, DETAILS_ENTRIES_MAX));
      } else if (any.type_url === BAD_REQUEST_TYPE_URL) {
        const violations = rpc.BadRequest.decode(any.value ?? new Uint8Array(0)).fieldViolations;
        out.fieldViolations = violations.slice(0, DETAILS_ENTRIES_MAX).map((v) => ({ field: v.field ?? '', description: v.description ?? '' }));
      }
    } catch {
      // A detail that does not decode is skipped; the status code and message still stand.
    }
  }
  return out;
}

/** Whether `name` names a vmmigrate.v2.ErrorReason this build knows. */
export function isErrorReason(name: string): name is ErrorReason {
  return name !== 'ERROR_REASON_UNSPECIFIED' && Object.hasOwn(vmmigrate.v2.ErrorReason, name) && typeof (vmmigrate.v2.ErrorReason as unknown as Record<string, unknown>)[name] === 'number';
}

/** The details in the grpc-status-details-bin trailer of `metadata`, if any. */
export function detailsFromMetadata(metadata: grpc.Metadata | undefined): ErrorDetails {
  const value = metadata?.get(STATUS_DETAILS_KEY)[0];
  return value instanceof Uint8Array ? decodeStatus(value) : {};
}

