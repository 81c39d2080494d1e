// The ids a request names, checked before they are looked up: an id that is empty or longer than
// any id could be is INVALID_ARGUMENT with a field violation, never NOT_FOUND, and is never
// echoed back whole.

import { invalidField } from './errors.js';

/** Longest guest id any driver accepts (the sim driver: 1-64 letters, digits, '.', '_', '-'). */
export const GUEST_ID_CHARS_MAX = 64;
/** Job ids are UUIDs (36 characters); longer than this is no job id. */
export const JOB_ID_CHARS_MAX = 64;

function checkId(id: string, field: string, what: string, charsMax: number): void {
  if (id === '') throw invalidField(field, `${field} is required: the ${what}`);
  if (id.length > charsMax) throw invalidField(field, `${field} of ${id.length} characters is no ${what}: expected at most ${charsMax}`, { length: id.length });
}

/** Refuses an empty or overlong guest id in request field `field` (as named in the .proto). */
export function checkGuestId(id: string, field: string): void {
  checkId(id, field, 'id of a guest', GUEST_ID_CHARS_MAX);
}

/** Refuses an empty or overlong job id in request field `field`. */
export function checkJobId(id: string, field: string): void {
  checkId(id, field, 'id of a job', JOB_ID_CHARS_MAX);
}
