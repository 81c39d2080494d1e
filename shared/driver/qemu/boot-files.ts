// What a guest's boot files hold: the size and SHA-256 of its kernel and initramfs, as its QEMU
// read them. QEMU's migration stream carries the guest's memory and devices, not the files it
// booted, yet the target's QEMU must boot the same ones (their ROMs and the kernel's setup data
// must match the stream): the source's guest carries these digests in its machine description,
// and a target compares them with its own files' before it starts a QEMU. Paths may differ between
// hosts; contents may not.

import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { echo, InvalidStateError } from '../../errors.js';
import type { BootFileDigests, FileDigest, QemuBoot } from './args.js';

/** Read in pieces of this size: a boot file is never held whole. */
const READ_BYTES = 1024 * 1024;
/** Boot files past this size are refused (a kernel is a few MiB, an initramfs tens). */
export const BOOT_FILE_BYTES_MAX = 4 * 2 ** 30;
/** Files hashed are remembered by identity (device, inode, size, modification time): at most this many. */
const CACHE_ENTRIES_MAX = 64;

const cache = new Map<string, { key: string; digest: FileDigest }>();

/** The size and SHA-256 of the file at `path`, hashed again only when the file changed. */
export function fileDigest(path: string): FileDigest {
  const stats = statSync(path);
  if (!stats.isFile()) throw new Error(`${path} is not a regular file`);
  if (stats.size > BOOT_FILE_BYTES_MAX) throw new Error(`${path} is ${stats.size} bytes, more than a boot file's ${BOOT_FILE_BYTES_MAX}`);
  const key = `${stats.dev}:${stats.ino}:${stats.size}:${stats.mtimeMs}`;
  const known = cache.get(path);
  if (known?.key === key) return known.digest;
  const hash = createHash('sha256');
  const buffer = Buffer.allocUnsafe(READ_BYTES);
  const fd = openSync(path, 'r');
  let bytes = 0;
  try {
    for (let n = readSync(fd, buffer, 0, READ_BYTES, null); n > 0; n = readSync(fd, buffer, 0, READ_BYTES, null)) {
      hash.update(buffer.subarray(0, n));
      bytes += n;
    }
  } finally {
    closeSync(fd);
  }
  const digest = { bytes, sha256: hash.digest('hex') };
  if (cache.size >= CACHE_ENTRIES_MAX) cache.delete(cache.keys().next().value!);
  cache.set(path, { key, digest });
  return digest;
}

/** The digests of `boot`'s files as they are now; undefined for a disk boot. */
export function bootFileDigests(boot: QemuBoot): BootFileDigests | undefined {
  if (boot.kind !== 'kernel') return undefined;
  return { kernel: fileDigest(boot.kernel), ...(boot.initrd === undefined ? {} : { initrd: fileDigest(boot.initrd) }) };
}

/** Whether `value` has the shape of BootFileDigests (it comes from a peer). */
export function isBootFileDigests(value: unknown): value is BootFileDigests {
  const digest = (d: unknown) => {
    const f = d as Partial<FileDigest> | null;
    return f !== null && typeof f === 'object' && Number.isSafeInteger(f.bytes) && f.bytes! >= 0 && typeof f.sha256 === 'string' && /^[0-9a-f]{64}$/.test(f.sha256);
  };
  const v = value as Partial<BootFileDigests> | null;
  return v !== null && typeof v === 'object' && digest(v.kernel) && (v.initrd === undefined || digest(v.initrd));
}

function describe(d: FileDigest | undefined): string {
  return d === undefined ? 'none' : `${d.bytes} bytes, sha256 ${d.sha256.slice(0, 16)}…`;
}

/**
 * Refuses (FAILED_PRECONDITION, HYPERVISOR_FAILED) an incoming guest whose boot files held other
 * bytes than this agent's, naming the file that differs and both contents.
 */
export function checkSameBootFiles(guestId: string, theirs: BootFileDigests | undefined, own: { boot: QemuBoot; digests: BootFileDigests }): void {
  const refuse = (message: string) => new InvalidStateError(message, { reason: 'HYPERVISOR_FAILED', metadata: { guestId } });
  if (theirs === undefined) throw refuse(`guest '${echo(guestId)}': its source did not say what its boot files hold, so this agent cannot check that it boots the same ones`);
  if (own.boot.kind !== 'kernel') return;
  const files: Array<{ name: 'kernel' | 'initrd'; path: string | undefined }> = [
    { name: 'kernel', path: own.boot.kernel },
    { name: 'initrd', path: own.boot.initrd },
  ];
  for (const { name, path } of files) {
    const a = theirs[name];
    const b = own.digests[name];
    if (a?.bytes === b?.bytes && a?.sha256 === b?.sha256) continue;
    throw refuse(`guest '${echo(guestId)}' booted a${name === 'initrd' ? 'n' : ''} ${name} of ${describe(a)}, and this agent's qemu.${name}${path === undefined ? '' : ` ${path}`} is ${describe(b)}: QEMU's stream loads only into a guest booted from the same files; give both agents the same qemu.${name}`);
  }
}
