import Logging
import PostgresNIO

/// The cluster's tables in PostgreSQL, created and migrated by `sluice run` itself. A version
/// table says which migrations ran; concurrent starts take turns on an advisory lock, so each
/// migration runs once. A database whose schema is newer than this binary is refused.
public enum ClusterSchema {
    /// The schema this binary writes and reads.
    public static let version = 2

    /// The advisory lock key of migrations (any constant shared by every node).
    static let migrationLock: Int64 = 0x5_1C1CE

    /// Migration `n` takes the schema from version `n - 1` to `n`.
    static let migrations: [[String]] = [
        [
            """
            CREATE TABLE sluice_nodes (
                name text PRIMARY KEY,
                started_at timestamptz NOT NULL DEFAULT now(),
                heartbeat_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            // One row per message; `envelope` is the spool envelope's JSON. A message is
            // claimed while `claimed_by` is set and `lease_until` has not passed.
            """
            CREATE TABLE sluice_messages (
                id text PRIMARY KEY,
                state text NOT NULL CHECK (state IN ('queued', 'held', 'quarantined')),
                envelope bytea NOT NULL,
                content_length bigint NOT NULL,
                received_at timestamptz NOT NULL DEFAULT now(),
                due_at timestamptz NOT NULL DEFAULT now(),
                attempts integer NOT NULL DEFAULT 0,
                warned boolean NOT NULL DEFAULT false,
                domains text[] NOT NULL DEFAULT '{}',
                claimed_by text,
                lease_until timestamptz
            )
            """,
            "CREATE INDEX sluice_messages_due ON sluice_messages (due_at) WHERE state = 'queued'",
            // The content, in order, in bounded chunks.
            """
            CREATE TABLE sluice_chunks (
                message_id text NOT NULL REFERENCES sluice_messages (id) ON DELETE CASCADE,
                seq integer NOT NULL,
                data bytea NOT NULL,
                PRIMARY KEY (message_id, seq)
            )
            """,
            // What became of each recipient resolved so far (`recipient` is its index in the
            // envelope; -1 records that the delay warning went out).
            """
            CREATE TABLE sluice_outcomes (
                message_id text NOT NULL REFERENCES sluice_messages (id) ON DELETE CASCADE,
                recipient integer NOT NULL,
                delivered boolean NOT NULL,
                reply text,
                PRIMARY KEY (message_id, recipient)
            )
            """,
        ],
        [
            // `SharedState`: greylist triplets, rate-limit counters, stages' own entries.
            """
            CREATE TABLE sluice_state (
                key text PRIMARY KEY,
                value float8[] NOT NULL,
                expires_at float8 NOT NULL
            )
            """,
            "CREATE INDEX sluice_state_expires ON sluice_state (expires_at)",
        ],
    ]

    /// The database's schema is newer than this binary knows.
    public struct TooNew: Error, CustomStringConvertible {
        public var found: Int
        public var description: String {
            "the database's schema is version \(found), newer than this sluice's \(ClusterSchema.version): upgrade sluice on this node (or point [cluster] postgres at another database)"
        }
    }

    /// Reads the schema's version without changing anything; a newer one than this binary's throws `TooNew`.
    @discardableResult
    public static func check(_ connection: PostgresConnection, logger: Logger) async throws -> Int {
        var found = 0
        for try await exists in try await connection.query("SELECT to_regclass('sluice_schema') IS NOT NULL", logger: logger).decode(Bool.self) where exists {
            for try await v in try await connection.query("SELECT version FROM sluice_schema", logger: logger).decode(Int.self) { found = v }
        }
        guard found <= version else { throw TooNew(found: found) }
        return found
    }

    /// Brings the schema up to `version`; returns the version found before.
    @discardableResult
    public static func migrate(_ connection: PostgresConnection, logger: Logger) async throws -> Int {
        try await connection.withTransaction(logger: logger) { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(\(migrationLock))", logger: logger)
            try await connection.query("CREATE TABLE IF NOT EXISTS sluice_schema (version integer NOT NULL)", logger: logger)
            var found = 0
            for try await v in try await connection.query("SELECT version FROM sluice_schema", logger: logger).decode(Int.self) {
                found = v
            }
            guard found <= version else { throw TooNew(found: found) }
            guard found < version else { return found }
            for step in migrations[found..<version] {
                for statement in step { try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger) }
            }
            try await connection.query("DELETE FROM sluice_schema", logger: logger)
            try await connection.query("INSERT INTO sluice_schema (version) VALUES (\(version))", logger: logger)
            logger.notice("cluster schema migrated", metadata: ["from": "\(found)", "to": "\(version)"])
            return found
        }
    }
}
