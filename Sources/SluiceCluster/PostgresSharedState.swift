import Logging
import PostgresNIO
import SluiceStageAPI
import Synchronization

/// `SharedState` in PostgreSQL: one row of `sluice_state` per key (the entry's numbers and its
/// expiry). An update holds a transaction-scoped advisory lock on its key, so updates of one key
/// from any node take turns; expired rows are deleted at most once a minute, by the query of
/// whichever update comes due, so the table holds only live entries.
public final class PostgresSharedState: SharedState {
    let client: PostgresClient
    let logger: Logger
    private let lastPurge = Mutex<Double>(-.infinity)
    /// The least time between two purges.
    static let purgeInterval = 60.0

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    public func update<Result: Sendable>(
        _ key: String, now: Double, _ change: @escaping @Sendable (SharedEntry?) -> (SharedEntry?, Result)
    ) async throws -> Result {
        let logger = self.logger
        let purge = lastPurge.withLock { last in
            guard now - last >= Self.purgeInterval else { return false }
            last = now
            return true
        }
        return try await withDeadline(10) { [client] in
            try await client.withTransaction(logger: logger) { connection in
                if purge { try await connection.query("DELETE FROM sluice_state WHERE expires_at <= \(now)", logger: logger) }
                try await connection.query("SELECT pg_advisory_xact_lock(hashtextextended(\(key), 0))", logger: logger)
                var current: SharedEntry?
                for try await (values, expires) in try await connection.query(
                    "SELECT value, expires_at FROM sluice_state WHERE key = \(key) AND expires_at > \(now)", logger: logger
                ).decode(([Double], Double).self) {
                    current = SharedEntry(values: values, expiresAt: expires)
                }
                let (next, result) = change(current)
                if let next {
                    try await connection.query("""
                        INSERT INTO sluice_state (key, value, expires_at) VALUES (\(key), \(next.values), \(next.expiresAt))
                        ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
                        """, logger: logger)
                } else {
                    try await connection.query("DELETE FROM sluice_state WHERE key = \(key)", logger: logger)
                }
                return result
            }
        }
    }
}
