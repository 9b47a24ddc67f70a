import SMTPCore
import SluiceStageAPI

/// `use = "access"`: allow or deny by client network, HELO name, sender and recipient.
///
/// Keys (all optional):
/// - `allow_clients`, `deny_clients`: CIDRs (`"192.0.2.0/24"`, `"2001:db8::/32"`). Checked at connect;
///   an allowed client skips the stage's other checks for the whole session.
/// - `allow_helo`, `deny_helo`: HELO/EHLO name patterns with `*` and `?` (`"*.bad.test"`).
/// - `allow_senders`, `deny_senders`: address patterns for MAIL FROM (see below); `"<>"` is the null sender.
/// - `allow_recipients`, `deny_recipients`: address patterns for RCPT TO (a verdict for that recipient only).
/// - `reply`: the refusal, default `"554 5.7.1 Access denied"`.
///
/// Address patterns: `user@example.test`, `@example.test` or `example.test` (whole domain),
/// `*.example.test` (subdomains), `user@` (local part at any domain). Allow lists win over deny lists.
/// At connect a denied client gets the reply instead of the greeting and is disconnected.
public struct AccessStage: Stage {
    let allowClients: [CIDR]
    let denyClients: [CIDR]
    let allowHelo: [GlobPattern]
    let denyHelo: [GlobPattern]
    let allowSenders: [AddressPattern]
    let denySenders: [AddressPattern]
    let allowRecipients: [AddressPattern]
    let denyRecipients: [AddressPattern]
    let reply: SMTPReply

    private static let allowed = StateKey<Bool>("access.allowed-client")

    public let phases: Set<StagePhase>

    public static let factory = StageFactory(
        name: "access", summary: "allow/deny by client CIDR, HELO name, sender and recipient patterns"
    ) { config, _ in try AccessStage(config: config) }

    public init(config: ConfigTable) throws {
        func cidrs(_ key: String) throws -> [CIDR] {
            try config.strings(key, default: []).map { text in
                guard let c = CIDR(text) else { throw config.error(key, "'\(text)' is not an address or CIDR") }
                return c
            }
        }
        func addresses(_ key: String) throws -> [AddressPattern] {
            try config.strings(key, default: []).map { text in
                guard let p = AddressPattern(text) else { throw config.error(key, "'\(text)' is not an address pattern") }
                return p
            }
        }
        allowClients = try cidrs("allow_clients")
        denyClients = try cidrs("deny_clients")
        allowHelo = try config.strings("allow_helo", default: []).map(GlobPattern.init)
        denyHelo = try config.strings("deny_helo", default: []).map(GlobPattern.init)
        allowSenders = try addresses("allow_senders")
        denySenders = try addresses("deny_senders")
        allowRecipients = try addresses("allow_recipients")
        denyRecipients = try addresses("deny_recipients")
        let replyText = try config.string("reply", default: "554 5.7.1 Access denied")
        guard let reply = SMTPReply(parsing: replyText), reply.code >= 400 else {
            throw config.error("reply", "'\(replyText)' is not a 4xx/5xx reply like \"554 5.7.1 Access denied\"")
        }
        self.reply = reply
        var phases = Set<StagePhase>()
        if !allowClients.isEmpty || !denyClients.isEmpty { phases.insert(.connect) }
        if !allowHelo.isEmpty || !denyHelo.isEmpty { phases.insert(.helo) }
        if !allowSenders.isEmpty || !denySenders.isEmpty { phases.insert(.mailFrom) }
        if !allowRecipients.isEmpty || !denyRecipients.isEmpty { phases.insert(.rcptTo) }
        self.phases = phases
    }

    private var refusal: StageVerdict {
        reply.code < 500 ? .tempfail(reply) : .reject(reply)
    }

    public func connect(session: SessionInfo) async throws -> StageVerdict {
        guard let address = IPAddress(session.clientAddress) else { return .continue }
        if allowClients.contains(where: { $0.contains(address) }) {
            session.state[Self.allowed] = true
            return .accept
        }
        return denyClients.contains { $0.contains(address) } ? refusal : .continue
    }

    public func helo(session: SessionInfo) async throws -> StageVerdict {
        if session.state[Self.allowed] == true { return .accept }
        let name = session.heloName ?? ""
        if allowHelo.contains(where: { $0.matches(name) }) { return .accept }
        return denyHelo.contains { $0.matches(name) } ? refusal : .continue
    }

    public func mailFrom(session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        if session.state[Self.allowed] == true { return .accept }
        if allowSenders.contains(where: { $0.matches(transaction.sender) }) { return .accept }
        return denySenders.contains { $0.matches(transaction.sender) } ? refusal : .continue
    }

    public func rcptTo(_ recipient: Recipient, session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        if session.state[Self.allowed] == true { return .accept }
        if allowRecipients.contains(where: { $0.matches(recipient.mailbox) }) { return .accept }
        return denyRecipients.contains { $0.matches(recipient.mailbox) } ? refusal : .continue
    }
}
