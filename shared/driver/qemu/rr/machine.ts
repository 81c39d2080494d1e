// The QEMU processes of a record/replay migration and what they share: one command line (the
// driver's, args.ts) with record/replay options added, so that recorder and replayer build the
// same machine; a qcow2 file attached with no device (`if=none`) that holds the snapshots (the
// checkpoint, and the state handed to the live QEMU); qemu-img (Debian qemu-utils) to create and
// list it; and QMP with the human monitor for savevm, which 7.2 has no plain QMP command for.

import { spawn } from 'node:child_process';
import { qemuArgs, type QemuMachineConfig } from '../args.js';
import { describeExit, lastLines, QemuProcess } from '../process.js';
import { QmpClient, QmpError } from '../qmp.js';

export const QEMU_IMG_PACKAGE = 'qemu-utils';
export const QEMU_IMG_EXECUTABLE = 'qemu-img';
/** The id of the snapshot drive on every command line (it must be the same on both ends). */
export const SNAPSHOT_DRIVE_ID = 'rrsnap0';
/** Bytes of QEMU's serial console kept per process. */
const SERIAL_TAIL_BYTES = 256 * 1024;
/** Bound on a qemu-img run and on what it prints. */
const QEMU_IMG_TIMEOUT_MS = 30_000;
const QEMU_IMG_OUTPUT_BYTES_MAX = 1 << 20;

/** The guest's machine and the programs that run it. */
export interface RrMachine {
  readonly id: string;
  readonly machine: QemuMachineConfig;
  /** qemu-system-x86_64, by name on PATH or by path. */
  readonly qemuBinary: string;
  readonly qemuImgBinary: string;
  /**
   * icount's shift: `auto` (the default) adapts the guest's clock to real time; a number fixes
   * it at 2^N ns per instruction (the guest's idle time still follows real time).
   */
  readonly icountShift?: 'auto' | number;
}

/** How one QEMU of the migration runs. */
export interface RrRun {
  readonly mode: 'record' | 'replay';
  readonly logFile: string;
  readonly snapshotFile: string;
  readonly qmpSocket: string;
  /** rrsnapshot: recording, the snapshot saved at icount 0; replaying, the one loaded to start from. */
  readonly rrSnapshot?: string;
  /** -loadvm: the snapshot a recording QEMU starts from (the live guest on the target). */
  readonly loadvm?: string;
  /** -S: QEMU waits for `cont` (a replayer sets its first break first). */
  readonly paused?: boolean;
}

/** QEMU's options escape a comma by doubling it. */
const optionValue = (path: string) => path.replaceAll(',', ',,');

/** The command line: the driver's, plus icount with record/replay, the snapshot drive and the run's flags. */
export function rrArgs(m: RrMachine, run: RrRun): string[] {
  if (m.machine.vcpus !== 1 || m.machine.accel !== 'tcg') throw new QmpError('FAILED_PRECONDITION', `record/replay needs one vCPU under TCG; guest '${m.id}' has ${m.machine.vcpus} vCPU(s) under ${m.machine.accel}`, { reason: 'NOT_SUPPORTED', metadata: { guestId: m.id } });
  const icount = [`shift=${m.icountShift ?? 'auto'}`, `rr=${run.mode}`, `rrfile=${optionValue(run.logFile)}`];
  if (run.rrSnapshot !== undefined) icount.push(`rrsnapshot=${run.rrSnapshot}`);
  const args = [
    ...qemuArgs(m.id, m.machine, run.qmpSocket),
    '-icount', icount.join(','),
    '-drive', `file=${optionValue(run.snapshotFile)},if=none,id=${SNAPSHOT_DRIVE_ID},format=qcow2`,
  ];
  if (run.loadvm !== undefined) args.push('-loadvm', run.loadvm);
  if (run.paused === true) args.push('-S');
  return args;
}

/** Runs qemu-img with `args`; resolves with its standard output, rejects with its message. */
export function runQemuImg(m: RrMachine, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(m.qemuImgBinary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), QEMU_IMG_TIMEOUT_MS);
    child.stdout.setEncoding('utf8').on('data', (text: string) => (out = (out + text).slice(0, QEMU_IMG_OUTPUT_BYTES_MAX)));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (err = (err + text).slice(-4096)));
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(new QmpError('UNAVAILABLE', `cannot run ${m.qemuImgBinary} (Debian ${QEMU_IMG_PACKAGE}): ${error.message}`, { cause: error }));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new QmpError('FAILED_PRECONDITION', `${m.qemuImgBinary} ${args.join(' ')} ended (${describeExit({ code, signal })}): ${err.trim() || 'no message'}`));
    });
  });
}

/** Creates the empty qcow2 file that will hold the snapshots (its disk size is unused: no device reads it). */
export async function createSnapshotFile(m: RrMachine, path: string): Promise<void> {
  await runQemuImg(m, ['create', '-q', '-f', 'qcow2', path, '1M']);
}

/** A snapshot in a qcow2 file, as qemu-img lists it. */
export interface SnapshotInfo {
  readonly name: string;
  readonly icount: number;
  readonly vmStateBytes: number;
  /** The guest's virtual clock when it was taken: guest time since boot. */
  readonly vmClockNs: number;
}

/** The snapshots in `path` (read with --force-share: a QEMU may hold it open). */
export async function listSnapshots(m: RrMachine, path: string): Promise<SnapshotInfo[]> {
  const info = JSON.parse(await runQemuImg(m, ['info', '--force-share', '--output=json', path])) as { snapshots?: Array<Record<string, unknown>> };
  return (info.snapshots ?? []).map((s) => ({
    name: String(s.name),
    icount: Number(s.icount ?? -1),
    vmStateBytes: Number(s['vm-state-size'] ?? 0),
    vmClockNs: Number(s['vm-clock-sec'] ?? 0) * 1e9 + Number(s['vm-clock-nsec'] ?? 0),
  }));
}

/** A QEMU of the migration and its QMP connection. */
export interface RrQemu {
  readonly process: QemuProcess;
  readonly qmp: QmpClient;
}

/** Starts QEMU for `run` and connects to its QMP; if QEMU ends first, rejects with its own message. */
export async function startRrQemu(m: RrMachine, run: RrRun, connectTimeoutMs: number): Promise<RrQemu> {
  const qemu = QemuProcess.start(m.qemuBinary, rrArgs(m, run), SERIAL_TAIL_BYTES);
  const abort = new AbortController();
  const exited = qemu.exited.then((exit): never => {
    throw new QmpError('UNAVAILABLE', `the ${run.mode === 'record' ? 'recording' : 'replaying'} QEMU of guest '${m.id}' ended (${describeExit(exit)}) before QMP was ready: ${lastLines(qemu.stderrTail)}`, { metadata: { guestId: m.id } });
  });
  try {
    const qmp = await Promise.race([QmpClient.connect(run.qmpSocket, { connectTimeoutMs, signal: abort.signal }), exited]);
    return { process: qemu, qmp };
  } catch (error) {
    abort.abort(error);
    qemu.signal('SIGKILL');
    await qemu.exited;
    throw error;
  } finally {
    exited.catch(() => undefined);
  }
}

/** Runs a human monitor command; QEMU answers an error as text, so any answer not accepted is one. */
export async function hmp(qemu: RrQemu, commandLine: string, timeoutMs: number, accept: (answer: string) => boolean = (a) => a.trim() === ''): Promise<string> {
  const answer = await qemu.qmp.execute<string>('human-monitor-command', { 'command-line': commandLine }, timeoutMs);
  if (!accept(answer)) throw new QmpError('FAILED_PRECONDITION', `QEMU refused '${commandLine}': ${answer.trim().slice(0, 500)}`, { metadata: { command: commandLine } });
  return answer;
}

/** The icount QEMU has reached (query-replay). */
export async function queryIcount(qemu: RrQemu): Promise<number> {
  const answer = await qemu.qmp.execute<{ icount: number }>('query-replay');
  return answer.icount;
}

/** Ends a QEMU: QMP quit (a recorder then writes its log's end), SIGKILL after `graceMs`. */
export async function stopRrQemu(qemu: RrQemu, graceMs: number): Promise<void> {
  if (qemu.process.exitStatus === null && !qemu.qmp.closed) await qemu.qmp.execute('quit', undefined, graceMs).catch(() => qemu.process.signal('SIGTERM'));
  await qemu.process.killAfter(graceMs);
  qemu.qmp.close();
}
