import SMTPCore

/// What a stage knows about the SMTP session.
public struct SessionInfo: Sendable {
    /// A unique id for this connection, used in logs.
    public var id: String
    /// The client's IP address as text (`192.0.2.1`, `2001:db8::1`).
    public var clientAddress: String
    public var clientPort: Int
    /// The local address the client connected to.
    public var serverAddress: String
    public var serverPort: Int
    /// The gateway's own name (`[server] hostname`).
    public var serverHostname: String
    /// The HELO/EHLO argument, once given.
    public var heloName: String?
    /// True after EHLO (as opposed to HELO).
    public var esmtp: Bool
    /// True when the client is in `[server] relay_from`, or authenticated.
    public var trustedClient: Bool
    /// The session's TLS, once established.
    public var tls: TLSInfo?
    /// The authenticated user (SMTP AUTH, RFC 4954), once authenticated.
    public var authenticatedUser: String?
    /// The SASL mechanism that authenticated the user (`PLAIN`, `LOGIN`).
    public var authMechanism: String?
    /// Per-session storage for stages.
    public var state: StageState

    public init(
        id: String, clientAddress: String, clientPort: Int, serverAddress: String, serverPort: Int,
        serverHostname: String, heloName: String? = nil, esmtp: Bool = false, trustedClient: Bool = false,
        state: StageState = StageState()
    ) {
        self.id = id
        self.clientAddress = clientAddress
        self.clientPort = clientPort
        self.serverAddress = serverAddress
        self.serverPort = serverPort
        self.serverHostname = serverHostname
        self.heloName = heloName
        self.esmtp = esmtp
        self.trustedClient = trustedClient
        self.state = state
    }
}

/// An accepted recipient with its RCPT parameters.
public struct Recipient: Sendable, Hashable, Codable, CustomStringConvertible {
    public var mailbox: Mailbox
    public var parameters: [ESMTPParameter]

    public init(_ mailbox: Mailbox, parameters: [ESMTPParameter] = []) {
        self.mailbox = mailbox
        self.parameters = parameters
    }

    public var description: String { "<\(mailbox)>" }
}

/// What a stage knows about the current mail transaction.
public struct TransactionInfo: Sendable {
    /// The queue id the message will have in the spool.
    public var queueID: String
    public var sender: ReversePath
    public var mailParameters: MailParameters
    /// Recipients accepted so far (at RCPT: before this one).
    public var recipients: [Recipient]
    /// Per-transaction storage for stages.
    public var state: StageState
    /// Results recorded for Authentication-Results.
    public var results: ResultRecorder

    public init(
        queueID: String, sender: ReversePath, mailParameters: MailParameters = MailParameters(),
        recipients: [Recipient] = [], state: StageState = StageState(), results: ResultRecorder = ResultRecorder()
    ) {
        self.queueID = queueID
        self.sender = sender
        self.mailParameters = mailParameters
        self.recipients = recipients
        self.state = state
        self.results = results
    }
}
