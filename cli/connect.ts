// How a client reaches an agent's Control service (Control API v2): the agent's address, its
// credentials, the client. The Control API starts, moves and stops guests, so it is spoken over mutual TLS; the
// one exception is an agent on this host reached over loopback (development, tests), where
// `plaintext` is allowed because no one else is on the wire. Kept apart from the commands so that
// other tools (an orchestrator, the bench) connect the same way.

import { isIP } from 'node:net';
import { InvalidArgumentError } from '../shared/errors.js';
import { controlServiceV2, grpc, makeClient } from '../shared/transport/grpc.js';
import { clientCredentials, isLoopbackHost, loadTlsMaterial, TlsMaterialError } from '../shared/transport/tls.js';

/** The source agent's default listening address (cli/agent.ts). */
export const AGENT_ADDRESS_DEFAULT = '127.0.0.1:7400';

export interface ConnectionOptions {
  /** host:port, or [ipv6]:port. */
  agent: string;
  /** PEM files for mutual TLS: the CA that signed the agent's certificate, and this client's certificate and key. */
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  /** No TLS; refused unless the agent's address is loopback. */
  plaintext?: boolean;
}

const TLS_HOW = 'pass --tls-ca FILE --tls-cert FILE --tls-key FILE (or set VMMIGRATE_TLS_CA, VMMIGRATE_TLS_CERT, VMMIGRATE_TLS_KEY)';

/** Splits `host:port` (`[::1]:7400` for IPv6); throws InvalidArgumentError naming what is wrong. */
export function parseAddress(address: string): { host: string; port: number } {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(address);
  const port = Number(match?.[3]);
  if (match === null || port < 1 || port > 65535) {
    throw new InvalidArgumentError(`address '${address}': expected host:port (e.g. 127.0.0.1:7400, agent1.example:7400, [::1]:7400)`);
  }
  const host = match[1] ?? match[2];
  if (match[1] !== undefined && isIP(host) !== 6) throw new InvalidArgumentError(`address '${address}': '${host}' in brackets is not an IPv6 address`);
  return { host, port };
}

/** Whether `host` is this machine's loopback (see isLoopbackHost: names are not resolved). */
export const isLoopback = isLoopbackHost;

/**
 * The channel credentials `options` ask for: mutual TLS from the three PEM files, or plaintext
 * to a loopback agent. Throws InvalidArgumentError (a configuration error the user must fix)
 * before anything is dialled: plaintext to a non-loopback address, both or neither of TLS and
 * plaintext, a missing or unreadable file.
 */
export function credentialsFrom(options: ConnectionOptions): grpc.ChannelCredentials {
  const { host } = parseAddress(options.agent);
  const files = { '--tls-ca': options.tlsCa, '--tls-cert': options.tlsCert, '--tls-key': options.tlsKey };
  const given = Object.entries(files).filter(([, file]) => file !== undefined && file !== '');
  if (options.plaintext) {
    if (given.length > 0) {
      throw new InvalidArgumentError(`both --plaintext and ${given.map(([flag]) => flag).join(', ')} are set (flags or VMMIGRATE_TLS_* variables); choose one`);
    }
    if (!isLoopback(host)) {
      throw new InvalidArgumentError(
        `--plaintext is refused for ${options.agent}: without TLS anyone on the network can read and forge the commands that move guests, so plaintext is allowed only to a loopback agent (127.0.0.0/8, ::1, localhost); ${TLS_HOW}`,
      );
    }
    return grpc.credentials.createInsecure();
  }
  if (given.length === 0) {
    throw new InvalidArgumentError(`no credentials for the agent at ${options.agent}: ${TLS_HOW} for mutual TLS, or --plaintext if the agent listens on this host's loopback`);
  }
  if (given.length < 3) {
    const missing = Object.entries(files)
      .filter(([, file]) => file === undefined || file === '')
      .map(([flag]) => flag);
    throw new InvalidArgumentError(`mutual TLS needs all three files; missing ${missing.join(' and ')} (or its VMMIGRATE_TLS_* variable)`);
  }
  // The agents' own loader: the same checks (readable PEM files, the key is the certificate's, the
  // CA issued it) with the flag named.
  try {
    return clientCredentials(loadTlsMaterial({ ca: options.tlsCa!, cert: options.tlsCert!, key: options.tlsKey! }));
  } catch (error) {
    if (!(error instanceof TlsMaterialError)) throw error;
    throw new InvalidArgumentError(`--tls-${error.field} ${error.message}`, { cause: error });
  }
}

export type ControlClient = ReturnType<typeof makeClient<typeof controlServiceV2>>;

/** A Control v2 client of the agent in `options`; nothing is dialled until the first call. */
export function controlClient(options: ConnectionOptions): ControlClient {
  return makeClient(controlServiceV2, 'Control', options.agent, credentialsFrom(options));
}
