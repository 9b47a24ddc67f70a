// Stage authors get the SMTP grammar types (SMTPReply, Mailbox, ...) with the stage API.
@_exported import SMTPCore

/// What a stage decides at a phase. The first verdict other than `continue` ends the phase.
public enum StageVerdict: Sendable, Hashable, CustomStringConvertible {
    /// No objection; the next stage runs.
    case `continue`
    /// Accept now: the remaining stages are skipped for this phase.
    case accept
    /// Refuse permanently (5xx). At RCPT it refuses that recipient only.
    case reject(SMTPReply)
    /// Refuse for now (4xx).
    case tempfail(SMTPReply)
    /// Accept the message and throw it away (answers 250, nothing is delivered).
    case discard
    /// Accept the message and keep it on hold in the quarantine instead of delivering it.
    case quarantine(reason: String)
    /// Send the reply and close the connection.
    case disconnect(SMTPReply)

    /// `reject(550, "5.7.1", "text")`.
    public static func reject(_ code: Int, _ enhanced: String, _ text: String) -> StageVerdict {
        .reject(SMTPReply(code, enhanced, text))
    }

    /// `disconnect(421, "4.7.0", "text")`.
    public static func disconnect(_ code: Int, _ enhanced: String, _ text: String) -> StageVerdict {
        .disconnect(SMTPReply(code, enhanced, text))
    }

    /// `tempfail(451, "4.7.1", "text")`.
    public static func tempfail(_ code: Int, _ enhanced: String, _ text: String) -> StageVerdict {
        .tempfail(SMTPReply(code, enhanced, text))
    }

    public var description: String {
        switch self {
        case .continue: "continue"
        case .accept: "accept"
        case .reject(let r): "reject \(r)"
        case .tempfail(let r): "tempfail \(r)"
        case .discard: "discard"
        case .quarantine(let why): "quarantine (\(why))"
        case .disconnect(let r): "disconnect \(r)"
        }
    }
}

/// What a stage returns at end of message: a verdict and the edits to apply, in order.
public struct StageDecision: Sendable, Hashable {
    public var verdict: StageVerdict
    public var edits: [MessageEdit]
    /// A short note for the stage trace (`sluice queue show`, the transaction log line), e.g. a score.
    public var note: String?

    public init(_ verdict: StageVerdict = .continue, edits: [MessageEdit] = [], note: String? = nil) {
        self.verdict = verdict
        self.edits = edits
        self.note = note
    }
}
