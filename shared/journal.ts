// The decision journal: what this agent decided about each migration, kept where a restart finds
// it. The target's `committed` record is the single point of truth for a migration's outcome: it
// is written (and fsynced) before the target answers the commit or resumes the guest, so that a
// source that lost the answer, or a target that restarted, can always learn it.
//
// On disk: `<stateDir>/decisions.journal`, one record a line, `<crc32 hex> <json>`, appended and
// fsynced one at a time. A torn last line (a crash mid-append) is ignored; a line whose checksum
// fails is skipped and counted. The file is compacted (rewritten with each migration's latest
// record, to a temporary file fsynced and renamed over it) once it passes `bytesMax`; records of
// ended migrations older than `retentionMs` go then, and the oldest ended ones past `recordsMax`.
// `<stateDir>/agent.lock` keeps two agents off one directory.
//
// Without a state directory the journal lives in memory: decisions hold for the process's life
// only, and the agent says so at start.

import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, readSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { z } from 'zod';

/**
 * Target: `reserved` (room set aside), `committed` (the guest is this host's: written before the
 * commit is answered), `discarded` (the replica was dropped before any commit, or the migration
 * was fenced by an outcome query: it never commits here), `released` (a reservation no transfer
 * used). Source: `started`, `commit-sent` (in doubt until resolved), `resumed` (the guest runs
 * here again), `handed-over` (the target committed; our copy went), `abandoned` (the agent
 * restarted while the migration was open, and the guest's copy here went with the process).
 */
export const JOURNAL_STATES = ['reserved', 'committed', 'discarded', 'released', 'started', 'commit-sent', 'resumed', 'handed-over', 'abandoned'] as const;
export type JournalState = (typeof JOURNAL_STATES)[number];
export type JournalRole = 'source' | 'target';

/** The states after which a migration's record never changes. */
const FINAL_STATES: ReadonlySet<JournalState> = new Set(['committed', 'discarded', 'released', 'resumed', 'handed-over', 'abandoned']);

export function isFinalState(state: JournalState): boolean {
  return FINAL_STATES.has(state);
}

const recordSchema = z.strictObject({
  migrationId: z.string().min(1).max(128),
  role: z.enum(['source', 'target']),
  state: z.enum(JOURNAL_STATES),
  guestId: z.string().max(256),
  /** The other agent's address (source) or identity (target); '' when not known. */
  peer: z.string().max(512),
  /** Milliseconds since the Unix epoch. */
  atMs: z.number().finite().nonnegative(),
  detail: z.string().max(1024).optional(),
});

export type JournalRecord = z.output<typeof recordSchema>;
export type JournalEntry = Omit<JournalRecord, 'atMs'> & { atMs?: number };

export interface JournalLimits {
  /** The file is compacted past this size. */
  bytesMax: number;
  /** Ended migrations kept at most, the newest. */
  recordsMax: number;
  /** Ended migrations older than this go at compaction. */
  retentionMs: number;
}

export const JOURNAL_DEFAULTS: JournalLimits = { bytesMax: 4 * 2 ** 20, recordsMax: 100_000, retentionMs: 30 * 24 * 3600_000 };

/** Largest journal read at start (a compacted one at the default limits is far smaller). */
const READ_BYTES_MAX = 256 * 2 ** 20;
const LINE_CHARS_MAX = 4096;

export interface DecisionJournal {
  /** Decisions survive a restart of the agent (a state directory is configured). */
  readonly durable: boolean;
  /** The journal file, or null in memory. */
  readonly path: string | null;
  /** Lines skipped at load because their checksum or form was wrong (a torn last line is not counted). */
  readonly corruptLines: number;
  /** Records a decision; on disk, it is fsynced before this returns. Throws when it cannot be written. */
  append(entry: JournalEntry): JournalRecord;
  /** The latest record of a migration in a role. */
  latest(role: JournalRole, migrationId: string): JournalRecord | undefined;
  /** Each migration's latest record, oldest first. */
  entries(): JournalRecord[];
  close(): void;
}

const key = (role: JournalRole, migrationId: string) => `${role}:${migrationId}`;

/** A line of the file: the record's JSON behind its crc32. */
export function encodeLine(record: JournalRecord): string {
  const json = JSON.stringify(record);
  return `${crc32(json).toString(16).padStart(8, '0')} ${json}\n`;
}

/** A line back into its record; null when it is damaged. */
export function decodeLine(line: string): JournalRecord | null {
  if (line.length > LINE_CHARS_MAX || line[8] !== ' ') return null;
  const json = line.slice(9);
  if (crc32(json).toString(16).padStart(8, '0') !== line.slice(0, 8)) return null;
  try {
    const parsed = recordSchema.safeParse(JSON.parse(json));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}

/** Each migration's latest record, in the order of their latest writes. */
class LatestRecords {
  readonly byKey = new Map<string, JournalRecord>();

  put(record: JournalRecord): void {
    const k = key(record.role, record.migrationId);
    this.byKey.delete(k);
    this.byKey.set(k, record);
  }

  /** Drops ended migrations past the retention, then the oldest ended ones past recordsMax. */
  prune(limits: JournalLimits, nowMs: number): void {
    for (const [k, r] of this.byKey) if (isFinalState(r.state) && nowMs - r.atMs > limits.retentionMs) this.byKey.delete(k);
    let excess = this.byKey.size - limits.recordsMax;
    for (const [k, r] of this.byKey) {
      if (excess <= 0) break;
      if (isFinalState(r.state)) {
        this.byKey.delete(k);
        excess--;
      }
    }
  }
}

class MemoryJournal implements DecisionJournal {
  readonly durable: boolean = false;
  readonly path: string | null = null;
  readonly corruptLines: number = 0;
  protected readonly records = new LatestRecords();

  constructor(protected readonly limits: JournalLimits = JOURNAL_DEFAULTS) {}

  append(entry: JournalEntry): JournalRecord {
    const record = recordSchema.parse({ ...entry, atMs: entry.atMs ?? Date.now(), detail: entry.detail?.slice(0, 1024) });
    this.write(record);
    this.records.put(record);
    if (this.records.byKey.size > this.limits.recordsMax) this.records.prune(this.limits, Date.now());
    return record;
  }

  protected write(_record: JournalRecord): void {}

  latest(role: JournalRole, migrationId: string): JournalRecord | undefined {
    return this.records.byKey.get(key(role, migrationId));
  }

  entries(): JournalRecord[] {
    return [...this.records.byKey.values()];
  }

  close(): void {}
}

class FileJournal extends MemoryJournal {
  override readonly durable = true;
  override readonly path: string;
  override corruptLines = 0;
  private fd: number;
  private bytes = 0;
  private readonly lockPath: string;

  constructor(
    private readonly dir: string,
    limits: JournalLimits,
  ) {
    super(limits);
    mkdirSync(dir, { recursive: true, mode: 0o750 });
    this.lockPath = join(dir, 'agent.lock');
    takeLock(this.lockPath);
    this.path = join(dir, 'decisions.journal');
    try {
      this.load();
      this.fd = this.compact();
    } catch (error) {
      unlinkQuietly(this.lockPath);
      throw error;
    }
  }

  private load(): void {
    let text: string;
    try {
      const size = statSync(this.path).size;
      if (size > READ_BYTES_MAX) throw new Error(`the journal ${this.path} holds ${size} bytes, more than ${READ_BYTES_MAX}: not an agent's journal?`);
      text = readFileSync(this.path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    const lines = text.split('\n');
    const torn = lines.pop() ?? '';
    for (const line of lines) {
      const record = decodeLine(line);
      if (record === null) this.corruptLines++;
      else this.records.put(record);
    }
    // A last line without its newline is a write the crash cut short: it never counted.
    void torn;
  }

  /** Rewrites the file with each migration's latest record; returns the descriptor to append to. */
  private compact(): number {
    this.records.prune(this.limits, Date.now());
    const text = this.entries().map(encodeLine).join('');
    const tmp = `${this.path}.tmp`;
    const fd = openSync(tmp, 'w', 0o640);
    try {
      writeSync(fd, text);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
    syncDirectory(this.dir);
    this.bytes = Buffer.byteLength(text);
    return openSync(this.path, 'a', 0o640);
  }

  protected override write(record: JournalRecord): void {
    const line = encodeLine(record);
    writeSync(this.fd, line);
    fsyncSync(this.fd);
    this.bytes += Buffer.byteLength(line);
    if (this.bytes > this.limits.bytesMax) {
      // The record is on disk already; compaction keeps it (put below runs after, so add it first).
      this.records.put(record);
      closeSync(this.fd);
      this.fd = this.compact();
    }
  }

  override close(): void {
    try {
      closeSync(this.fd);
    } catch {
      // Closed already.
    }
    unlinkQuietly(this.lockPath);
  }
}

function syncDirectory(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // Gone already.
  }
}

/** Takes `<dir>/agent.lock`, or throws when a live process holds it. */
function takeLock(path: string): void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o640);
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const pid = readPid(path);
    if (pid !== null && processAlive(pid)) {
      throw new Error(`the state directory is in use by another agent (process ${pid}, ${path}); each agent needs its own stateDir`);
    }
    // Left behind by an agent that died: take it over.
    unlinkQuietly(path);
  }
  throw new Error(`cannot take the lock ${path}`);
}

function readPid(path: string): number | null {
  try {
    const fd = openSync(path, 'r');
    const buffer = Buffer.alloc(32);
    const n = readSync(fd, buffer, 0, 32, 0);
    closeSync(fd);
    const pid = Number.parseInt(buffer.subarray(0, n).toString('utf8'), 10);
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The journal in `stateDir` (created if missing), or in memory when there is none. */
export function openJournal(stateDir: string | undefined, limits: JournalLimits = JOURNAL_DEFAULTS): DecisionJournal {
  return stateDir === undefined ? new MemoryJournal(limits) : new FileJournal(stateDir, limits);
}
