import SluiceStageAPI

/// What a callback answers the MTA: a verdict status (SMFIS_*) and, with a refusal, the reply the
/// MTA gives its client (`smfi_setreply`).
enum MilterResponse: Hashable, Sendable, CustomStringConvertible {
    case `continue`
    /// SMFIS_TEMPFAIL for a 4xx reply, SMFIS_REJECT for a 5xx one: libmilter only passes a
    /// custom reply on when its class agrees with the status.
    case refuse(SMTPReply)
    /// SMFIS_DISCARD: accepted, then thrown away.
    case discard

    /// The answer to a verdict at connect, HELO, MAIL, RCPT or the data phase, and the verdict to
    /// hold until end of message (discard and quarantine: `smfi_quarantine` is only allowed
    /// there, and later stages still see the message, as in the gateway).
    static func answer(to verdict: StageVerdict) -> (MilterResponse, held: StageVerdict?) {
        switch verdict {
        case .continue, .accept: (.continue, nil)
        case .reject(let r): (.refuse(permanent(r)), nil)
        case .tempfail(let r): (.refuse(transient(r)), nil)
        case .disconnect(let r):
            // 421 makes the MTA close the client's connection (RFC 5321 3.8); a permanent
            // refusal stays permanent.
            (.refuse(r.code >= 500 ? permanent(r) : SMTPReply(421, classed(r.enhancedCode, 4, "4.7.0"), r.lines)), nil)
        case .discard, .quarantine: (.continue, verdict)
        }
    }

    /// A refusal as a 5xx reply (a 4xx one stays 4xx: the stage's reply wins over its label).
    static func permanent(_ r: SMTPReply) -> SMTPReply {
        if (400..<600).contains(r.code) { return SMTPReply(r.code, classed(r.enhancedCode, r.code / 100, nil), r.lines) }
        return SMTPReply(550, classed(r.enhancedCode, 5, "5.7.1"), r.lines)
    }

    static func transient(_ r: SMTPReply) -> SMTPReply {
        if (400..<600).contains(r.code) { return SMTPReply(r.code, classed(r.enhancedCode, r.code / 100, nil), r.lines) }
        return SMTPReply(451, classed(r.enhancedCode, 4, "4.7.1"), r.lines)
    }

    /// The enhanced code if its class agrees with the reply's (RFC 3463), else `fallback`.
    private static func classed(_ code: EnhancedStatusCode?, _ statusClass: Int, _ fallback: String?) -> EnhancedStatusCode? {
        if let code, code.statusClass == statusClass { return code }
        return fallback.flatMap { EnhancedStatusCode($0) }
    }

    var description: String {
        switch self {
        case .continue: "continue"
        case .refuse(let r): r.description
        case .discard: "discard"
        }
    }
}
