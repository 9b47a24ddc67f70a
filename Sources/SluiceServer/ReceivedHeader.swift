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
        s += "; \(rfc5322Date(time))\r\n"
        return Array(s.utf8)
    }

    /// `Sun, 29 Nov 2026 08:30:53 +0000` (RFC 5322 section 3.3).
    static func rfc5322Date(_ t: time_t) -> String {
        var t = t
        var tm = tm()
        localtime_r(&t, &tm)
        var buffer = [CChar](repeating: 0, count: 64)
        let n = strftime(&buffer, buffer.count, "%a, %d %b %Y %H:%M:%S %z", &tm)
        return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
