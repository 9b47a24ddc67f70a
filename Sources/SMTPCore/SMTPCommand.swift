/// A client command (RFC 5321 section 4.1.1 and the extensions Sluice speaks).
public enum SMTPCommand: Hashable, Sendable {
    case ehlo(String)
    case helo(String)
    case mail(ReversePath, MailParameters)
    case rcpt(ForwardPath, [ESMTPParameter])
    case data
    /// BDAT chunk-size [LAST] (RFC 3030).
    case bdat(size: UInt64, last: Bool)
    case rset
    case noop
    case quit
    case vrfy(String)
    case expn(String)
    case help(String?)
    case starttls
    case auth(String)
    case etrn(String)
    case turn

    /// The command verb, uppercased, for logs and replies.
    public var verb: String {
        switch self {
        case .ehlo: "EHLO"
        case .helo: "HELO"
        case .mail: "MAIL"
        case .rcpt: "RCPT"
        case .data: "DATA"
        case .bdat: "BDAT"
        case .rset: "RSET"
        case .noop: "NOOP"
        case .quit: "QUIT"
        case .vrfy: "VRFY"
        case .expn: "EXPN"
        case .help: "HELP"
        case .starttls: "STARTTLS"
        case .auth: "AUTH"
        case .etrn: "ETRN"
        case .turn: "TURN"
        }
    }
}

/// A command line that could not be parsed, with the reply it earns.
public struct SMTPCommandError: Error, Hashable, Sendable {
    public var reply: SMTPReply
    /// True when the session cannot continue: the framing is lost (e.g. a BDAT whose size is unreadable).
    public var closesConnection: Bool

    public init(reply: SMTPReply, closesConnection: Bool = false) {
        self.reply = reply
        self.closesConnection = closesConnection
    }

    static func syntax(_ enhanced: String, _ text: String) -> SMTPCommandError {
        SMTPCommandError(reply: SMTPReply(501, enhanced, text))
    }
}
