// gRPC server reflection (grpc.reflection.v1 and v1alpha, from @grpc/reflection) on an agent's
// server, so that grpcurl, Postman and the like can list the agent's services and call them
// without the .proto files.
//
// Reflection describes what it was given, not what the server serves: the files in
// proto/files.txt (the same list the protocol code is generated from), the health service's and
// its own, with their descriptors as protoc writes them (descriptors.ts). The reflection service
// is guarded like the Control API it describes (tls.ts).

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadSync, type PackageDefinition } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { asProtocWritesThem } from './descriptors.js';
import type { grpc } from './grpc.js';

/** The project's proto/ folder. This module runs compiled, from dist/shared/transport/. */
export const PROTO_DIR = fileURLToPath(new URL('../../../proto/', import.meta.url));

const require = createRequire(import.meta.url);
/** Where the health service's and the reflection service's own .proto files are installed. */
const HEALTH_PROTO_DIR = join(dirname(require.resolve('grpc-health-check/package.json')), 'proto');
const REFLECTION_PROTO_DIR = join(dirname(require.resolve('@grpc/reflection/package.json')), 'build', 'proto');

/** The files the agents speak, relative to proto/: proto/files.txt, whose comments start with '#'. */
export function agentProtoFiles(protoDir = PROTO_DIR): string[] {
  return readFileSync(join(protoDir, 'files.txt'), 'utf8')
    .split('\n')
    .map((line) => line.replace(/#.*/, '').trim())
    .filter((line) => line !== '');
}

/** Every file reflection describes: the agents' files, the health service and reflection itself. */
export function loadReflectedProtos(): PackageDefinition {
  const files = [...agentProtoFiles(), 'health/v1/health.proto', 'grpc/reflection/v1/reflection.proto', 'grpc/reflection/v1alpha/reflection.proto'];
  // keepCase: field names as the .proto files spell them (guest_id), as protoc would describe them;
  // the definition serves only to describe, never to encode.
  return asProtocWritesThem(loadSync(files, { keepCase: true, includeDirs: [PROTO_DIR, HEALTH_PROTO_DIR, REFLECTION_PROTO_DIR] }));
}

let reflection: ReflectionService | null = null;

/** Adds the reflection service to `server`. The .proto files are read once per process. */
export function addReflectionService(server: grpc.Server): void {
  reflection ??= new ReflectionService(loadReflectedProtos());
  reflection.addToServer(server);
}
