// Tests that need a program from a Debian package skip, visibly, where it is missing: the skip's
// reason starts with DEBIAN_SKIP_MARKER and names the package. `npm test` counts them as skips;
// .ci/run installs the packages first (its DEBIAN_PACKAGES list) and fails if any test skipped
// with this marker there anyway.

import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** How every such skip's reason begins; .ci/run searches tap's results for it. */
export const DEBIAN_SKIP_MARKER = 'needs Debian package';

/** The path of `executable` on PATH (or in /usr/sbin, /usr/bin), or null. */
export function findExecutable(executable: string): string | null {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter((d) => d !== ''), '/usr/sbin', '/usr/bin'];
  for (const dir of dirs) {
    const path = join(dir, executable);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // not here
    }
  }
  return null;
}

/**
 * A tap `skip` value: false when `executable` is found, else the reason, e.g. "needs Debian
 * package etcd-server (no etcd executable on PATH; apt-get install etcd-server)".
 */
export function skipUnlessDebianPackage(debianPackage: string, executable: string): string | false {
  if (findExecutable(executable) !== null) return false;
  return `${DEBIAN_SKIP_MARKER} ${debianPackage} (no ${executable} executable on PATH; apt-get install ${debianPackage})`;
}
