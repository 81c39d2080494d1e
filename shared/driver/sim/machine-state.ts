// The vCPU and device state of a `sim` machine (machine.ts), and its serialization: what a
// checkpoint's final chunk and a pre-copy or post-copy machine state carry. A state from a peer is
// checked before it is used: a machine cannot run from a NaN position.

import { assert } from '../../assert.js';
import { CorruptDataError } from '../../errors.js';

/** The vCPU's registers and the devices' state: everything but memory. */
export class MachineState {
  /** Instructions retired since boot: the execution position. */
  position = 0;
  /** Units executed since boot: the number of the next unit. */
  unitSequence = 0;
  /** Guest time at the current unit boundary, ns. */
  guestNs = 0;
  rng = 0x2545f491;
  acc = 0;
  sweepCursor = 0;
  jiffies = 0;
  rxPackets = 0;
  rxBytes = 0;
  rxHead = 0;
  diskReads = 0;
  clockReads = 0;
  lastClockNs = 0;
  randomReads = 0;
  pageWrites = 0;

  static readonly BYTES = 96;

  serialize(): Uint8Array {
    const out = new Uint8Array(MachineState.BYTES);
    const v = new DataView(out.buffer);
    v.setFloat64(0, this.position, true);
    v.setUint32(8, this.unitSequence, true);
    v.setFloat64(12, this.guestNs, true);
    v.setUint32(20, this.rng, true);
    v.setUint32(24, this.acc, true);
    v.setUint32(28, this.sweepCursor, true);
    v.setUint32(32, this.jiffies, true);
    v.setUint32(36, this.rxPackets, true);
    v.setFloat64(40, this.rxBytes, true);
    v.setUint32(48, this.rxHead, true);
    v.setUint32(52, this.diskReads, true);
    v.setUint32(56, this.clockReads, true);
    v.setFloat64(60, this.lastClockNs, true);
    v.setUint32(68, this.randomReads, true);
    v.setFloat64(72, this.pageWrites, true);
    return out;
  }

  static deserialize(bytes: Uint8Array): MachineState {
    assert(bytes.length === MachineState.BYTES, () => `machine state of ${bytes.length} bytes, expected ${MachineState.BYTES}`);
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const s = new MachineState();
    s.position = v.getFloat64(0, true);
    s.unitSequence = v.getUint32(8, true);
    s.guestNs = v.getFloat64(12, true);
    s.rng = v.getUint32(20, true);
    s.acc = v.getUint32(24, true);
    s.sweepCursor = v.getUint32(28, true);
    s.jiffies = v.getUint32(32, true);
    s.rxPackets = v.getUint32(36, true);
    s.rxBytes = v.getFloat64(40, true);
    s.rxHead = v.getUint32(48, true);
    s.diskReads = v.getUint32(52, true);
    s.clockReads = v.getUint32(56, true);
    s.lastClockNs = v.getFloat64(60, true);
    s.randomReads = v.getUint32(68, true);
    s.pageWrites = v.getFloat64(72, true);
    // From a peer: the float64 counters must be what a machine can have, or execution goes wrong
    // (a NaN position fails the runner's assertions on the guest's first unit).
    for (const name of MachineState.FLOAT_COUNTERS) {
      const value = s[name];
      if (!Number.isSafeInteger(value) || value < 0) throw new CorruptDataError(`machine state: ${name} is ${value}, expected an integer from 0 to ${Number.MAX_SAFE_INTEGER}`);
    }
    return s;
  }

  /** The counters serialized as float64: each an integer in [0, 2^53). */
  private static readonly FLOAT_COUNTERS = ['position', 'guestNs', 'rxBytes', 'lastClockNs', 'pageWrites'] as const;
}
