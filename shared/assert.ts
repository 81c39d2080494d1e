// Programmer errors: an invariant that a correct program never breaks. They crash loudly, with
// the values that broke the invariant; they are never caught and turned into a status.

export class AssertionFailure extends Error {
  override name = 'AssertionFailure';
}

export function assert(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) throw new AssertionFailure(typeof message === 'function' ? message() : message);
}
