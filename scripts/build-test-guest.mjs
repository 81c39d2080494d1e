#!/usr/bin/env node
// Writes the QEMU test guest's initramfs (a static busybox whose /init prints a tick counter and
// checks a 4 MiB memory pattern, test/support/initramfs.ts) into DIR, and prints the `qemu:`
// configuration section that boots it. Needs a build (npm run build) and Debian's
// linux-image-amd64 and busybox-static.
//
//   node scripts/build-test-guest.mjs /tmp/vmm-demo/images

import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';

const dir = process.argv[2];
if (dir === undefined || dir === '-h' || dir === '--help') {
  console.error('usage: node scripts/build-test-guest.mjs DIR   (after npm run build)');
  process.exit(dir === undefined ? 2 : 0);
}
const { buildGuestImage } = await import(new URL('../dist/test/support/initramfs.js', import.meta.url).href).catch(() => {
  console.error('dist/ is missing: run npm run build first');
  process.exit(1);
});
mkdirSync(dir, { recursive: true });
try {
  const image = buildGuestImage(resolve(dir));
  console.log(`qemu:\n  kernel: ${image.kernel}\n  initrd: ${image.initrd}\n  append: "${image.append}"`);
} catch (error) {
  console.error(error instanceof Error ? error.message : String(error));
  process.exit(1);
}
