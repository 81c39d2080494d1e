// The `arbiter` section of the agent's configuration (shared/config.ts): none (the default:
// failover is manual), etcd (a cluster both sites reach), or memory (agents in one process only:
// tests and demos). deploy/agent.example.yaml and docs/deploy.md describe it.

import { z } from 'zod';
import { KEY_PREFIX_DEFAULT } from './core.js';
import { HOLDER_CHARS_MAX, KEY_PREFIX_CHARS_MAX } from './types.js';

/** Most etcd endpoints listed (a cluster has 3 to 7 members). */
export const ENDPOINTS_MAX = 16;
export const ARBITER_LEASE_TTL_MS_DEFAULT = 2000;
export const ARBITER_DIAL_TIMEOUT_MS_DEFAULT = 5000;
export const ARBITER_CALL_TIMEOUT_MS_DEFAULT = 1000;

const int = (min: number, max: number) => z.number().int().min(min).max(max);

const endpoint = z.string().refine((v) => {
  const match = /^(https?):\/\/([^/\s]+):(\d{1,5})$/.exec(v);
  return match !== null && Number(match[3]) >= 1 && Number(match[3]) <= 65535;
}, 'expected an etcd client URL, http://host:port or https://host:port');

const keyPrefix = z
  .string()
  .max(KEY_PREFIX_CHARS_MAX)
  .regex(/^\/[A-Za-z0-9._\/-]*[A-Za-z0-9._-]$/, "expected '/' and a path of letters, digits, '.', '_', '-', '/', not ending in '/'");

const leaseTtlMs = int(1000, 600_000).refine((v) => v % 1000 === 0, 'etcd leases last whole seconds: expected a multiple of 1000');

const holderFields = {
  /** This agent's name in the records; unique among the agents sharing the key prefix. Default: set by the agent. */
  holderId: z.string().min(1).max(HOLDER_CHARS_MAX).optional(),
  /** A label for people: where this agent runs. Default: the holder id. */
  site: z.string().min(1).max(HOLDER_CHARS_MAX).optional(),
};

const etcdSection = z.strictObject({
  kind: z.literal('etcd'),
  endpoints: z
    .array(endpoint, { error: (issue) => (issue.input === undefined ? 'required with kind etcd: the client URLs of the etcd cluster (http://host:2379, ...)' : undefined) })
    .min(1, 'list at least one etcd client URL')
    .max(ENDPOINTS_MAX),
  leaseTtlMs: leaseTtlMs.default(ARBITER_LEASE_TTL_MS_DEFAULT),
  keyPrefix: keyPrefix.default(KEY_PREFIX_DEFAULT),
  dialTimeoutMs: int(100, 60_000).default(ARBITER_DIAL_TIMEOUT_MS_DEFAULT),
  callTimeoutMs: int(50, 60_000).default(ARBITER_CALL_TIMEOUT_MS_DEFAULT),
  ...holderFields,
  tls: z
    .strictObject({
      ca: z.string().min(1),
      cert: z.string().min(1).optional(),
      key: z.string().min(1).optional(),
    })
    .optional(),
});

const memorySection = z.strictObject({
  kind: z.literal('memory'),
  leaseTtlMs: int(100, 600_000).default(ARBITER_LEASE_TTL_MS_DEFAULT),
  keyPrefix: keyPrefix.default(KEY_PREFIX_DEFAULT),
  ...holderFields,
});

export const arbiterConfigSchema = z
  .discriminatedUnion('kind', [z.strictObject({ kind: z.literal('none') }), etcdSection, memorySection], {
    error: "expected kind: none, etcd or memory",
  })
  .superRefine((section, ctx) => {
    if (section.kind !== 'etcd') return;
    const secure = section.endpoints.filter((e) => e.startsWith('https://')).length;
    if (secure > 0 && secure < section.endpoints.length) ctx.addIssue({ code: 'custom', path: ['endpoints'], message: 'mixes http:// and https:// endpoints; use one scheme' });
    if (secure > 0 && !section.tls) ctx.addIssue({ code: 'custom', path: ['tls'], message: 'https:// endpoints need tls.ca (and tls.cert, tls.key for client certificates)' });
    if (section.tls && secure === 0) ctx.addIssue({ code: 'custom', path: ['endpoints'], message: 'tls is set but the endpoints are http://; use https://' });
    if (section.tls && (section.tls.cert === undefined) !== (section.tls.key === undefined)) ctx.addIssue({ code: 'custom', path: ['tls', section.tls.cert ? 'key' : 'cert'], message: 'tls.cert and tls.key go together' });
  })
  .default({ kind: 'none' });

export type ArbiterConfig = z.output<typeof arbiterConfigSchema>;
