/// Reads server replies (RFC 5321 4.2) from a byte stream, for the client side.
///
/// `Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF`.
/// Every line of one reply must carry the same code. Limits keep a hostile server from making
/// the client buffer without bound: a line longer than `maxLineLength` octets (CRLF included)
/// or a reply of more than `maxLines` lines is an error.
public struct SMTPReplyParser: Sendable {
    public enum ParseError: Error, Hashable, Sendable, CustomStringConvertible {
        case lineTooLong
        case tooManyLines
        case malformed(String)

        public var description: String {
            switch self {
            case .lineTooLong: "reply line too long"
            case .tooManyLines: "reply has too many lines"
            case .malformed(let line): "malformed reply line: \(line)"
            }
        }
    }

    public var maxLineLength: Int
    public var maxLines: Int
    private var buffer: [UInt8] = []
    private var lines: [String] = []
    private var code: Int?

    public init(maxLineLength: Int = 512, maxLines: Int = 100) {
        self.maxLineLength = maxLineLength
        self.maxLines = maxLines
    }

    /// Adds received bytes.
    public mutating func feed(_ bytes: some Sequence<UInt8>) {
        buffer.append(contentsOf: bytes)
    }

    /// The next complete reply, or nil when more bytes are needed.
    public mutating func next() throws(ParseError) -> SMTPReply? {
        while true {
            guard let lf = buffer.firstIndex(of: 0x0A) else {
                if buffer.count > maxLineLength { throw .lineTooLong }
                return nil
            }
            if lf + 1 > maxLineLength { throw .lineTooLong }
            var end = lf
            if end > 0 && buffer[end - 1] == 0x0D { end -= 1 }  // tolerate a bare LF from the server
            let line = Array(buffer[..<end])
            buffer.removeSubrange(...lf)
            guard line.count >= 3, line[0...2].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  line[0] >= 0x32, line[0] <= 0x35,
                  line.count == 3 || line[3] == UInt8(ascii: " ") || line[3] == UInt8(ascii: "-"),
                  let lineCode = Int(String(decoding: line[0...2], as: UTF8.self))
            else { throw .malformed(String(decoding: line.prefix(80), as: UTF8.self)) }
            if let code, code != lineCode { throw .malformed(String(decoding: line.prefix(80), as: UTF8.self)) }
            code = lineCode
            lines.append(line.count > 4 ? String(decoding: line[4...], as: UTF8.self) : "")
            if lines.count > maxLines { throw .tooManyLines }
            let last = line.count == 3 || line[3] == UInt8(ascii: " ")
            if last {
                defer { lines = []; code = nil }
                // Split off an enhanced status code when every line carries one (RFC 2034).
                var enhanced: EnhancedStatusCode?
                var texts = lines
                if let first = lines.first?.split(separator: " ", maxSplits: 1).first,
                   let e = EnhancedStatusCode(first), e.statusClass == lineCode / 100 {
                    enhanced = e
                    texts = lines.map { line in
                        let parts = line.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
                        return parts.count == 2 && EnhancedStatusCode(parts[0]) != nil ? String(parts[1]) : parts.count == 1 && EnhancedStatusCode(parts[0]) != nil ? "" : line
                    }
                }
                return SMTPReply(lineCode, enhanced, texts)
            }
        }
    }

    /// Bytes received but not yet part of a reply (e.g. a server that talks out of turn).
    public var hasBufferedInput: Bool { !buffer.isEmpty || !lines.isEmpty }
}
