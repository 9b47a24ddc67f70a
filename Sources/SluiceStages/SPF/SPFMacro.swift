import SluiceStageAPI

/// An SPF macro-string (RFC 7208 7.1): literal text and `%{...}` expansions.
///
/// ```
/// macro-string = *( macro-expand / macro-literal )
/// macro-expand = ( "%{" macro-letter transformers *delimiter "}" ) / "%%" / "%_" / "%-"
/// macro-literal = %x21-24 / %x26-7E
/// macro-letter = "s" / "l" / "o" / "d" / "i" / "p" / "h" / "c" / "r" / "t" / "v"
/// transformers = *DIGIT [ "r" ]
/// delimiter = "." / "-" / "+" / "," / "/" / "_" / "="
/// ```
struct SPFMacroString: Hashable, Sendable {
    enum Part: Hashable, Sendable {
        case literal(String)
        case expand(letter: Character, uppercase: Bool, digits: Int?, reverse: Bool, delimiters: Set<Character>)
    }

    var parts: [Part]
    let text: String

    struct SyntaxError: Error, Hashable { let message: String }

    /// Parses `text`; `explanation` allows the letters c, r, t and spaces (explain-string).
    init(_ text: String, explanation: Bool = false) throws(SyntaxError) {
        self.text = text
        var parts: [Part] = []
        var literal = ""
        var it = Array(text.unicodeScalars)[...]
        func flush() {
            if !literal.isEmpty { parts.append(.literal(literal)); literal = "" }
        }
        while let c = it.popFirst() {
            if c == "%" {
                guard let next = it.popFirst() else { throw SyntaxError(message: "'%' at the end of \"\(text)\"") }
                switch next {
                case "%": literal += "%"
                case "_": literal += " "
                case "-": literal += "%20"
                case "{":
                    guard let letterScalar = it.popFirst() else { throw SyntaxError(message: "unterminated macro in \"\(text)\"") }
                    let letter = Character(String(letterScalar).lowercased())
                    let allowed: Set<Character> = explanation ? ["s", "l", "o", "d", "i", "p", "h", "c", "r", "t", "v"] : ["s", "l", "o", "d", "i", "p", "h", "v"]
                    guard allowed.contains(letter) else { throw SyntaxError(message: "unknown macro letter '\(letterScalar)' in \"\(text)\"") }
                    var digitText = ""
                    while let d = it.first, ("0"..."9").contains(d) { digitText.unicodeScalars.append(d); it.removeFirst() }
                    var reverse = false
                    if let r = it.first, r == "r" || r == "R" { reverse = true; it.removeFirst() }
                    var delimiters = Set<Character>()
                    while let d = it.first, ".-+,/_=".unicodeScalars.contains(d) { delimiters.insert(Character(d)); it.removeFirst() }
                    guard it.popFirst() == "}" else { throw SyntaxError(message: "malformed macro in \"\(text)\"") }
                    var digits: Int?
                    if !digitText.isEmpty {
                        guard let n = Int(digitText.prefix(4)), n > 0 else { throw SyntaxError(message: "macro transformer 0 in \"\(text)\"") }
                        digits = min(n, 128)
                    }
                    flush()
                    parts.append(.expand(letter: letter, uppercase: letterScalar.properties.isUppercase, digits: digits, reverse: reverse, delimiters: delimiters))
                default:
                    throw SyntaxError(message: "'%\(next)' is not a macro in \"\(text)\"")
                }
            } else if (c.value >= 0x21 && c.value <= 0x7E) || (explanation && c == " ") {
                literal.unicodeScalars.append(c)
            } else {
                throw SyntaxError(message: "character U+\(String(c.value, radix: 16, uppercase: true)) not allowed in \"\(text)\"")
            }
        }
        flush()
        self.parts = parts
    }

    /// The syntax error of `text`, if any.
    static func problem(_ text: String, explanation: Bool) -> String? {
        do {
            _ = try SPFMacroString(text, explanation: explanation)
            return nil
        } catch {
            return error.message
        }
    }

    /// True when the string contains at least one `%{...}` expansion.
    var hasExpansions: Bool {
        parts.contains { if case .expand = $0 { true } else { false } }
    }

    /// The values macros expand to (RFC 7208 7.2).
    struct Values: Sendable {
        var sender: String          // s
        var localPart: String       // l
        var senderDomain: String    // o
        var domain: String          // d
        var ip: IPAddress           // i, c, v
        var validatedName: @Sendable () -> String  // p
        var helo: String            // h
        var receiver: String        // r
        var timestamp: Int          // t
    }

    /// Expands the string (RFC 7208 7.3, 7.4): split on the delimiters, reverse, keep the
    /// right-most N parts, join with "."; uppercase letters are URL-escaped.
    func expand(_ v: Values) -> String {
        var out = ""
        for part in parts {
            switch part {
            case .literal(let s):
                out += s
            case .expand(let letter, let uppercase, let digits, let reverse, let delimiters):
                let raw: String
                switch letter {
                case "s": raw = v.sender
                case "l": raw = v.localPart
                case "o": raw = v.senderDomain
                case "d": raw = v.domain
                case "i": raw = Self.dottedIP(v.ip)
                case "c": raw = "\(v.ip)"
                case "v": raw = v.ip.isIPv4 ? "in-addr" : "ip6"
                case "p": raw = v.validatedName()
                case "h": raw = v.helo
                case "r": raw = v.receiver
                case "t": raw = String(v.timestamp)
                default: raw = ""
                }
                let separators = delimiters.isEmpty ? Set<Character>(["."]) : delimiters
                var labels = raw.split(omittingEmptySubsequences: false, whereSeparator: { separators.contains($0) }).map(String.init)
                if reverse { labels.reverse() }
                if let digits, digits < labels.count { labels = Array(labels.suffix(digits)) }
                let value = labels.joined(separator: ".")
                out += uppercase ? Self.urlEscape(value) : value
            }
        }
        return out
    }

    /// `i` for IPv6 is the nibble form (RFC 7208 7.3).
    static func dottedIP(_ ip: IPAddress) -> String {
        if ip.isIPv4 { return ip.bytes.map(String.init).joined(separator: ".") }
        var nibbles: [String] = []
        for byte in ip.bytes {
            nibbles.append(String(byte >> 4, radix: 16, uppercase: true))
            nibbles.append(String(byte & 0xF, radix: 16, uppercase: true))
        }
        return nibbles.joined(separator: ".")
    }

    /// RFC 3986 escaping of everything but unreserved characters.
    static func urlEscape(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            let c = Character(Unicode.Scalar(b))
            if c.isASCII && (c.isLetter || c.isNumber || "-._~".contains(c)) {
                out.append(c)
            } else {
                out += "%" + String(b, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }
}

private extension String {
    func leftPadded(to n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
