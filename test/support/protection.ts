// What the protection tests share: a Control v2 client closed when the test ends, GetProtection,
// and a poll of it until a condition holds.
import type { Test } from 'tap';
import { controlServiceV2, grpc, makeClient, pb2, unary } from '../../shared/transport/grpc.js';
import { sleep } from './agents.js';

export type Protection = InstanceType<typeof pb2.Protection>;

/** A Control v2 client of the agent at `address`, closed when `t` ends. */
export function v2Client(t: Test, address: string): grpc.Client {
  const client = makeClient(controlServiceV2, 'Control', address, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  return client;
}

export function getProtection(c: grpc.Client, guestId: string): Promise<Protection> {
  return unary(c, controlServiceV2.getProtection, pb2.GetProtectionRequest.create({ guestId }), 10_000, 'get protection');
}

/** Polls GetProtection (an error counts as not yet) until `ok` holds; throws after `timeoutMs` saying what it last saw. */
export async function untilProtection(c: grpc.Client, guestId: string, ok: (p: Protection) => boolean, what: string, timeoutMs = 60_000): Promise<Protection> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = await getProtection(c, guestId).catch(() => null);
    if (p !== null && ok(p)) return p;
    if (Date.now() > deadline) throw new Error(`${what}: not after ${timeoutMs} ms (${p === null ? 'no protection' : `${pb2.ProtectionState[p.state]}: ${p.detail}`})`);
    await sleep(50);
  }
}
