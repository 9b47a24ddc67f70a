import Foundation
import Logging
import PostgresNIO

/// What `sluice cluster status` prints: each node (name, last heartbeat, the messages it holds
/// live claims on) and the queue's totals.
public struct ClusterStatus: Codable, Sendable {
    public struct Node: Codable, Sendable {
        public var name: String
        /// Seconds since 1970.
        public var heartbeat: Double
        public var secondsSinceHeartbeat: Double
        public var claims: Int
    }

    public struct Totals: Codable, Sendable {
        /// Queued and due now (or being delivered).
        public var active = 0
        /// Queued, waiting for a retry.
        public var deferred = 0
        public var hold = 0
        public var quarantine = 0
        public var total: Int { active + deferred + hold + quarantine }

        enum CodingKeys: String, CodingKey { case active, deferred, hold, quarantine, total }

        public init() {}

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(active, forKey: .active)
            try c.encode(deferred, forKey: .deferred)
            try c.encode(hold, forKey: .hold)
            try c.encode(quarantine, forKey: .quarantine)
            try c.encode(total, forKey: .total)
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            active = try c.decode(Int.self, forKey: .active)
            deferred = try c.decode(Int.self, forKey: .deferred)
            hold = try c.decode(Int.self, forKey: .hold)
            quarantine = try c.decode(Int.self, forKey: .quarantine)
        }
    }

    public var schemaVersion: Int
    public var nodes: [Node]
    public var queue: Totals

    /// Reads the status from the cluster's database.
    public static func read(_ client: PostgresClient, logger: Logger) async throws -> ClusterStatus {
        var nodes: [Node] = []
        for try await (name, heartbeat, age, claims) in try await client.query("""
            SELECT n.name, extract(epoch FROM n.heartbeat_at)::float8, extract(epoch FROM now() - n.heartbeat_at)::float8,
                (SELECT count(*) FROM sluice_messages m WHERE m.claimed_by = n.name AND m.lease_until > now())::bigint
            FROM sluice_nodes n ORDER BY n.name
            """, logger: logger).decode((String, Double, Double, Int).self) {
            nodes.append(Node(name: name, heartbeat: heartbeat, secondsSinceHeartbeat: age, claims: claims))
        }
        var totals = Totals()
        for try await (state, waiting, count) in try await client.query("""
            SELECT state, due_at > now(), count(*)::bigint FROM sluice_messages GROUP BY 1, 2
            """, logger: logger).decode((String, Bool, Int).self) {
            switch state {
            case "queued": if waiting { totals.deferred += count } else { totals.active += count }
            case "held": totals.hold += count
            default: totals.quarantine += count
            }
        }
        var version = 0
        for try await v in try await client.query("SELECT version FROM sluice_schema", logger: logger).decode(Int.self) { version = v }
        return ClusterStatus(schemaVersion: version, nodes: nodes, queue: totals)
    }
}

extension ClusterSettings {
    /// Runs `body` with a client of the cluster's database running.
    public func withClient<T: Sendable>(logger: Logger, _ body: (PostgresClient) async throws -> T) async throws -> T {
        // The pool's own lines (a connection closed as the command ends) are not the command's output.
        var poolLogger = logger
        poolLogger.logLevel = .critical
        let client = PostgresClient(configuration: clientConfiguration, backgroundLogger: poolLogger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            return try await body(client)
        }
    }
}
