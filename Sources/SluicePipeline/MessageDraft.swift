import SMTPCore
import SluiceStageAPI

/// The message as edited so far at end of message: header section, envelope and body source.
public struct MessageDraft: Sendable {
    public var headers: [HeaderField]
    /// True once an edit touched the header section (the spool then writes the edited one).
    public private(set) var headersChanged = false
    public var sender: ReversePath
    public var senderParameters: [ESMTPParameter] = []
    public var recipients: [Recipient]
    /// Set by `replaceBody`: the file that now holds the body.
    public private(set) var replacementBodyPath: String?

    public init(headers: [HeaderField], sender: ReversePath, recipients: [Recipient]) {
        self.headers = headers
        self.sender = sender
        self.recipients = recipients
    }

    /// Index into `headers` of the `occurrence`-th (1-based) field named `name`.
    private func index(of name: String, occurrence: Int) -> Int? {
        guard occurrence >= 1 else { return nil }
        var seen = 0
        for (i, h) in headers.enumerated() where h.name.caseInsensitiveEquals(name) {
            seen += 1
            if seen == occurrence { return i }
        }
        return nil
    }

    /// Same mailbox: local parts exactly, domains case-insensitively (RFC 5321 2.4).
    static func sameAddress(_ a: Mailbox, _ b: Mailbox) -> Bool {
        a.localPart == b.localPart && a.normalizedDomain == b.normalizedDomain
    }

    /// Puts what the transaction's stages recorded on top of the header section: the trace fields
    /// (`ResultRecorder.prepend`), and above them one `Authentication-Results` field for
    /// `hostname` when there are results.
    public mutating func prependRecorded(_ results: ResultRecorder, hostname: String) {
        var top = results.prepended
        if let value = AuthenticationResultsHeader.value(hostname: hostname, results: results.all) {
            top.insert(.make(name: AuthenticationResultsHeader.name, value: value), at: 0)
        }
        guard !top.isEmpty else { return }
        headers.insert(contentsOf: top, at: 0)
        headersChanged = true
    }

    /// Applies one edit. Header edits follow milter semantics: changing a field that does not
    /// exist adds it. Header fields land exactly as the edit gives them.
    public mutating func apply(_ edit: MessageEdit) {
        switch edit {
        case .addHeader(let field):
            headers.append(field)
            headersChanged = true
        case .insertHeader(let index, let field):
            headers.insert(field, at: min(max(index, 0), headers.count))
            headersChanged = true
        case .changeHeader(let occurrence, let field):
            if let i = index(of: field.name, occurrence: occurrence) {
                headers[i].value = field.value
            } else {
                headers.append(field)
            }
            headersChanged = true
        case .deleteHeader(let name, let occurrence):
            if let i = index(of: name, occurrence: occurrence) {
                headers.remove(at: i)
                headersChanged = true
            }
        case .addRecipient(let mailbox, let parameters):
            if !recipients.contains(where: { Self.sameAddress($0.mailbox, mailbox) }) {
                recipients.append(Recipient(mailbox, parameters: parameters))
            }
        case .deleteRecipient(let mailbox):
            recipients.removeAll { Self.sameAddress($0.mailbox, mailbox) }
        case .changeSender(let path, let parameters):
            sender = path
            senderParameters = parameters
        case .replaceBody(let path):
            replacementBodyPath = path
        }
    }
}
