import GRDB
import SluiceStageAPI
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The greylist's memory in one SQLite file (WAL mode, through GRDB): every triplet seen, and per
/// client network how many messages passed. Each row carries the time it expires; a lookup
/// ignores rows past it and a purge, at most once per `purgeInterval`, deletes them, so the file
/// stays as large as the mail of the last `expiry`. Nothing is kept in memory but the time of
/// the last purge.
///
/// Every decision is one write transaction (look up, then insert or update), so two sessions
/// retrying the same triplet at once see each other's rows. GRDB runs it on its own queue, never
/// on the caller's thread.
final class GreylistStore: Sendable {
    /// The rules the store applies, in seconds.
    struct Policy: Sendable {
        /// How long a new triplet is refused.
        var delay: Double
        /// How long after its first sight a triplet may still be retried before it counts as new.
        var retryWindow: Double
        /// How long a passed triplet, or an allowlisted client network, lives after its last use.
        var expiry: Double
        /// Messages passed from one client network after which it skips greylisting; 0: never.
        var autoAllowlistAfter: Int
        /// The least time between two purges of expired rows.
        var purgeInterval: Double
    }

    /// What the store decided for a triplet.
    enum Outcome: Sendable, Hashable {
        /// The client network passed greylisting often enough to skip it.
        case allowlistedClient
        /// Refuse for now; the triplet may pass in `retryIn` seconds. `firstSight` when the
        /// triplet was new (or had expired) and was just recorded.
        case greylisted(retryIn: Int, firstSight: Bool)
        /// The triplet waited long enough (or passed before): let the recipient through.
        case passed
    }

    /// A database failure, naming the file.
    struct Failure: Error, CustomStringConvertible {
        var path: String
        var message: String
        var description: String { "greylist database \(path): \(message)" }
    }

    let path: String
    let policy: Policy
    /// The SQLite file; nil when the store keeps a cluster's shared state instead.
    private let database: DatabasePool?
    private let shared: (any SharedState)?
    private let lastPurge = Mutex<Double>(-.infinity)

    /// A store in a cluster's shared state: the same rules, one entry per triplet
    /// (`greylist:triplet:NETWORK|SENDER|RECIPIENT`: first sight, pass time) and per client
    /// network (`greylist:client:NETWORK`: passes), each expiring as the rows of the file do.
    init(shared: any SharedState, policy: Policy) {
        self.path = "(cluster shared state)"
        self.policy = policy
        self.database = nil
        self.shared = shared
    }

    /// Opens (or creates) the database at `path` and brings its tables up to date.
    init(path: String, policy: Policy) throws(Failure) {
        self.path = path
        self.policy = policy
        var configuration = Configuration()
        configuration.label = "greylist"
        // A second process on the same file (`sluice check-config`, a restart overlapping the
        // old gateway's exit) waits for the lock instead of failing at once.
        configuration.busyMode = .timeout(5)
        do {
            // DatabasePool opens the file in WAL mode with synchronous = NORMAL: readers do not
            // wait for the writer, and a crash loses nothing committed.
            let database = try Self.open(path, configuration)
            try Self.createSchema(database)
            self.database = database
            self.shared = nil
        } catch {
            throw Failure(path: path, message: "cannot open the SQLite database: \(error)")
        }
    }

    /// Opens the pool. Switching a new file to WAL mode takes SQLite's lock without waiting for it
    /// (the busy timeout does not apply there), so a process that loses that race to another
    /// opener tries again, for as long as the busy timeout would have waited.
    private static func open(_ path: String, _ configuration: Configuration) throws -> DatabasePool {
        let deadline = ContinuousClock.now + .seconds(5)
        while true {
            do {
                return try DatabasePool(path: path, configuration: configuration)
            } catch let error as DatabaseError where error.resultCode == .SQLITE_BUSY && ContinuousClock.now < deadline {
                usleep(10_000)
            }
        }
    }

    /// Brings the file's tables up to date, in one `BEGIN IMMEDIATE` transaction of statements
    /// that are no-ops when already applied: two processes opening one new file at the same moment
    /// (two gateways, or `sluice run` and `sluice milter`) take turns on SQLite's write lock, and
    /// the second finds the tables made. `PRAGMA user_version` counts the schema changes made.
    static func createSchema(_ database: DatabasePool) throws {
        try database.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                let version = try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0
                if version < 1 {
                    // The primary keys are the lookup indexes; the expiry indexes serve the purge.
                    try db.create(table: "triplet", options: [.ifNotExists, .withoutRowID]) { t in
                        t.column("client_network", .text).notNull()
                        t.column("sender", .text).notNull()
                        t.column("recipient", .text).notNull()
                        t.column("first_seen", .double).notNull()
                        t.column("passed_at", .double)
                        t.column("expires_at", .double).notNull()
                        t.primaryKey(["client_network", "sender", "recipient"])
                    }
                    try db.create(index: "triplet_expires_at", on: "triplet", columns: ["expires_at"], options: .ifNotExists)
                    try db.create(table: "client", options: [.ifNotExists, .withoutRowID]) { t in
                        t.column("client_network", .text).notNull().primaryKey()
                        t.column("passes", .integer).notNull()
                        t.column("expires_at", .double).notNull()
                    }
                    try db.create(index: "client_expires_at", on: "client", columns: ["expires_at"], options: .ifNotExists)
                    try db.execute(sql: "PRAGMA user_version = 1")
                }
                return .commit
            }
        }
    }

    /// Decides for `triplet` at time `now` (seconds since 1970) and records it. `countsForClient`:
    /// a pass adds one to the client network's count (once per message, however many
    /// recipients pass).
    func check(_ triplet: GreylistTriplet, now: Double, countsForClient: Bool) async throws -> Outcome {
        let policy = policy
        guard let database else {
            return try await Self.decide(shared!, triplet, now: now, policy: policy, countsForClient: countsForClient)
        }
        let purge = claimPurge(at: now)
        do {
            return try await database.write { db in
                if purge { try Self.purge(db, now: now) }
                return try Self.decide(db, triplet, now: now, policy: policy, countsForClient: countsForClient)
            }
        } catch let error as CancellationError {
            throw error
        } catch {
            throw Failure(path: path, message: "\(error)")
        }
    }

    private static func decide(_ db: Database, _ triplet: GreylistTriplet, now: Double, policy: Policy,
                               countsForClient: Bool) throws -> Outcome {
        if policy.autoAllowlistAfter > 0,
           let passes = try Int.fetchOne(db, sql: "SELECT passes FROM client WHERE client_network = ? AND expires_at > ?",
                                         arguments: [triplet.clientNetwork, now]),
           passes >= policy.autoAllowlistAfter {
            try db.execute(sql: "UPDATE client SET expires_at = ? WHERE client_network = ?",
                           arguments: [now + policy.expiry, triplet.clientNetwork])
            return .allowlistedClient
        }
        let key: StatementArguments = [triplet.clientNetwork, triplet.sender, triplet.recipient]
        let row = try Row.fetchOne(
            db, sql: "SELECT first_seen, passed_at FROM triplet WHERE client_network = ? AND sender = ? AND recipient = ? AND expires_at > ?",
            arguments: key + [now])
        guard let row else {
            // New, or expired and not purged yet: start over.
            try db.execute(
                sql: "INSERT OR REPLACE INTO triplet (client_network, sender, recipient, first_seen, passed_at, expires_at) VALUES (?, ?, ?, ?, NULL, ?)",
                arguments: key + [now, now + policy.retryWindow])
            return .greylisted(retryIn: seconds(policy.delay), firstSight: true)
        }
        let firstSeen: Double = row["first_seen"]
        let passedAt: Double? = row["passed_at"]
        if passedAt == nil, now - firstSeen < policy.delay {
            return .greylisted(retryIn: seconds(policy.delay - (now - firstSeen)), firstSight: false)
        }
        try db.execute(
            sql: "UPDATE triplet SET passed_at = coalesce(passed_at, ?), expires_at = ? WHERE client_network = ? AND sender = ? AND recipient = ?",
            arguments: [now, now + policy.expiry] + key)
        if countsForClient, policy.autoAllowlistAfter > 0 {
            // An expired count starts again from one.
            try db.execute(sql: """
                INSERT INTO client (client_network, passes, expires_at) VALUES (?, 1, ?)
                ON CONFLICT (client_network) DO UPDATE
                SET passes = CASE WHEN expires_at > ? THEN passes + 1 ELSE 1 END, expires_at = excluded.expires_at
                """, arguments: [triplet.clientNetwork, now + policy.expiry, now])
        }
        return .passed
    }

    /// `decide` on shared state: the same rules, each entry updated atomically across nodes.
    private static func decide(_ state: any SharedState, _ triplet: GreylistTriplet, now: Double, policy: Policy,
                               countsForClient: Bool) async throws -> Outcome {
        let clientKey = "greylist:client:\(triplet.clientNetwork)"
        if policy.autoAllowlistAfter > 0 {
            let allowlisted = try await state.update(clientKey, now: now) { entry -> (SharedEntry?, Bool) in
                guard let entry, Int(entry.values.first ?? 0) >= policy.autoAllowlistAfter else { return (entry, false) }
                return (SharedEntry(values: entry.values, expiresAt: now + policy.expiry), true)
            }
            if allowlisted { return .allowlistedClient }
        }
        let key = "greylist:triplet:\(triplet.clientNetwork)|\(triplet.sender)|\(triplet.recipient)"
        let outcome = try await state.update(key, now: now) { entry -> (SharedEntry?, Outcome) in
            guard let entry, entry.values.count == 2 else {
                // New, or expired: start over (-1: not passed yet).
                return (SharedEntry(values: [now, -1], expiresAt: now + policy.retryWindow), .greylisted(retryIn: seconds(policy.delay), firstSight: true))
            }
            let (firstSeen, passedAt) = (entry.values[0], entry.values[1])
            if passedAt < 0, now - firstSeen < policy.delay {
                return (entry, .greylisted(retryIn: seconds(policy.delay - (now - firstSeen)), firstSight: false))
            }
            return (SharedEntry(values: [firstSeen, passedAt < 0 ? now : passedAt], expiresAt: now + policy.expiry), .passed)
        }
        if case .passed = outcome, countsForClient, policy.autoAllowlistAfter > 0 {
            // An expired count reads as none and starts again from one.
            _ = try await state.update(clientKey, now: now) { entry -> (SharedEntry?, Bool) in
                (SharedEntry(values: [(entry?.values.first ?? 0) + 1], expiresAt: now + policy.expiry), true)
            }
        }
        return outcome
    }

    /// Whole seconds to wait, rounded up, at least 1 (a client told 0 would retry at once).
    private static func seconds(_ wait: Double) -> Int {
        max(1, Int(wait.rounded(.up)))
    }

    /// True when a purge is due; marks it done, so concurrent writers do not all purge.
    private func claimPurge(at now: Double) -> Bool {
        lastPurge.withLock { last in
            guard now - last >= policy.purgeInterval else { return false }
            last = now
            return true
        }
    }

    private static func purge(_ db: Database, now: Double) throws {
        try db.execute(sql: "DELETE FROM triplet WHERE expires_at <= ?", arguments: [now])
        try db.execute(sql: "DELETE FROM client WHERE expires_at <= ?", arguments: [now])
    }

    /// The rows stored (expired or not), for tests and diagnostics.
    func rowCounts() async throws -> (triplets: Int, clients: Int) {
        guard let database else { return (0, 0) }
        return try await database.read { db in
            (try Int.fetchOne(db, sql: "SELECT count(*) FROM triplet") ?? 0,
             try Int.fetchOne(db, sql: "SELECT count(*) FROM client") ?? 0)
        }
    }
}
