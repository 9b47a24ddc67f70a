/// A server reply: a three-digit code, an optional enhanced status code (RFC 2034) and one or more text lines.
///
/// It is also an `Error`, so any layer that refuses something throws the reply it wants sent.
public struct SMTPReply: Error, Hashable, Sendable, CustomStringConvertible {
    public var code: Int
    public var enhancedCode: EnhancedStatusCode?
    public var lines: [String]

    public init(_ code: Int, _ enhancedCode: EnhancedStatusCode?, _ lines: [String]) {
        self.code = code
        self.enhancedCode = enhancedCode
        self.lines = lines.isEmpty ? [""] : lines
    }

    public init(_ code: Int, _ enhancedCode: EnhancedStatusCode?, _ text: String) {
        self.init(code, enhancedCode, [text])
    }

    /// Convenience: `SMTPReply(550, "5.7.1", "Rejected")`. An invalid enhanced code is dropped.
    public init(_ code: Int, _ enhanced: String, _ text: String) {
        self.init(code, EnhancedStatusCode(enhanced), [text])
    }

    /// Parses an operator-written reply such as `"554 5.7.1 Access denied"` (the enhanced code is optional).
    public init?(parsing text: String) {
        let parts = text.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard let first = parts.first, first.count == 3, let code = Int(first), (200...599).contains(code) else { return nil }
        var rest = parts.count > 1 ? String(parts[1]) : ""
        var enhanced: EnhancedStatusCode?
        let words = rest.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        if let w = words.first, let e = EnhancedStatusCode(w) {
            guard e.statusClass == code / 100 else { return nil }
            enhanced = e
            rest = words.count > 1 ? String(words[1]) : ""
        }
        guard rest.utf8.allSatisfy({ $0 >= 0x20 && $0 != 0x7F }) else { return nil }
        self.init(code, enhanced, rest)
    }

    public var isPositive: Bool { code < 400 }
    public var isTransientFailure: Bool { (400..<500).contains(code) }
    public var isPermanentFailure: Bool { code >= 500 }

    /// The reply as sent on the wire: every line carries the code and the enhanced code, CRLF-terminated.
    public var encoded: [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }

    public func encode(into out: inout [UInt8]) {
        let codeText = String(code)
        let prefix = enhancedCode.map { " " + $0.description } ?? ""
        for (i, line) in lines.enumerated() {
            out.append(contentsOf: codeText.utf8)
            out.append(i == lines.count - 1 ? UInt8(ascii: " ") : UInt8(ascii: "-"))
            if !prefix.isEmpty {
                out.append(contentsOf: prefix.utf8.dropFirst())
                if !line.isEmpty { out.append(UInt8(ascii: " ")) }
            }
            out.append(contentsOf: line.utf8)
            out.append(contentsOf: [0x0D, 0x0A])
        }
    }

    /// One line, as in logs: `550 5.7.1 text`.
    public var description: String {
        let e = enhancedCode.map { " \($0)" } ?? ""
        return "\(code)\(e) \(lines.joined(separator: " / "))"
    }
}
