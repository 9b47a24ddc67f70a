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
        let specials = Set("()<>@,;:\\\"/[]?= \t")
        let isToken = !v.isEmpty && v.allSatisfy { $0.isASCII && !$0.isWhitespace && $0.asciiValue! > 0x20 && $0.asciiValue! < 0x7F && !specials.contains($0) }
        if isToken { return v }
        let dotAtom = Set("!#$%&'*+-/=?^_`{|}~.")
        if let at = v.lastIndex(of: "@"), v.firstIndex(of: "@") == at, at != v.startIndex,
           v.allSatisfy({ $0 == "@" || ($0.isASCII && ($0.isLetter || $0.isNumber || dotAtom.contains($0))) }),
           v[v.index(after: at)...].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }) {
            return v
        }
        return "\"" + v.replacingBackslashesAndQuotes() + "\""
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
