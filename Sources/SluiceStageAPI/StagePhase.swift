/// The points of an SMTP session at which the chain runs stages.
public enum StagePhase: String, CaseIterable, Sendable, Codable, Comparable {
    /// A client connected, before the greeting.
    case connect
    /// HELO or EHLO.
    case helo
    /// MAIL FROM.
    case mailFrom = "mail"
    /// RCPT TO; a verdict applies to that recipient only.
    case rcptTo = "rcpt"
    /// Message data as it streams: the header section once, then body chunks.
    case data
    /// The whole message has arrived; the stage may return edits.
    case endOfMessage = "eom"
    /// After the 250 was sent; never delays the client.
    case queued
    /// The connection ended; never delays the client.
    case disconnect

    public static func < (a: StagePhase, b: StagePhase) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}
