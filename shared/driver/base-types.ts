// Base images: an image of a guest that a target host holds already (the replica of its standby,
// left by a broken transfer; or its own copy, stopped here by a failover) and that a new replica
// adopts as its starting memory, so that the checkpoint carries only the pages that differ.

/** What a reservation may adopt as its base (HypervisorDriver.reserve); `replica` is a TargetReplica of the same driver. */
export type BaseSource =
  /** The replica of this guest's earlier standby here, taken from its transfer. */
  | { kind: 'standby'; replica: object }
  /** This guest's own copy, stopped here for good (SourceGuest.retire): the driver finds it by id. */
  | { kind: 'stopped' };

/** A replica's base image, as the target reports it to the source (ReserveResponse.base). */
export interface ReplicaBase {
  readonly kind: BaseSource['kind'];
  /** xxh64 of each page of the image, in page order. */
  pageHashes(): BigUint64Array;
  /** The unit the image is at (0: not known). */
  readonly unitSequence: number;
}
