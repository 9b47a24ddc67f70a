import Foundation
import SluiceStageAPI
import Synchronization

/// `use = "rate-limit"`: messages and recipients per client address, sender and authenticated
/// user within an interval, counted in memory (like Postfix's anvil), or, on a node of a
/// cluster (`[cluster]`), in the state every node shares, so a limit counts across the MXes.
///
/// ```toml
/// [[stage]]
/// use = "rate-limit"
/// interval_s = 3600
/// client_messages = 100
/// client_recipients = 500
/// sender_messages = 200
/// user_messages = 500
/// user_recipients = 2000
/// client_connections = 60
/// ```
///
/// Keys (0 or absent = no limit): `client_messages`, `client_recipients`, `sender_messages`,
/// `sender_recipients`, `user_messages`, `user_recipients` (per `interval_s`, default 3600),
/// `client_connections` (connections per interval: 421 4.7.0 and close), `exempt` (CIDRs never
/// limited, default []). Over a message limit MAIL gets 451 4.7.1; over a recipient limit RCPT
/// gets 451 4.7.1; the reply names the limit.
public struct RateLimitStage: Stage {
    let interval: Duration
    let limits: [Limit: Int]
    let exempt: [CIDR]
    let counters = Counters()
    /// A cluster's shared state; nil: count in memory.
    let shared: (any SharedState)?
    let now: @Sendable () -> Double

    enum Limit: String, CaseIterable, Sendable {
        case clientMessages = "client_messages", clientRecipients = "client_recipients"
        case senderMessages = "sender_messages", senderRecipients = "sender_recipients"
        case userMessages = "user_messages", userRecipients = "user_recipients"
        case clientConnections = "client_connections"
    }

    public var phases: Set<StagePhase> {
        var p: Set<StagePhase> = [.mailFrom, .rcptTo]
        if limits[.clientConnections] != nil { p.insert(.connect) }
        return p
    }

    public static let factory = StageFactory(
        name: "rate-limit", summary: "messages/recipients per client, sender and user per interval (451 4.7.1), connections (421)"
    ) { config, environment in try RateLimitStage(config: config, sharedState: environment.sharedState) }

    /// - Parameters:
    ///   - sharedState: count in a cluster's shared state instead of in memory.
    ///   - now: the wall clock in seconds since 1970 (the shared windows' clock).
    public init(config: ConfigTable, sharedState: (any SharedState)? = nil,
                now: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) throws {
        shared = sharedState
        self.now = now
        interval = .seconds(try config.int("interval_s", default: 3600, range: 1...604_800))
        var limits: [Limit: Int] = [:]
        for limit in Limit.allCases {
            let n = try config.int(limit.rawValue, default: 0, range: 0...100_000_000)
            if n > 0 { limits[limit] = n }
        }
        guard !limits.isEmpty else { throw config.error("client_messages", "no limit set: give at least one of \(Limit.allCases.map(\.rawValue).joined(separator: ", "))") }
        self.limits = limits
        exempt = try config.strings("exempt", default: []).map { text in
            guard let c = CIDR(text) else { throw config.error("exempt", "'\(text)' is not an address or CIDR") }
            return c
        }
    }

    /// Fixed-window counters by key.
    final class Counters: Sendable {
        private let state = Mutex<[String: (count: Int, start: ContinuousClock.Instant)]>([:])

        /// Adds `n` unless that passes `limit`; returns the count before, or nil when over.
        func take(_ key: String, _ n: Int, limit: Int, interval: Duration) -> Bool {
            state.withLock { map in
                let now = ContinuousClock.now
                var entry = map[key] ?? (0, now)
                if now - entry.start >= interval { entry = (0, now) }
                guard entry.count + n <= limit else {
                    map[key] = entry
                    return false
                }
                entry.count += n
                map[key] = entry
                if map.count > 200_000 { map = map.filter { now - $0.value.start < interval } }
                return true
            }
        }
    }

    private func isExempt(_ session: SessionInfo) -> Bool {
        exempt.contains { $0.contains(session.clientAddress) }
    }

    private func over(_ limit: Limit, _ key: String, _ what: String) async throws -> Bool {
        guard let max = limits[limit] else { return false }
        guard let shared else { return !counters.take("\(limit.rawValue)|\(key)", 1, limit: max, interval: interval) }
        return !(try await Self.take(shared, "rate-limit:\(limit.rawValue)|\(key)", limit: max, interval: interval, now: now()))
    }

    /// The fixed-window counter in shared state: the entry holds the count and the window's start,
    /// and expires with the window.
    static func take(_ shared: any SharedState, _ key: String, limit: Int, interval: Duration, now: Double) async throws -> Bool {
        let seconds = Double(interval.components.seconds)
        return try await shared.update(key, now: now) { entry -> (SharedEntry?, Bool) in
            let count = entry?.values.first ?? 0
            let start = entry.flatMap { $0.values.count > 1 ? $0.values[1] : nil } ?? now
            guard count + 1 <= Double(limit) else { return (entry, false) }
            return (SharedEntry(values: [count + 1, start], expiresAt: start + seconds), true)
        }
    }

    private func refusal(_ limit: Limit, _ who: String) -> StageVerdict {
        .tempfail(451, "4.7.1", "Rate limit exceeded: \(limit.rawValue) = \(limits[limit]!) per \(interval.components.seconds) s for \(who)")
    }

    public func connect(session: SessionInfo) async throws -> StageVerdict {
        guard !isExempt(session), try await over(.clientConnections, session.clientAddress, "connections") else { return .continue }
        return .disconnect(421, "4.7.0", "Too many connections from \(session.clientAddress) (client_connections = \(limits[.clientConnections]!) per \(interval.components.seconds) s)")
    }

    public func mailFrom(session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        guard !isExempt(session) else { return .continue }
        if try await over(.clientMessages, session.clientAddress, "messages") { return refusal(.clientMessages, "client \(session.clientAddress)") }
        if let sender = transaction.sender.mailbox.map({ "\($0)".lowercased() }), try await over(.senderMessages, sender, "messages") {
            return refusal(.senderMessages, "sender \(sender)")
        }
        if let user = session.authenticatedUser, try await over(.userMessages, user, "messages") { return refusal(.userMessages, "user \(user)") }
        return .continue
    }

    public func rcptTo(_ recipient: Recipient, session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        guard !isExempt(session) else { return .continue }
        if try await over(.clientRecipients, session.clientAddress, "recipients") { return refusal(.clientRecipients, "client \(session.clientAddress)") }
        if let sender = transaction.sender.mailbox.map({ "\($0)".lowercased() }), try await over(.senderRecipients, sender, "recipients") {
            return refusal(.senderRecipients, "sender \(sender)")
        }
        if let user = session.authenticatedUser, try await over(.userRecipients, user, "recipients") { return refusal(.userRecipients, "user \(user)") }
        return .continue
    }
}

