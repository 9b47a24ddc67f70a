import SMTPCore
import SluiceMessage

/// Everything the spool keeps about a message besides its content: the envelope, where it
/// came from, and what each stage did. Stored as JSON after the content in the queue file.
public struct SpoolEnvelope: Codable, Sendable {
    public struct Client: Codable, Sendable {
        public var address: String
        public var port: Int
        public var helo: String?
        public init(address: String, port: Int, helo: String?) {
            self.address = address
            self.port = port
            self.helo = helo
        }
    }

    /// A recipient and where it goes (stored as text: `maildir:/var/mail`).
    public struct SpooledRecipient: Codable, Sendable, Hashable {
        public var address: Mailbox
        public var parameters: [ESMTPParameter]
        public var destination: Destination
        public init(address: Mailbox, parameters: [ESMTPParameter], destination: Destination) {
            self.address = address
            self.parameters = parameters
            self.destination = destination
        }
    }

    public var id: String
    public var sender: ReversePath
    public var senderParameters: [ESMTPParameter]
    public var recipients: [SpooledRecipient]
    public var client: Client
    /// `SMTP`, `ESMTP`, `UTF8SMTP`, ...
    public var protocolName: String
    /// Seconds since 1970.
    public var receivedAt: Double
    /// Octets of message content in the file.
    public var size: Int
    public var body: BodyType?
    public var smtputf8: Bool
    /// Set when a stage quarantined the message.
    public var quarantine: String?
    public var trace: [TraceEntry]
    /// Header fields stages put at the top of the message (CRLF lines), kept here instead of
    /// rewriting the spooled content; every reader puts them before the content.
    public var prepend: String?
    /// MAIL's `RET` (RFC 3461): whether a failure notice returns the whole message.
    public var dsnReturn: DSNReturn?
    /// MAIL's `ENVID` (RFC 3461), decoded: repeated in every notice about the message.
    public var envelopeID: String?

    public init(
        id: String, sender: ReversePath, senderParameters: [ESMTPParameter], recipients: [SpooledRecipient],
        client: Client, protocolName: String, receivedAt: Double, size: Int, body: BodyType?, smtputf8: Bool,
        quarantine: String?, trace: [TraceEntry], dsnReturn: DSNReturn? = nil, envelopeID: String? = nil
    ) {
        self.id = id
        self.sender = sender
        self.senderParameters = senderParameters
        self.recipients = recipients
        self.client = client
        self.protocolName = protocolName
        self.receivedAt = receivedAt
        self.size = size
        self.body = body
        self.smtputf8 = smtputf8
        self.quarantine = quarantine
        self.trace = trace
        self.dsnReturn = dsnReturn
        self.envelopeID = envelopeID
    }
}
