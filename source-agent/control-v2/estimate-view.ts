// EstimateMigration's answer as a Control v2 message: the measured inputs (guest and link, each
// with where it came from), each method's predicted cost, and the recommended method.

import { pb2 } from '../../shared/transport/grpc.js';
import type { EstimateResult } from '../estimate/estimator.js';
import type { InputSource } from '../estimate/sample-guest.js';
import { methodEnum } from './enums.js';

const SOURCES: Record<InputSource, number> = {
  measured: pb2.InputSource.INPUT_SOURCE_MEASURED,
  configured: pb2.InputSource.INPUT_SOURCE_CONFIGURED,
  'workload-model': pb2.InputSource.INPUT_SOURCE_MODELLED,
  unknown: pb2.InputSource.INPUT_SOURCE_UNKNOWN,
};

export function estimateMessage(r: EstimateResult): InstanceType<typeof pb2.EstimateMigrationResponse> {
  const g = r.guest;
  const d = r.prediction.derived;
  const guest = pb2.GuestMeasurements.create({
    memoryBytes: g.memoryBytes,
    unitMs: g.unitMs,
    sampleMs: g.periodMs,
    sampledPages: g.sampledPages,
    nonZeroFraction: g.nonZeroFraction,
    pageWireRatio: g.pageWireRatio,
    compressBytesPerSec: g.compressBytesPerSec,
    dirtyWindows: g.dirtyWindows.map((w) => pb2.DirtyWindow.create({ windowMs: Math.round(w.windowMs), pages: w.pages })),
    dirtySource: SOURCES[g.dirtySource],
    dirtyPagesPerSec: d.dirtyPagesPerSec,
    workingSetPages: Math.round(d.workingSetPages),
    busyFraction: g.busyFraction,
    busySource: SOURCES[g.busySource],
    replayRate: d.replayRate,
    logBytesPerSec: g.logBytesPerSec,
    logSource: SOURCES[g.logSource],
    cowPoolBytes: g.cowPoolBytes,
  });
  const l = r.link;
  const link = pb2.LinkMeasurements.create({
    rttMs: l.rttMs,
    rttSamples: l.rttSamples,
    bandwidthBytesPerSec: l.bandwidthBytesPerSec,
    bandwidthSource: SOURCES[l.bandwidthSource],
    probeBytes: l.probeBytes,
    probeMs: l.probeMs,
    measuredBandwidthBytesPerSec: l.measuredBytesPerSec,
    maxBandwidthBytesPerSec: r.request.maxBandwidthBytesPerSec,
    note: l.note,
  });
  const methods = r.prediction.methods.map((m) =>
    pb2.MethodEstimate.create({
      method: methodEnum(m.method),
      available: m.available,
      converges: m.converges,
      downtimeMs: m.downtimeMs,
      totalTimeMs: m.totalTimeMs,
      transferredBytes: m.bytes,
      disruptionMs: m.disruptionMs,
      rounds: m.rounds,
      reason: m.reason,
      logOnlyCatchUp: m.logOnlyCatchUp,
    }),
  );
  return pb2.EstimateMigrationResponse.create({
    guest,
    link,
    downtimeLimitMs: r.request.downtimeLimitMs,
    methods,
    recommendedMethod: methodEnum(r.prediction.recommended),
    recommendationReason: r.prediction.reason,
    elapsedMs: r.elapsedMs,
  });
}
