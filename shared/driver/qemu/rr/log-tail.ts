// Reads a file that another process is appending to (the recorder's replay log), from an offset
// on, in bounded reads. The recorder writes through a stdio buffer (4 KiB here, the file's
// st_blksize), so the file grows in whole buffers while the guest runs, and its last partial
// buffer reaches the disk only when QEMU exits (fclose): what a tail reads lags the recorder by
// up to one buffer.

import { type FileHandle, open } from 'node:fs/promises';

export class LogTail {
  private handle: FileHandle | null = null;
  private position: number;

  constructor(
    readonly path: string,
    startOffset: number,
    /** Bound on the bytes one read returns. */
    readonly readBytesMax: number,
  ) {
    this.position = startOffset;
  }

  /** Offset of the next byte to read. */
  get offset(): number {
    return this.position;
  }

  /** The bytes the file holds past the offset, at most readBytesMax (empty when nothing new). */
  async read(): Promise<Buffer> {
    this.handle ??= await open(this.path, 'r');
    const { size } = await this.handle.stat();
    const want = Math.min(size - this.position, this.readBytesMax);
    if (want <= 0) return Buffer.alloc(0);
    const buffer = Buffer.allocUnsafe(want);
    const { bytesRead } = await this.handle.read(buffer, 0, want, this.position);
    this.position += bytesRead;
    return buffer.subarray(0, bytesRead);
  }

  async close(): Promise<void> {
    const handle = this.handle;
    this.handle = null;
    await handle?.close();
  }
}
