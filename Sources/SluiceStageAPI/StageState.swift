import Synchronization

/// A typed key into a `StageState`: `static let seen = StateKey<Int>("greylist.seen")`.
public struct StateKey<Value: Sendable>: Sendable, Hashable {
    public let name: String
    public init(_ name: String) { self.name = name }
}

/// Storage a stage keeps per session or per transaction. Stages of one session run one at a
/// time, but the store is locked so that any task may read it.
public final class StageState: Sendable {
    private let values = Mutex<[String: any Sendable]>([:])

    public init() {}

    public subscript<Value: Sendable>(key: StateKey<Value>) -> Value? {
        get { values.withLock { $0[key.name] as? Value } }
        set { values.withLock { $0[key.name] = newValue } }
    }
}
