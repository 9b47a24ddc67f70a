import SMTPCore
#if canImport(Glibc)
import Glibc
#endif

/// The trace header a receiving SMTP server prepends (RFC 5321 section 4.4).
enum ReceivedHeader {
    static func make(
        heloName: String?, clientAddress: String, serverHostname: String, protocolName: String,
        queueID: String, singleRecipient: String?, time: time_t = time(nil)
    ) -> [UInt8] {
        let literal = clientAddress.contains(":") ? "IPv6:\(clientAddress)" : clientAddress
        var s = "Received: from \(heloName ?? "unknown") (unknown [\(literal)])\r\n"
        s += "\tby \(serverHostname) (Sluice) with \(protocolName) id \(queueID)"
        if let rcpt = singleRecipient { s += "\r\n\tfor <\(rcpt)>" }
        s += "; \(RFC5322Date.format(time))\r\n"
        return Array(s.utf8)
    }
}
