import Foundation
import SluiceStageAPI

/// `use = "greylist"`: triplet greylisting, as Postfix users know it from postgrey. A recipient
/// from a (client network, sender, recipient) triplet never seen before gets `451 4.7.1`; the
/// same triplet retried after `delay_s` passes, and is then remembered for `expiry_s` (renewed
/// on each pass). Real mail servers retry; most spam engines do not. The state lives in an
/// SQLite file, so it survives a restart; on a node of a cluster (`[cluster]`) it lives in the
/// state every node shares (`database` is then unused), so a retry at another MX passes.
///
/// ```toml
/// [[stage]]
/// use = "greylist"
/// database = "greylist.sqlite"     # next to pipeline.conf
/// delay_s = 300
/// auto_allowlist_after = 5
/// allow_clients = ["192.0.2.0/24"]
/// ```
///
/// Keys:
/// - `database` (default "greylist.sqlite"): the SQLite file (created, WAL mode); a relative
///   path is relative to the directory of `pipeline.conf`. The directory must exist.
/// - `delay_s` (default 300, 0...604800): how long a new triplet is refused.
/// - `retry_window_s` (default 172800, two days; more than `delay_s`, at most 30 days): how
///   long after the first attempt a retry still counts; later, the triplet starts over.
/// - `expiry_s` (default 3024000, 35 days; 1...31536000): how long a passed triplet, and an
///   auto-allowlisted client network, is remembered after its last use.
/// - `auto_allowlist_after` (default 5; 0 disables): after this many messages passed from a
///   client network it skips greylisting (postgrey's `--auto-whitelist-clients`). A message
///   counts once however many recipients pass.
/// - `ipv4_prefix` (default 24, 1...32), `ipv6_prefix` (default 64, 1...128): the bits of the
///   client address that make its network, so a retry from a neighbouring host counts.
/// - `skip_authenticated` (default true): authenticated sessions and trusted clients
///   (`[server] relay_from`) are never greylisted.
/// - `allow_clients` (default []): addresses or CIDRs never greylisted.
/// - `text` (default "Greylisted: please retry in %s seconds"): the reply text after
///   `451 4.7.1`; `%s` the seconds left to wait, `%r` the recipient's domain. Printable ASCII.
/// - `purge_interval_s` (default 3600, 1...86400): expired rows are deleted at most this
///   often, on a write.
///
/// A database error at RCPT is thrown, so the stage's `on_error` applies (default: 451 4.3.0).
public struct GreylistStage: Stage {
    let store: GreylistStore
    let ipv4Prefix: Int
    let ipv6Prefix: Int
    let skipAuthenticated: Bool
    let allowClients: [CIDR]
    let textTemplate: String
    let now: @Sendable () -> Double

    public var phases: Set<StagePhase> { [.rcptTo] }

    public static let factory = StageFactory(
        name: "greylist",
        summary: "triplet greylisting (client network, sender, recipient) in SQLite: 451 4.7.1 until a retry after delay_s"
    ) { config, environment in try GreylistStage(config: config, environment: environment) }

    /// Reads the keys above and opens the database.
    /// - Parameter now: the wall clock in seconds since 1970 (tests pass their own).
    public init(config: ConfigTable, environment: StageEnvironment,
                now: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) throws {
        let delay = try config.int("delay_s", default: 300, range: 0...604_800)
        let retryWindow = try config.int("retry_window_s", default: 172_800, range: 1...2_592_000)
        guard retryWindow > delay else {
            throw config.error("retry_window_s", "must be longer than delay_s (\(delay)), or no retry could ever pass")
        }
        let policy = GreylistStore.Policy(
            delay: Double(delay),
            retryWindow: Double(retryWindow),
            expiry: Double(try config.int("expiry_s", default: 3_024_000, range: 1...31_536_000)),
            autoAllowlistAfter: try config.int("auto_allowlist_after", default: 5, range: 0...1_000_000),
            purgeInterval: Double(try config.int("purge_interval_s", default: 3600, range: 1...86_400))
        )
        ipv4Prefix = try config.int("ipv4_prefix", default: 24, range: 1...32)
        ipv6Prefix = try config.int("ipv6_prefix", default: 64, range: 1...128)
        skipAuthenticated = try config.bool("skip_authenticated", default: true)
        allowClients = try config.strings("allow_clients", default: []).map { text in
            guard let cidr = CIDR(text) else { throw config.error("allow_clients", "'\(text)' is not an address or CIDR") }
            return cidr
        }
        textTemplate = try config.string("text", default: "Greylisted: please retry in %s seconds")
        guard !textTemplate.isEmpty, textTemplate.count <= 400,
              textTemplate.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value < 0x7F }) else {
            throw config.error("text", "must be 1 to 400 printable ASCII characters (it becomes the reply line)")
        }
        let name = try config.string("database", default: "greylist.sqlite")
        guard !name.isEmpty else { throw config.error("database", "must name a file, e.g. \"greylist.sqlite\"") }
        if let shared = environment.sharedState {
            // A node of a cluster: every MX sees the same triplets.
            store = GreylistStore(shared: shared, policy: policy)
        } else {
            do {
                store = try GreylistStore(path: environment.resolvePath(name), policy: policy)
            } catch {
                throw config.error("database", error.description)
            }
        }
        self.now = now
    }

    /// Set in a transaction once a recipient passed, so the client network's count grows once per message.
    static let counted = StateKey<Bool>("greylist.counted")

    public func rcptTo(_ recipient: Recipient, session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        if skipAuthenticated, session.authenticatedUser != nil || session.trustedClient { return .continue }
        if allowClients.contains(where: { $0.contains(session.clientAddress) }) { return .continue }
        let triplet = GreylistTriplet(client: session.clientAddress, sender: transaction.sender, recipient: recipient.mailbox,
                                      ipv4Prefix: ipv4Prefix, ipv6Prefix: ipv6Prefix)
        let outcome = try await store.check(triplet, now: now(), countsForClient: transaction.state[Self.counted] == nil)
        switch outcome {
        case .allowlistedClient:
            return .continue
        case .passed:
            transaction.state[Self.counted] = true
            return .continue
        case .greylisted(let retryIn, _):
            return .tempfail(451, "4.7.1", reply(retryIn: retryIn, recipient: recipient.mailbox))
        }
    }

    func reply(retryIn: Int, recipient: Mailbox) -> String {
        // The domain was parsed from the RCPT line; keep the reply printable ASCII all the same.
        let domain = String(recipient.normalizedDomain.unicodeScalars.filter { $0.value >= 0x21 && $0.value < 0x7F }.map(Character.init))
        return textTemplate
            .split(separator: "%s", omittingEmptySubsequences: false).joined(separator: String(retryIn))
            .split(separator: "%r", omittingEmptySubsequences: false).joined(separator: domain)
    }
}
