// Transport security: mutual TLS between agents and on the Control API, peer identities taken
// from certificates, allowlists, and the one exception (plaintext, on loopback only).
//
// Every connection to an agent is mutual TLS with certificates issued by the configured CA: the
// agent refuses a client whose certificate that CA did not issue during the handshake (the client
// sees UNAVAILABLE, the agent logs it), and refuses a trusted client whose identity is not on the
// allowlist of the service it calls with PERMISSION_DENIED (logged too). An agent dialling a
// target checks the target's certificate the same way: issued by the CA, valid for the address
// dialled, and an identity on the peer allowlist.

import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { BlockList, isIP } from 'node:net';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import type { Logger } from 'pino';
import { echo, PermissionDeniedError } from '../errors.js';
import { grpc, toServiceError } from './grpc.js';

/** PEM files of one side: the CA that issues every agent's and client's certificate, and its own pair. */
export interface TlsFiles {
  ca: string;
  cert: string;
  key: string;
}

/** TLS material read and checked, or null for plaintext (loopback only). */
export interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  /** Identities of this side's own certificate (for logs). */
  identities: string[];
}

/** Who may call what: identities (certificate CN, DNS or URI names), or '*' for any certificate the CA issued. */
export interface Allowlists {
  /** Agents that may migrate guests to this one, and that this one may migrate guests to. */
  peers: string[];
  /** Clients of the Control API (orchestrator, administrators, the CLI). */
  control: string[];
}

/** Thrown for TLS material that cannot be used; `field` names the configuration field. */
export class TlsMaterialError extends Error {
  constructor(
    readonly field: keyof TlsFiles,
    message: string,
  ) {
    super(message);
  }
}

/** Reads the three PEM files and checks that they belong together (the key is the certificate's, the CA issued it). */
export function loadTlsMaterial(files: TlsFiles): TlsMaterial {
  const read = (field: keyof TlsFiles): Buffer => {
    try {
      return readFileSync(files[field]);
    } catch (error) {
      throw new TlsMaterialError(field, `${files[field]}: cannot read it (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
    }
  };
  const ca = read('ca');
  const cert = read('cert');
  const key = read('key');
  const parse = (field: 'ca' | 'cert', pem: Buffer): X509Certificate => {
    try {
      return new X509Certificate(pem);
    } catch (error) {
      throw new TlsMaterialError(field, `${files[field]} is not a PEM certificate: ${(error as Error).message}`);
    }
  };
  const caCert = parse('ca', ca);
  const own = parse('cert', cert);
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (error) {
    throw new TlsMaterialError('key', `${files.key} is not a PEM private key: ${(error as Error).message}`);
  }
  if (!own.checkPrivateKey(privateKey)) throw new TlsMaterialError('key', `${files.key} is not the private key of ${files.cert}`);
  if (!caCert.ca) throw new TlsMaterialError('ca', `${files.ca} is not a CA certificate (basicConstraints CA:FALSE)`);
  if (!own.checkIssued(caCert) || !own.verify(caCert.publicKey)) throw new TlsMaterialError('cert', `${files.cert} was not issued by the CA in ${files.ca}`);
  const now = Date.now();
  if (Date.parse(own.validTo) < now) throw new TlsMaterialError('cert', `${files.cert} expired on ${own.validTo}`);
  if (Date.parse(own.validFrom) > now) throw new TlsMaterialError('cert', `${files.cert} is not valid before ${own.validFrom}`);
  return { ca, cert, key, identities: identitiesOf({ subject: subjectFields(own.subject), subjectaltname: own.subjectAltName ?? '' }) };
}

function subjectFields(subject: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of subject.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

/** A certificate's identities: its subject CN, then its DNS and URI subject alternative names. */
export function identitiesOf(cert: Pick<PeerCertificate, 'subjectaltname'> & { subject?: Partial<Record<string, string | string[]>> }): string[] {
  const out: string[] = [];
  const cn = cert.subject?.CN;
  if (typeof cn === 'string' && cn !== '') out.push(cn);
  else if (Array.isArray(cn)) out.push(...cn);
  for (const entry of (cert.subjectaltname ?? '').split(',')) {
    const m = /^\s*(DNS|URI):(.+?)\s*$/.exec(entry);
    if (m && !out.includes(m[2]!)) out.push(m[2]!);
  }
  return out;
}

/** Whether any of `identities` is on `allow` ('*' admits every identity). */
export function isAllowed(identities: readonly string[], allow: readonly string[]): boolean {
  return allow.includes('*') || identities.some((id) => allow.includes(id));
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/**
 * Whether `host` (a host name or IP address, without port; brackets allowed) is this machine's
 * loopback: 127.0.0.0/8, ::1 (in any spelling, or as IPv4-mapped 127.x), or `localhost`. Other
 * names are not resolved: a name that resolves to loopback today may not tomorrow.
 */
export function isLoopbackHost(host: string): boolean {
  const h = (host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host).toLowerCase().replace(/\.$/, '');
  if (h === 'localhost') return true;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(h);
  if (mapped !== null) return LOOPBACK.check(mapped[1]!, 'ipv4');
  const family = isIP(h);
  if (family === 4) return LOOPBACK.check(h, 'ipv4');
  if (family === 6) return LOOPBACK.check(h, 'ipv6');
  return false;
}

/** The host part of host:port ([v6]:port too). */
export function hostOf(address: string): string {
  const colon = address.lastIndexOf(':');
  return colon < 0 ? address : address.slice(0, colon);
}

/**
 * Who a caller is, for per-peer quotas: the first identity its client certificate names (mutual
 * TLS), or without TLS (plaintext, loopback only) the address it calls from, less its port.
 */
export function peerIdentity(call: Pick<grpc.ServerUnaryCall<unknown, unknown>, 'getPeer' | 'getAuthContext'>): string {
  const cert = call.getAuthContext().sslPeerCertificate;
  const identity = cert === undefined ? undefined : identitiesOf(cert)[0];
  return identity ?? hostOf(call.getPeer());
}

/** Server credentials: mutual TLS requiring a client certificate issued by the CA, or plaintext. */
export function serverCredentials(tls: TlsMaterial | null): grpc.ServerCredentials {
  if (tls === null) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(tls.ca, [{ cert_chain: tls.cert, private_key: tls.key }], true);
}

/**
 * Client credentials for dialling an agent: our certificate, the CA to check the agent's, and,
 * if `allow` is given, a check that the agent's certificate names an allowed identity (on top of
 * the usual check that it is valid for the host dialled).
 */
export function clientCredentials(tls: TlsMaterial | null, allow?: readonly string[]): grpc.ChannelCredentials {
  if (tls === null) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(tls.ca, tls.key, tls.cert, {
    checkServerIdentity(hostname, cert) {
      const wrongHost = checkServerIdentity(hostname, cert);
      if (wrongHost) return wrongHost;
      if (allow !== undefined && !isAllowed(identitiesOf(cert), allow)) {
        return new Error(`the agent at ${hostname} presents identities [${identitiesOf(cert).join(', ')}], none on this agent's peer allowlist (allow.peers)`);
      }
      return undefined;
    },
  });
}

/**
 * Which allowlist guards a method path; null: any client the CA trusts (the health service).
 * Reflection (grpc.reflection.v1 and v1alpha) describes the Control API, so it answers the
 * clients that may call it: said here rather than left to the default below.
 */
export function allowlistOf(path: string, allow: Allowlists): readonly string[] | null {
  if (path.startsWith('/vmmigrate.v1.Migration/')) return allow.peers;
  if (path.startsWith('/grpc.health.v1.Health/')) return null;
  if (path.startsWith('/grpc.reflection.')) return allow.control;
  return allow.control;
}

/**
 * A server interceptor that refuses, with PERMISSION_DENIED, a call whose client certificate
 * names no identity on the allowlist of the service called, and logs the refusal. The TLS
 * handshake already refused certificates the CA did not issue.
 */
export function allowlistInterceptor(allow: Allowlists, log: Logger): grpc.ServerInterceptor {
  return (method, call) =>
    new grpc.ServerInterceptingCall(call, {
      start(next) {
        const allowed = allowlistOf(method.path, allow);
        const cert = call.getAuthContext().sslPeerCertificate;
        const identities = cert ? identitiesOf(cert) : [];
        if (allowed === null || (cert !== undefined && isAllowed(identities, allowed))) {
          next();
          return;
        }
        const list = method.path.startsWith('/vmmigrate.v1.Migration/') ? 'allow.peers' : 'allow.control';
        const details = cert
          ? `client identities [${echo(identities.join(', '))}] are not on this agent's ${list} for ${method.path}`
          : `no client certificate: ${method.path} needs mutual TLS`;
        log.warn({ method: method.path, identities, peer: call.getPeer() }, `refused a call: ${details}`);
        const refusal = toServiceError(
          new PermissionDeniedError(details, { reason: 'SECURITY_REFUSED', metadata: { method: method.path, allowlist: list, identities: identities.join(',') } }),
        );
        next({
          onReceiveMetadata(_metadata, _next) {
            call.sendStatus({ code: grpc.status.PERMISSION_DENIED, details: refusal.message, metadata: refusal.metadata });
          },
        });
      },
    });
}
