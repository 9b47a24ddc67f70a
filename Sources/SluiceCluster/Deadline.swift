/// PostgreSQL did not answer in time (the pool may be waiting for a server that is down).
public struct ClusterTimeout: Error, CustomStringConvertible {
    public var seconds: Double
    public var description: String { "PostgreSQL did not answer within \(seconds) s" }
}

/// Runs `operation`, giving up after `seconds` (the operation is cancelled).
func withDeadline<T: Sendable>(_ seconds: Double, _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            throw ClusterTimeout(seconds: seconds)
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
