// A writer of cpio archives in the "newc" format (the SVR4 format without checksums), the one the
// Linux kernel unpacks as an initramfs. Written here because it takes a page: every entry is a
// 110-byte ASCII header of thirteen 8-digit hex fields, its NUL-terminated name padded to 4
// bytes, then its data padded to 4 bytes; a "TRAILER!!!" entry ends the archive. No root is
// needed to make device nodes or files owned by root: the archive only describes them.

/** Longest entry name accepted (the kernel's PATH_MAX). */
const NAME_BYTES_MAX = 4096;
/** Largest file accepted in an archive (an initramfs holds a few megabytes). */
const FILE_BYTES_MAX = 256 * 2 ** 20;

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

/** One entry of an archive: a directory, a regular file, a symbolic link or a character device. */
export type CpioEntry =
  | { kind: 'dir'; name: string; mode?: number }
  | { kind: 'file'; name: string; data: Uint8Array; mode?: number }
  | { kind: 'symlink'; name: string; target: string }
  | { kind: 'char'; name: string; major: number; minor: number; mode?: number };

function hex8(value: number): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`cpio header field ${value} does not fit in 8 hex digits`);
  return value.toString(16).padStart(8, '0');
}

const pad4 = (length: number) => (4 - (length % 4)) % 4;

/** The header, name and data of one entry, each padded as newc requires. */
function entryBytes(ino: number, mode: number, data: Uint8Array, name: string, rdev: { major: number; minor: number } = { major: 0, minor: 0 }): Buffer {
  const nameBytes = Buffer.from(`${name}\0`, 'utf8');
  if (nameBytes.length > NAME_BYTES_MAX) throw new RangeError(`cpio entry name of ${nameBytes.length} bytes, the limit is ${NAME_BYTES_MAX}`);
  if (data.length > FILE_BYTES_MAX) throw new RangeError(`cpio entry '${name}' of ${data.length} bytes, the limit is ${FILE_BYTES_MAX}`);
  const nlink = (mode & 0o170000) === S_IFDIR ? 2 : 1;
  // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
  const fields = [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, rdev.major, rdev.minor, nameBytes.length, 0];
  const header = Buffer.from(`070701${fields.map(hex8).join('')}`, 'ascii');
  return Buffer.concat([header, nameBytes, Buffer.alloc(pad4(header.length + nameBytes.length)), data, Buffer.alloc(pad4(data.length))]);
}

/** The archive of `entries`, in the order given (a directory must come before what it holds). */
export function cpioNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const entry of entries) {
    const name = entry.name.replace(/^\/+/, '');
    if (name === '' || name.split('/').includes('..')) throw new RangeError(`cpio entry name '${entry.name}': expected a relative path without '..'`);
    switch (entry.kind) {
      case 'dir':
        parts.push(entryBytes(ino++, S_IFDIR | (entry.mode ?? 0o755), new Uint8Array(0), name));
        break;
      case 'file':
        parts.push(entryBytes(ino++, S_IFREG | (entry.mode ?? 0o644), entry.data, name));
        break;
      case 'symlink':
        parts.push(entryBytes(ino++, S_IFLNK | 0o777, Buffer.from(entry.target, 'utf8'), name));
        break;
      case 'char':
        parts.push(entryBytes(ino++, S_IFCHR | (entry.mode ?? 0o600), new Uint8Array(0), name, entry));
        break;
    }
  }
  parts.push(entryBytes(0, 0, new Uint8Array(0), 'TRAILER!!!'));
  return Buffer.concat(parts);
}
