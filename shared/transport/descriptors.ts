// File descriptors as protoc writes them, for the reflection service.
//
// proto-loader builds the descriptors that reflection serves with protobufjs, which writes them
// differently from protoc in two ways that grpcurl and Postman refuse (grpcurl checks each file
// with Go's protodesc, as protoc would):
// - a map field's entry type is named after the field with its first letter raised (`Rates`),
//   where protoc names it `RatesEntry`: grpcurl says "incorrect implicit map entry name"
//   (fullstorydev/grpcurl#519), Postman "no such Type or Enum '.Foo.BarEntry'";
// - every file's `dependency` list is empty (grpc/grpc-node#2595), and a client links a file only
//   against the files it lists, so a file that refers to another package's type (google.rpc.Status
//   to google.protobuf.Any) cannot be read.
// proto-loader also merges the files of one package into one (vmmigrate_v2.proto): the names it
// gives stay, and the lists name them.

import type { AnyDefinition, PackageDefinition, ServiceDefinition } from '@grpc/proto-loader';
import descriptor from 'protobufjs/ext/descriptor.js';
import { assert } from '../assert.js';

type FileDescriptor = descriptor.IFileDescriptorProto;
type MessageDescriptor = descriptor.IDescriptorProto;

/** `definition` with every file descriptor in it named and linked as protoc does. */
export function asProtocWritesThem(definition: PackageDefinition): PackageDefinition {
  const files = new Map<string, FileDescriptor>();
  const nameOf = new Map<Buffer, string>();
  for (const entry of Object.values(definition).filter(isType)) {
    for (const bytes of entry.fileDescriptorProtos) {
      const file = descriptor.FileDescriptorProto.decode(bytes) as FileDescriptor;
      assert(file.name, 'proto-loader names every file');
      nameOf.set(bytes, file.name);
      if (!files.has(file.name)) files.set(file.name, file);
    }
  }
  for (const file of files.values()) for (const message of file.messageType ?? []) nameMapEntries(message);
  linkDependencies(files);
  const encoded = new Map([...files].map(([name, file]) => [name, Buffer.from(descriptor.FileDescriptorProto.encode(file).finish())]));
  // Reflection reads the files of the message and enum definitions; a service's are its methods'.
  return Object.fromEntries(
    Object.entries(definition).map(([name, entry]) => [name, isType(entry) ? { ...entry, fileDescriptorProtos: entry.fileDescriptorProtos.map((bytes) => encoded.get(nameOf.get(bytes)!)!) } : entry]),
  );
}

/** A message or enum definition (a service's is a record of methods). */
function isType(entry: AnyDefinition): entry is Exclude<AnyDefinition, ServiceDefinition> {
  return typeof entry.format === 'string';
}

/** protoc's name for the entry type of map field `field`: rates → RatesEntry, data_map → DataMapEntry. */
export function mapEntryName(field: string): string {
  return `${field.split('_').filter((part) => part !== '').map((part) => part[0]!.toUpperCase() + part.slice(1)).join('')}Entry`;
}

/** Renames the map entry types of `message` and of the messages in it, and the fields' references to them. */
function nameMapEntries(message: MessageDescriptor): void {
  const entries = (message.nestedType ?? []).filter((nested) => nested.options?.mapEntry);
  for (const entry of entries) {
    // protobufjs refers to an entry type by its bare name, from the message that holds it.
    const fields = (message.field ?? []).filter((field) => field.typeName === entry.name);
    assert(fields.length === 1, () => `${message.name}: ${fields.length} fields refer to map entry type ${entry.name}, one expected`);
    entry.name = mapEntryName(fields[0]!.name!);
    fields[0]!.typeName = entry.name;
  }
  for (const nested of message.nestedType ?? []) nameMapEntries(nested);
}

/** Sets each file's `dependency` list: the other files that define a type it refers to. */
function linkDependencies(files: ReadonlyMap<string, FileDescriptor>): void {
  const fileOf = new Map<string, string>();
  for (const [name, file] of files) walk(file, { define: (type) => fileOf.set(type, name), refer: () => {} });
  for (const [name, file] of files) {
    assert((file.dependency ?? []).length === 0, () => `${name} lists its dependencies already: proto-loader fills them in now, so linkDependencies can go`);
    const referred = new Set<string>();
    walk(file, { define: () => {}, refer: (type, scope) => referred.add(fileDefining(type, scope, fileOf, name)) });
    file.dependency = [...referred].filter((dependency) => dependency !== name).sort();
  }
}

interface Walker {
  /** A message or enum, by its fully qualified name without the leading dot (google.rpc.Status). */
  define(type: string): void;
  /** A field's or method's type as written (`.google.protobuf.Any`, or relative: `RatesEntry`), and the scope it is written in. */
  refer(type: string, scope: string): void;
}

/** Visits the messages and enums a file defines, and the types its fields and methods refer to. */
function walk(file: FileDescriptor, walker: Walker): void {
  const pkg = file.package ?? '';
  const qualified = (scope: string, name: string) => (scope === '' ? name : `${scope}.${name}`);
  const fields = (list: descriptor.IFieldDescriptorProto[] | undefined, scope: string) => {
    for (const field of list ?? []) if (field.typeName) walker.refer(field.typeName, scope);
  };
  const message = (m: MessageDescriptor, scope: string): void => {
    const name = qualified(scope, m.name!);
    walker.define(name);
    fields(m.field, name);
    fields(m.extension, name);
    for (const nested of m.nestedType ?? []) message(nested, name);
    for (const e of m.enumType ?? []) walker.define(qualified(name, e.name!));
  };
  for (const m of file.messageType ?? []) message(m, pkg);
  for (const e of file.enumType ?? []) walker.define(qualified(pkg, e.name!));
  fields(file.extension, pkg);
  for (const service of file.service ?? []) {
    const scope = qualified(pkg, service.name!);
    for (const method of service.method ?? []) {
      walker.refer(method.inputType!, scope);
      walker.refer(method.outputType!, scope);
    }
  }
}

/**
 * The file that defines `type` as written in `scope`: a name with a leading dot is fully
 * qualified; any other is looked up in `scope`, then in each enclosing scope, as protoc does.
 */
function fileDefining(type: string, scope: string, fileOf: ReadonlyMap<string, string>, referrer: string): string {
  const candidates = type.startsWith('.') ? [type.slice(1)] : enclosingScopes(scope).map((s) => (s === '' ? type : `${s}.${type}`));
  const found = candidates.map((name) => fileOf.get(name)).find((file) => file !== undefined);
  assert(found !== undefined, () => `${referrer}: no file defines the type '${type}' referred to in ${scope} (proto-loader loaded it, so it exists)`);
  return found;
}

/** 'a.b.C' → ['a.b.C', 'a.b', 'a', '']. */
function enclosingScopes(scope: string): string[] {
  const parts = scope === '' ? [] : scope.split('.');
  return parts.map((_, i) => parts.slice(0, parts.length - i).join('.')).concat('');
}
