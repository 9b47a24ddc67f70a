/// A result a stage records for the Authentication-Results header (RFC 8601), e.g. `spf=pass smtp.mailfrom=example.test`.
public struct AuthenticationResult: Sendable, Hashable, Codable {
    /// The method: `spf`, `dkim`, `dmarc`, ...
    public var method: String
    /// The result keyword: `pass`, `fail`, `none`, ...
    public var result: String
    public var reason: String?
    /// Property pairs in order, e.g. `("smtp.mailfrom", "example.test")`.
    public var properties: [Property]

    public struct Property: Sendable, Hashable, Codable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) { self.name = name; self.value = value }
    }

    public init(method: String, result: String, reason: String? = nil, properties: [Property] = []) {
        self.method = method
        self.result = result
        self.reason = reason
        self.properties = properties
    }

    /// `method=result (reason) name=value ...` as in an Authentication-Results header.
    public var resinfo: String {
        var s = "\(method)=\(result)"
        if let reason { s += " (\(reason))" }
        for p in properties { s += " \(p.name)=\(Self.pvalue(p.value))" }
        return s
    }

    /// RFC 8601 2.2 pvalue: a token or `local@domain` as it is, anything else quoted.
    static func pvalue(_ v: String) -> String {
        let bytes = v.utf8
        if !bytes.isEmpty, bytes.allSatisfy(isTokenByte) { return v }
        // local@domain: dot-atom characters, one "@" not first, a domain of letters, digits, "." and "-".
        if let at = bytes.firstIndex(of: UInt8(ascii: "@")), at != bytes.startIndex,
           bytes[..<at].allSatisfy(isDotAtomByte), bytes[bytes.index(after: at)...].allSatisfy(isDomainByte) {
            return v
        }
        return "\"" + v.replacingBackslashesAndQuotes() + "\""
    }

    /// Printable ASCII but no tspecial (RFC 2045 5.1) and no space.
    private static func isTokenByte(_ b: UInt8) -> Bool {
        guard b > 0x20 && b < 0x7F else { return false }
        switch b {
        case UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "@"),
             UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: ":"), UInt8(ascii: "\\"), UInt8(ascii: "\""),
             UInt8(ascii: "/"), UInt8(ascii: "["), UInt8(ascii: "]"), UInt8(ascii: "?"), UInt8(ascii: "="):
            return false
        default:
            return true
        }
    }

    private static func isAlphanumeric(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
    }

    private static func isDotAtomByte(_ b: UInt8) -> Bool {
        isAlphanumeric(b) || "!#$%&'*+-/=?^_`{|}~.".utf8.contains(b)
    }

    private static func isDomainByte(_ b: UInt8) -> Bool {
        isAlphanumeric(b) || b == UInt8(ascii: ".") || b == UInt8(ascii: "-")
    }
}

/// The results recorded for one transaction, in the order stages recorded them, and the trace
/// fields stages asked to have put on top of the message.
public final class ResultRecorder: Sendable {
    private let store = StageState()
    private static let key = StateKey<[AuthenticationResult]>("results")
    private static let fieldsKey = StateKey<[HeaderField]>("trace-fields")

    public init() {}

    public func record(_ result: AuthenticationResult) {
        store[Self.key] = (store[Self.key] ?? []) + [result]
    }

    public var all: [AuthenticationResult] { store[Self.key] ?? [] }

    /// Asks for `field` on top of the message, e.g. `Received-SPF`, from any phase before end of
    /// message. The gateway puts these fields above the message (the latest recorded on top, as if
    /// each were inserted at index 0), and `Authentication-Results` above them, when it spools the
    /// message. A stage that only adds such fields needs no end-of-message phase.
    public func prepend(_ field: HeaderField) {
        store[Self.fieldsKey] = (store[Self.fieldsKey] ?? []) + [field]
    }

    /// The fields recorded with `prepend(_:)`, in the order they go on top of the message.
    public var prepended: [HeaderField] { (store[Self.fieldsKey] ?? []).reversed() }
}

private extension String {
    func replacingBackslashesAndQuotes() -> String {
        var out = ""
        for c in self {
            if c == "\\" || c == "\"" { out.append("\\") }
            if c.isASCII && c.asciiValue! >= 0x20 && c.asciiValue! < 0x7F { out.append(c) }
        }
        return out
    }
}
