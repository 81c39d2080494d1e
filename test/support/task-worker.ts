// A worker for the WorkerPool tests: echoes a buffer back (transferred both ways), throws a named
// error, blocks for a while, or exits, as each task asks.
import { CorruptDataError } from '../../shared/errors.js';
import { serveTasks } from '../../shared/worker-pool.js';

export type TaskRequest = { op: 'echo'; buffer: ArrayBuffer } | { op: 'throw'; message: string } | { op: 'block'; ms: number } | { op: 'exit'; code: number };
export type TaskResult = { bytes: number; buffer?: ArrayBuffer };

serveTasks<TaskRequest, TaskResult>((request) => {
  switch (request.op) {
    case 'echo':
      return { result: { bytes: request.buffer.byteLength, buffer: request.buffer }, transfer: [request.buffer] };
    case 'throw':
      throw new CorruptDataError(request.message);
    case 'block':
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, request.ms);
      return { result: { bytes: 0 }, transfer: [] };
    case 'exit':
      process.exit(request.code);
  }
});
