// The migration methods by name. A method is a module exporting a TransferMethod class; adding
// one is one line here (and its name in shared/stats.ts MigrationMethod).

import { echo, invalidField } from '../../shared/errors.js';
import type { MigrationMethod } from '../../shared/stats.js';
import type { SourceGuest } from '../../shared/driver/types.js';
import { sourceCapabilities } from '../../shared/driver/capabilities.js';
import { CrtrMethod } from './crtr.js';
import type { TransferMethod } from './method.js';
import { PostcopyMethod } from './postcopy.js';
import { PrecopyMethod } from './precopy.js';
import { QemuNativeMethod } from './qemu-native.js';
import type { MigrationRequest } from './method.js';

/** A fresh method for one migration (methods keep per-migration state), with the request's options. */
const METHODS: Record<MigrationMethod, (request?: MigrationRequest) => TransferMethod> = {
  crtr: () => new CrtrMethod(),
  precopy: () => new PrecopyMethod(),
  postcopy: () => new PostcopyMethod(),
  'qemu-native': (request) => new QemuNativeMethod(request?.nativePostcopy === true),
};

export const METHOD_NAMES = Object.keys(METHODS) as MigrationMethod[];

export function isMethodName(name: string): name is MigrationMethod {
  return Object.hasOwn(METHODS, name);
}

/** A new instance of the method `name` for `request`, or InvalidArgumentError (field `method`) naming the known ones. */
export function createMethod(name: string, request?: MigrationRequest): TransferMethod {
  if (!isMethodName(name)) throw invalidField('method', `method '${echo(name)}': expected ${METHOD_NAMES.slice(0, -1).join(', ')} or ${METHOD_NAMES[METHOD_NAMES.length - 1]}`);
  return METHODS[name](request);
}

/** The methods whose guest-side capabilities `guest` has, in registration order (crtr first). */
export function guestMethods(guest: SourceGuest): MigrationMethod[] {
  const have = sourceCapabilities(guest);
  return METHOD_NAMES.filter((name) => METHODS[name]().needs.source.every((c) => have.includes(c)));
}

/**
 * The method a migration of `guest` takes when its request names none: the first of guestMethods;
 * crtr when none fits (its check then says what is missing).
 */
export function defaultMethodFor(guest: SourceGuest): MigrationMethod {
  return guestMethods(guest)[0] ?? 'crtr';
}
