/// One header field of a message (RFC 5322 section 2.2).
public struct HeaderField: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The field name as written.
    public var name: String
    /// The raw value after the colon, including its leading space and any folding (CRLF + WSP), without the final CRLF.
    public var value: String

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }

    /// The value unfolded and trimmed, for reading.
    public var unfoldedValue: String {
        var s = value.replacingCRLFFolding()
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return s
    }

    /// `Name: value` without the final CRLF.
    public var description: String { "\(name):\(value)" }

    /// The field as it is written into a message, ending in CRLF.
    public var wireBytes: [UInt8] { Array("\(name):\(value)\r\n".utf8) }

    /// Makes a field from a name and a value written by a stage: a space is put after the colon
    /// unless the value already starts with white space.
    public static func make(name: String, value: String) -> HeaderField {
        let v = value.first == " " || value.first == "\t" ? value : " " + value
        return HeaderField(name: name, value: v)
    }
}

extension String {
    func replacingCRLFFolding() -> String {
        var out = ""
        var it = self.unicodeScalars.makeIterator()
        while let c = it.next() {
            if c == "\r" || c == "\n" { continue }
            out.unicodeScalars.append(c)
        }
        return out
    }
}
