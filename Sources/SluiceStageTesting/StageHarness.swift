import Foundation
import SMTPCore
import SluicePipeline
import SluiceStageAPI

/// Drives one stage through a session without sockets: connect, HELO, MAIL, RCPT, the message
/// (header section, body chunks, end of message), disconnect; each step returns what the stage
/// decided. End-of-message edits are applied as the gateway applies them, and the fields stages
/// recorded (`ResultRecorder.prepend`, Authentication-Results) are put on top, so a test can look
/// at the resulting message.
///
/// ```swift
/// var h = StageHarness(stage: try MyStage(config: .testing(["threshold": .int(3)])))
/// #expect(try await h.connect() == .continue)
/// #expect(try await h.mailFrom("sender@example.org") == .continue)
/// let eom = try await h.message("Subject: hi\r\n\r\nbody\r\n", to: ["user@example.test"])
/// #expect(eom.decision.verdict == .continue)
/// #expect(eom.header("X-Checked") == ["yes"])
/// ```
///
/// Only the phases the stage hooks are called, as in the gateway.
public struct StageHarness {
    public let stage: any Stage
    public private(set) var session: SessionInfo
    public private(set) var transaction: TransactionInfo?
    private var recipients: [Recipient] = []
    private var counter = 0

    public init(stage: any Stage, clientAddress: String = "192.0.2.10", heloName: String? = nil, trusted: Bool = false) {
        self.stage = stage
        session = SessionInfo(
            id: "TEST", clientAddress: clientAddress, clientPort: 40000, serverAddress: "198.51.100.1", serverPort: 25,
            serverHostname: "mx.example.test", heloName: heloName, trustedClient: trusted
        )
    }

    /// Lets a test set what the gateway would know (TLS, authenticated user, ...).
    public mutating func update(_ change: (inout SessionInfo) -> Void) { change(&session) }

    private func hooks(_ phase: StagePhase) -> Bool { stage.phases.contains(phase) }

    public mutating func connect() async throws -> StageVerdict {
        hooks(.connect) ? try await stage.connect(session: session) : .continue
    }

    public mutating func helo(_ name: String, esmtp: Bool = true) async throws -> StageVerdict {
        session.heloName = name
        session.esmtp = esmtp
        return hooks(.helo) ? try await stage.helo(session: session) : .continue
    }

    /// MAIL FROM; `""` is the null sender.
    public mutating func mailFrom(_ sender: String, parameters: MailParameters = MailParameters()) async throws -> StageVerdict {
        counter += 1
        let path: ReversePath = sender.isEmpty ? .null : try Self.mailbox(sender).map(ReversePath.mailbox) ?? .null
        let tx = TransactionInfo(queueID: "TESTQ\(counter)", sender: path, mailParameters: parameters)
        transaction = tx
        recipients = []
        return hooks(.mailFrom) ? try await stage.mailFrom(session: session, transaction: tx) : .continue
    }

    /// RCPT TO; an accepted recipient joins the transaction.
    public mutating func rcptTo(_ address: String) async throws -> StageVerdict {
        guard var tx = transaction else { throw HarnessError("RCPT before MAIL") }
        guard let mailbox = try Self.mailbox(address) else { throw HarnessError("'\(address)' is not an address") }
        let recipient = Recipient(mailbox)
        tx.recipients = recipients
        let verdict = hooks(.rcptTo) ? try await stage.rcptTo(recipient, session: session, transaction: tx) : .continue
        switch verdict {
        case .continue, .accept, .discard, .quarantine: recipients.append(recipient)
        default: break
        }
        tx.recipients = recipients
        transaction = tx
        return verdict
    }

    /// What the stage did with a message.
    public struct MessageOutcome: Sendable {
        /// The data-phase verdict (header section and body chunks), if the stage refused there.
        public var dataVerdict: StageVerdict
        /// The end-of-message decision (not called when the data phase refused).
        public var decision: StageDecision
        /// The message after the edits: header fields and body.
        public var headers: [HeaderField]
        public var body: [UInt8]
        public var sender: ReversePath
        public var recipients: [Recipient]
        /// The results recorded for Authentication-Results.
        public var results: [AuthenticationResult]

        /// Values of the fields called `name`, after the edits.
        public func header(_ name: String) -> [String] {
            headers.filter { $0.name.caseInsensitiveEquals(name) }.map(\.unfoldedValue)
        }

        /// The message as text (CRLF lines).
        public var text: String {
            String(decoding: HeaderSection.encode(headers) + body, as: UTF8.self)
        }
    }

    /// Sends a message (CRLF or LF line ends) through the data and end-of-message phases.
    /// When `to` is given and no RCPT was sent yet, those recipients are added first.
    public mutating func message(_ text: String, to: [String] = [], chunkSize: Int = 8192) async throws -> MessageOutcome {
        if transaction == nil { _ = try await mailFrom("sender@example.org") }
        for r in to where recipients.isEmpty || !recipients.contains(where: { "\($0.mailbox)" == r }) {
            _ = try await rcptTo(r)
        }
        guard let tx = transaction else { throw HarnessError("no transaction") }
        let bytes = Self.crlf(text)
        let section = HeaderSection.parse(bytes, atEnd: true)
        let body = Array(bytes[min(section.bodyOffset, bytes.count)...])
        var dataVerdict = StageVerdict.continue
        if hooks(.data) {
            dataVerdict = try await stage.headers(section.fields, session: session, transaction: tx)
            var rest = body[...]
            while dataVerdict == .continue, !rest.isEmpty {
                let chunk = Array(rest.prefix(chunkSize))
                rest = rest.dropFirst(chunk.count)
                dataVerdict = try await stage.bodyChunk(chunk, session: session, transaction: tx)
            }
        }
        var draft = MessageDraft(headers: section.fields, sender: tx.sender, recipients: recipients)
        var decision = StageDecision()
        if dataVerdict == .continue, hooks(.endOfMessage) {
            let view = MessageView(headers: section.fields, body: MessageBody(bytes: body), receivedSize: bytes.count)
            decision = try await stage.endOfMessage(view, session: session, transaction: tx)
            for edit in decision.edits { draft.apply(edit) }
        }
        // What the gateway puts on top when it spools: recorded trace fields, Authentication-Results.
        if dataVerdict == .continue { draft.prependRecorded(tx.results, hostname: session.serverHostname) }
        var finalBody = body
        if let path = draft.replacementBodyPath, let data = FileManager.default.contents(atPath: path) {
            finalBody = Array(data)
        }
        transaction = nil
        return MessageOutcome(
            dataVerdict: dataVerdict, decision: decision, headers: draft.headers, body: finalBody,
            sender: draft.sender, recipients: draft.recipients, results: tx.results.all
        )
    }

    public mutating func disconnect() async {
        if hooks(.disconnect) { await stage.disconnect(session: session) }
    }

    static func mailbox(_ text: String) throws -> Mailbox? { Mailbox(path: text) }

    static func crlf(_ text: String) -> [UInt8] {
        var out: [UInt8] = []
        var previous: UInt8 = 0
        for b in text.utf8 {
            if b == 0x0A && previous != 0x0D { out.append(0x0D) }
            out.append(b)
            previous = b
        }
        return out
    }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension ConfigTable {
    /// A stage's table for tests: `ConfigTable.testing(["zones": .array([.string("zen.example")])])`.
    public static func testing(_ values: [String: ConfigValue]) -> ConfigTable {
        ConfigTable(path: "stage", file: "test", values: values)
    }
}

extension StageEnvironment {
    /// An environment for tests, with a resolver of your choice (e.g. `StaticResolver`).
    public static func testing(resolver: any DNSResolver = NoResolver(), hostname: String = "mx.example.test") -> StageEnvironment {
        StageEnvironment(
            hostname: hostname, configDirectory: FileManager.default.currentDirectoryPath,
            logger: .init(label: "stage-test"), resolver: resolver
        )
    }
}
