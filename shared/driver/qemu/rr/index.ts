// Migration of a QEMU guest by record/replay (checkpoint + log replay with QEMU's own
// record/replay under TCG): the log's format and slicing, the stream between the ends, the
// source and target, and a run of both on one machine. See docs/qemu.md, "Record/replay".

export * from './log-format.js';
export * from './log-tail.js';
export * from './machine.js';
export * from './measure.js';
export * from './pipeline.js';
export * from './slicer.js';
export * from './source.js';
export * from './target.js';
export * from './wire.js';
