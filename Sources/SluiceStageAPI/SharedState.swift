/// State that every node of a cluster shares (`[cluster]`: kept in PostgreSQL), for stages
/// whose memory must not depend on which MX a client reached: greylist triplets, rate-limit
/// counters, or a stage of your own. `StageEnvironment.sharedState` is nil on a single node;
/// a stage then keeps its state as it always did.
public protocol SharedState: Sendable {
    /// Reads the entry at `key` (nil when there is none, or it expired before `now`), hands it
    /// to `change`, and stores the entry `change` returns (nil deletes it). Atomic across nodes:
    /// two updates of one key never interleave. Expired entries are purged by the store.
    /// - Parameter now: seconds since 1970, the clock entries' expiry is compared with.
    func update<Result: Sendable>(
        _ key: String, now: Double, _ change: @escaping @Sendable (SharedEntry?) -> (SharedEntry?, Result)
    ) async throws -> Result
}

/// One entry of `SharedState`: a few numbers and when they stop counting.
public struct SharedEntry: Sendable, Equatable {
    public var values: [Double]
    /// Seconds since 1970.
    public var expiresAt: Double

    public init(values: [Double], expiresAt: Double) {
        self.values = values
        self.expiresAt = expiresAt
    }
}
