import SMTPCore
import SluiceStageAPI
#if canImport(Glibc)
import Glibc
#endif

/// The trace header a receiving SMTP server prepends (RFC 5321 section 4.4).
enum ReceivedHeader {
    static func make(
        heloName: String?, clientAddress: String, serverHostname: String, tls: TLSInfo? = nil,
        authenticatedUser: String? = nil, protocolName: String,
        queueID: String, singleRecipient: String?, time: time_t = time(nil)
    ) -> [UInt8] {
        let literal = clientAddress.contains(":") ? "IPv6:\(clientAddress)" : clientAddress
        var s = "Received: from \(heloName ?? "unknown") (unknown [\(literal)])\r\n"
        // As Postfix writes them: the TLS parameters, then the authenticated sender.
        if let tls { s += "\t(using \(tls))\r\n" }
        if let user = authenticatedUser { s += "\t(Authenticated sender: \(user.filter { $0.isASCII && !$0.isNewline && $0 != ")" }))\r\n" }
        s += "\tby \(serverHostname) (Sluice) with \(protocolName) id \(queueID)"
        if let rcpt = singleRecipient { s += "\r\n\tfor <\(rcpt)>" }
        s += "; \(RFC5322Date.format(time))\r\n"
        return Array(s.utf8)
    }
}
