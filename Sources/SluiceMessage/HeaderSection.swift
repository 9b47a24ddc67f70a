/// The header section of a message (RFC 5322 section 2.1): fields up to the first empty line.
public struct HeaderSection: Sendable, Hashable {
    public var fields: [HeaderField]
    /// Offset of the body in the message: after the empty line, or at the first line that is
    /// not a header field (then there was no separator line).
    public var bodyOffset: Int
    /// False when `bytes` ended before the header section did.
    public var complete: Bool

    /// Parses the header section at the start of `bytes` (CRLF line ends).
    /// - Parameter atEnd: `bytes` is the whole message, so a field ending at the end of it is final.
    public static func parse(_ bytes: [UInt8], atEnd: Bool = false) -> HeaderSection {
        var fields: [HeaderField] = []
        var i = 0
        let n = bytes.count
        while i < n {
            guard let lineEnd = Self.lineEnd(bytes, from: i) else {
                return HeaderSection(fields: fields, bodyOffset: i, complete: atEnd)
            }
            if lineEnd == i {  // the empty line
                return HeaderSection(fields: fields, bodyOffset: i + 2, complete: true)
            }
            // field-name = 1*ftext (printable US-ASCII except ":"), then ":".
            guard let colon = bytes[i..<lineEnd].firstIndex(of: UInt8(ascii: ":")), colon > i,
                  bytes[i..<colon].allSatisfy({ $0 > 32 && $0 < 127 })
            else {
                return HeaderSection(fields: fields, bodyOffset: i, complete: true)
            }
            // Unfolded continuation lines start with WSP.
            var end = lineEnd
            while true {
                if end + 2 >= n {
                    if atEnd { break }
                    return HeaderSection(fields: fields, bodyOffset: i, complete: false)
                }
                guard bytes[end + 2] == UInt8(ascii: " ") || bytes[end + 2] == UInt8(ascii: "\t") else { break }
                guard let next = Self.lineEnd(bytes, from: end + 2) else {
                    guard atEnd else { return HeaderSection(fields: fields, bodyOffset: i, complete: false) }
                    // The message ends inside this field's last continuation line.
                    fields.append(HeaderField(
                        name: String(decoding: bytes[i..<colon], as: UTF8.self),
                        value: String(decoding: bytes[(colon + 1)..<n], as: UTF8.self)
                    ))
                    return HeaderSection(fields: fields, bodyOffset: n, complete: true)
                }
                end = next
            }
            fields.append(HeaderField(
                name: String(decoding: bytes[i..<colon], as: UTF8.self),
                value: String(decoding: bytes[(colon + 1)..<end], as: UTF8.self)
            ))
            i = end + 2
        }
        return HeaderSection(fields: fields, bodyOffset: i, complete: atEnd)
    }

    /// Index of the CR of the next CRLF at or after `from`.
    private static func lineEnd(_ bytes: [UInt8], from: Int) -> Int? {
        var j = from
        while j + 1 < bytes.count {
            if bytes[j] == 0x0D && bytes[j + 1] == 0x0A { return j }
            j += 1
        }
        return nil
    }

    /// The header section as written into a message, with its empty line.
    public static func encode(_ fields: [HeaderField]) -> [UInt8] {
        encodeFields(fields) + [0x0D, 0x0A]
    }

    /// The fields alone, each ending in CRLF (no empty line after them).
    public static func encodeFields(_ fields: [HeaderField]) -> [UInt8] {
        var out: [UInt8] = []
        for f in fields { out += f.wireBytes }
        return out
    }
}
