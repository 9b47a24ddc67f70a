import SluiceStageAPI

/// `use = "subject-tag"`: marks mail from outside. A client that is neither in `[server]
/// relay_from` nor authenticated is "outside": its messages get a tag in front of the Subject,
/// and it may not write to the addresses kept for internal senders.
///
/// ```toml
/// [[stage]]
/// use = "subject-tag"
/// tag = "[EXTERNAL]"
/// internal_only = ["all-staff@example.test"]
/// ```
///
/// Keys:
/// - `tag` (default "[EXTERNAL]"): put in front of the Subject of outside mail. A Subject that
///   already contains it is left alone, so a reply to a reply does not collect tags; a message
///   without a Subject gets one made of the tag.
/// - `internal_only` (default []): addresses only inside senders may write to; from outside,
///   RCPT gets `550 5.7.1` (for that recipient only, the others go on).
public struct SubjectTagStage: Stage {
    let tag: String
    /// The `internal_only` addresses, as `key(_:)` writes them.
    let internalOnly: Set<String>

    public var phases: Set<StagePhase> { [.rcptTo, .endOfMessage] }
    // changeHeader is a header change; a stage that only added fields would say .addsHeaders.
    public var capabilities: StageCapabilities { [.changesHeaders] }

    public static let factory = StageFactory(
        name: "subject-tag", summary: "tags the Subject of mail from outside; internal-only recipients (550 5.7.1)"
    ) { config, _ in try SubjectTagStage(config: config) }

    public init(config: ConfigTable) throws {
        tag = try config.string("tag", default: "[EXTERNAL]")
        guard !tag.isEmpty, tag.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F }) else {
            throw config.error("tag", "must be a non-empty line of printable text")
        }
        internalOnly = Set(try config.strings("internal_only", default: []).map { text in
            // Read with the RCPT TO grammar, so a typo stops the gateway at startup, naming the key.
            guard let mailbox = Mailbox(path: text) else { throw config.error("internal_only", "'\(text)' is not an address") }
            return Self.key(mailbox)
        })
    }

    /// Domains are case-insensitive (RFC 5321 2.4); local parts are compared as written.
    static func key(_ mailbox: Mailbox) -> String { mailbox.localPartText + "@" + mailbox.normalizedDomain }

    public func rcptTo(_ recipient: Recipient, session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        guard !session.trustedClient, internalOnly.contains(Self.key(recipient.mailbox)) else { return .continue }
        return .reject(550, "5.7.1", "\(recipient): only internal senders may write to this address")
    }

    public func endOfMessage(_ message: MessageView, session: SessionInfo, transaction: TransactionInfo) async throws -> StageDecision {
        guard !session.trustedClient else { return StageDecision() }
        guard let subject = message.headers.first(where: { $0.name.caseInsensitiveEquals("Subject") }) else {
            return StageDecision(edits: [.changeHeader(name: "Subject", occurrence: 1, value: tag)], note: "tagged (no Subject)")
        }
        if subject.unfoldedValue.contains(tag) { return StageDecision(note: "already tagged") }
        // The raw value keeps the sender's folding, so a long Subject stays within the
        // 998-octet line limit (RFC 5322 2.1.1); only its leading space is replaced.
        let value = tag + " " + subject.value.drop(while: { $0 == " " || $0 == "\t" })
        return StageDecision(edits: [.changeHeader(name: "Subject", occurrence: 1, value: value)], note: "tagged")
    }
}
