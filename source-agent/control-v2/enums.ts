// The Control API v2's enums against the agents' own names, both ways, written once.

import type { NonConvergencePolicy } from '../../shared/convergence.js';
import type { GuestState } from '../../shared/driver/types.js';
import type { MigrationMethod, MigrationPhase, MigrationStatus } from '../../shared/stats.js';
import { invalidField } from '../../shared/errors.js';
import { pb2 } from '../../shared/transport/grpc.js';
import type { ResolveAction } from '../in-doubt.js';

const METHODS: Record<MigrationMethod, number> = { crtr: pb2.Method.METHOD_CRTR, precopy: pb2.Method.METHOD_PRECOPY, postcopy: pb2.Method.METHOD_POSTCOPY, 'qemu-native': pb2.Method.METHOD_QEMU_NATIVE };

const PHASES: Record<MigrationPhase, number> = {
  'pre-migration': pb2.Phase.PHASE_PRE_MIGRATION,
  reservation: pb2.Phase.PHASE_RESERVATION,
  checkpoint: pb2.Phase.PHASE_CHECKPOINT,
  'log-transfer': pb2.Phase.PHASE_LOG_TRANSFER,
  'stop-and-copy': pb2.Phase.PHASE_STOP_AND_COPY,
  commitment: pb2.Phase.PHASE_COMMITMENT,
  activation: pb2.Phase.PHASE_ACTIVATION,
  'page-push': pb2.Phase.PHASE_PAGE_PUSH,
  done: pb2.Phase.PHASE_DONE,
};

const GUEST_STATES: Record<GuestState, number> = {
  running: pb2.GuestState.GUEST_STATE_RUNNING,
  blocked: pb2.GuestState.GUEST_STATE_BLOCKED,
  suspended: pb2.GuestState.GUEST_STATE_SUSPENDED,
  restoring: pb2.GuestState.GUEST_STATE_RESTORING,
  replica: pb2.GuestState.GUEST_STATE_REPLICA,
  discarded: pb2.GuestState.GUEST_STATE_DISCARDED,
};

const POLICIES: Record<NonConvergencePolicy, number> = {
  abort: pb2.NonConvergencePolicy.NON_CONVERGENCE_POLICY_ABORT,
  force: pb2.NonConvergencePolicy.NON_CONVERGENCE_POLICY_FORCE,
  throttle: pb2.NonConvergencePolicy.NON_CONVERGENCE_POLICY_THROTTLE,
};

function inverse<K extends string>(table: Record<K, number>): Map<number, K> {
  return new Map(Object.entries(table).map(([k, v]) => [v as number, k as K]));
}
const METHOD_NAMES = inverse(METHODS);
const POLICY_NAMES = inverse(POLICIES);

export const methodEnum = (method: MigrationMethod | null): number => (method === null ? pb2.Method.METHOD_UNSPECIFIED : METHODS[method]);
export const phaseEnum = (phase: MigrationPhase): number => PHASES[phase];
export const guestStateEnum = (state: GuestState): number => GUEST_STATES[state];

/** A request's method: '' for UNSPECIFIED (the agent's default), its name otherwise; a value this agent does not know is INVALID_FIELD. */
export function methodName(value: number): string {
  if (value === pb2.Method.METHOD_UNSPECIFIED) return '';
  const name = METHOD_NAMES.get(value);
  if (name === undefined) throw invalidField('method', `method ${value}: expected ${[...METHOD_NAMES.keys()].join(', ')} or 0 for the default`);
  return name;
}

/** A request's policy, as methodName. */
export function policyName(value: number): string {
  if (value === pb2.NonConvergencePolicy.NON_CONVERGENCE_POLICY_UNSPECIFIED) return '';
  const name = POLICY_NAMES.get(value);
  if (name === undefined) throw invalidField('non_convergence_policy', `non_convergence_policy ${value}: expected ${[...POLICY_NAMES.keys()].join(', ')} or 0 for the default`);
  return name;
}

/** A job's state from a source job's status. */
export function jobStateOf(status: MigrationStatus): number {
  switch (status) {
    case 'completed':
      return pb2.JobState.JOB_STATE_SUCCEEDED;
    case 'failed':
      return pb2.JobState.JOB_STATE_FAILED;
    case 'cancelled':
      return pb2.JobState.JOB_STATE_CANCELLED;
    case 'cancelling':
      return pb2.JobState.JOB_STATE_CANCELLING;
    case 'in-doubt':
      return pb2.JobState.JOB_STATE_IN_DOUBT;
    default:
      return pb2.JobState.JOB_STATE_RUNNING;
  }
}

/** The ErrorReason value of a reason name ('' or unknown: UNSPECIFIED). */
export function errorReasonEnum(reason: string): number {
  const value = (pb2.ErrorReason as unknown as Record<string, number>)[reason];
  return typeof value === 'number' ? value : pb2.ErrorReason.ERROR_REASON_UNSPECIFIED;
}

const RESOLVE_ACTIONS: Record<number, ResolveAction> = {
  [pb2.ResolveAction.RESOLVE_ACTION_UNSPECIFIED]: 'query',
  [pb2.ResolveAction.RESOLVE_ACTION_QUERY]: 'query',
  [pb2.ResolveAction.RESOLVE_ACTION_RESUME_HERE]: 'resume-here',
  [pb2.ResolveAction.RESOLVE_ACTION_DISCARD_HERE]: 'discard-here',
};

/** A ResolveJob action; a value this agent does not know is INVALID_FIELD. */
export function resolveActionName(value: number): ResolveAction {
  const action = RESOLVE_ACTIONS[value];
  if (action === undefined) throw invalidField('action', `action ${value}: expected 1 (query), 2 (resume here) or 3 (discard here)`);
  return action;
}
