#if canImport(Glibc)
import Glibc
#endif

/// Why a path did not parse.
public enum PathError: Error, Hashable, Sendable {
    case syntax(String)
    case localPartTooLong
    case domainTooLong
    case pathTooLong
    /// The address holds non-ASCII text but the transaction did not ask for SMTPUTF8 (RFC 6531 3.4).
    case requiresSMTPUTF8
}

/// Parses RFC 5321 paths (section 4.1.2) from the bytes of a command argument.
///
/// Source routes (`@a,@b:user@c`) are accepted syntactically and dropped (RFC 5321 4.1.1.3, appendix C).
/// Angle brackets may be missing, as Postfix allows by default; a path ends at the first space then.
struct PathParser {
    let bytes: [UInt8]
    var index: Int
    let limits: SMTPLimits
    /// Whether non-ASCII (UTF-8) text is allowed in the address.
    let utf8: Bool
    /// Set when the address used non-ASCII text.
    private(set) var sawNonASCII = false

    init(bytes: [UInt8], index: Int, limits: SMTPLimits, utf8: Bool) {
        self.bytes = bytes
        self.index = index
        self.limits = limits
        self.utf8 = utf8
    }

    private var current: UInt8? { index < bytes.count ? bytes[index] : nil }

    private mutating func expect(_ c: Character) throws(PathError) {
        guard current == c.asciiValue else { throw .syntax("expected '\(c)'") }
        index += 1
    }

    /// Reverse-path = Path / "<>"
    mutating func reversePath() throws(PathError) -> ReversePath {
        let start = index
        if current == UInt8(ascii: "<"), index + 1 < bytes.count, bytes[index + 1] == UInt8(ascii: ">") {
            index += 2
            return .null
        }
        let mailbox = try path()
        try checkPathLength(from: start)
        return .mailbox(mailbox)
    }

    /// Forward-path = Path, or "<Postmaster>" (case-insensitive) without a domain.
    mutating func forwardPath() throws(PathError) -> ForwardPath {
        let start = index
        let postmaster = Array("<postmaster>".utf8)
        if index + postmaster.count <= bytes.count,
           zip(bytes[index..<index + postmaster.count], postmaster).allSatisfy({ SMTPGrammar.upper($0) == SMTPGrammar.upper($1) }) {
            index += postmaster.count
            return .postmaster
        }
        let mailbox = try path()
        try checkPathLength(from: start)
        return .mailbox(mailbox)
    }

    private func checkPathLength(from start: Int) throws(PathError) {
        if index - start > limits.path { throw .pathTooLong }
    }

    /// Path = "<" [ A-d-l ":" ] Mailbox ">"
    private mutating func path() throws(PathError) -> Mailbox {
        let bracketed = current == UInt8(ascii: "<")
        if bracketed { index += 1 }
        if current == UInt8(ascii: "@") {
            // A-d-l = At-domain *( "," At-domain ); At-domain = "@" Domain
            repeat {
                try expect("@")
                _ = try domain()
            } while consume(",")
            try expect(":")
        }
        let local = try localPart()
        try expect("@")
        let dom = current == UInt8(ascii: "[") ? try addressLiteral() : try domain()
        if bracketed { try expect(">") } else if let c = current, c != UInt8(ascii: " ") {
            throw .syntax("unexpected character after address")
        }
        return Mailbox(localPart: local, domain: dom)
    }

    private mutating func consume(_ c: Character) -> Bool {
        if current == c.asciiValue { index += 1; return true }
        return false
    }

    private mutating func nonASCII(_ b: UInt8) throws(PathError) -> Bool {
        guard b >= 0x80 else { return false }
        sawNonASCII = true
        if !utf8 { throw .requiresSMTPUTF8 }
        return true
    }

    /// Local-part = Dot-string / Quoted-string
    private mutating func localPart() throws(PathError) -> String {
        let start = index
        var decoded: [UInt8] = []
        if consume("\"") {
            // Quoted-string = DQUOTE *QcontentSMTP DQUOTE
            while true {
                guard let c = current else { throw .syntax("unterminated quoted string") }
                index += 1
                if c == UInt8(ascii: "\"") { break }
                if c == UInt8(ascii: "\\") {
                    // quoted-pairSMTP = %d92 %d32-126
                    guard let q = current, q >= 32, q <= 126 else { throw .syntax("bad quoted pair") }
                    decoded.append(q)
                    index += 1
                } else if try nonASCII(c) || SMTPGrammar.isQtextSMTP(c) {
                    decoded.append(c)
                } else {
                    throw .syntax("bad character in quoted string")
                }
            }
        } else {
            // Dot-string = Atom *("." Atom)
            var atomLength = 0
            while let c = current {
                if c == UInt8(ascii: ".") {
                    guard atomLength > 0 else { throw .syntax("empty atom in local part") }
                    atomLength = 0
                } else if try nonASCII(c) || SMTPGrammar.isAtext(c) {
                    atomLength += 1
                } else {
                    break
                }
                decoded.append(c)
                index += 1
            }
            guard atomLength > 0 else { throw .syntax("bad local part") }
        }
        if index - start > limits.localPart { throw .localPartTooLong }
        guard let text = String(validating: decoded, as: UTF8.self) else { throw .syntax("invalid UTF-8") }
        return text
    }

    /// Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str], or a U-label with SMTPUTF8.
    private mutating func domain() throws(PathError) -> String {
        let start = index
        var labelLength = 0
        var lastWasHyphen = false
        while let c = current {
            if c == UInt8(ascii: ".") {
                guard labelLength > 0, !lastWasHyphen else { throw .syntax("bad domain") }
                labelLength = 0
            } else if c == UInt8(ascii: "-") {
                guard labelLength > 0 else { throw .syntax("bad domain") }
                labelLength += 1
                lastWasHyphen = true
                index += 1
                continue
            } else if try nonASCII(c) || SMTPGrammar.isLetDig(c) {
                labelLength += 1
            } else {
                break
            }
            lastWasHyphen = false
            index += 1
        }
        guard labelLength > 0, !lastWasHyphen else { throw .syntax("bad domain") }
        if index - start > limits.domain { throw .domainTooLong }
        guard let text = String(validating: bytes[start..<index], as: UTF8.self) else { throw .syntax("invalid UTF-8") }
        return text
    }

    /// address-literal = "[" ( IPv4-address-literal / IPv6-address-literal / General-address-literal ) "]"
    private mutating func addressLiteral() throws(PathError) -> String {
        let start = index
        try expect("[")
        guard let close = bytes[index...].firstIndex(of: UInt8(ascii: "]")) else { throw .syntax("unterminated address literal") }
        let content = Array(bytes[index..<close])
        index = close + 1
        guard AddressLiteral.isValid(content) else { throw .syntax("bad address literal") }
        if index - start > limits.domain { throw .domainTooLong }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }
}

/// The contents of an address literal (RFC 5321 4.1.3), without brackets.
enum AddressLiteral {
    static func isValid(_ content: [UInt8]) -> Bool {
        if isIPv4(content[...]) { return true }
        if content.count > 5, content.prefix(5).map(SMTPGrammar.upper) == Array("IPV6:".utf8) { return isIPv6(Array(content.dropFirst(5))) }
        // General-address-literal = Standardized-tag ":" 1*dcontent
        guard let colon = content.firstIndex(of: UInt8(ascii: ":")), colon > 0 else { return false }
        let tag = content[..<colon]
        let value = content[(colon + 1)...]
        return tag.allSatisfy(SMTPGrammar.isKeywordChar) && SMTPGrammar.isLetDig(tag.first!) && SMTPGrammar.isLetDig(tag.last!)
            && !value.isEmpty && value.allSatisfy { ($0 >= 33 && $0 <= 90) || ($0 >= 94 && $0 <= 126) }
    }

    /// IPv4-address-literal = Snum 3("." Snum)
    static func isIPv4(_ content: ArraySlice<UInt8>) -> Bool {
        let parts = content.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { p in
            !p.isEmpty && p.count <= 3 && p.allSatisfy(SMTPGrammar.isDigit) && (Int(String(decoding: p, as: UTF8.self)) ?? 256) <= 255
        }
    }

    /// IPv6-addr in its full, compressed and IPv4-embedded forms (RFC 5321 4.1.3), as inet_pton(3) reads them.
    static func isIPv6(_ content: [UInt8]) -> Bool {
        guard !content.isEmpty, content.count <= 45,
              content.allSatisfy({ SMTPGrammar.isDigit($0) || (($0 | 0x20) >= 0x61 && ($0 | 0x20) <= 0x66) || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") })
        else { return false }
        var address = in6_addr()
        return inet_pton(AF_INET6, String(decoding: content, as: UTF8.self), &address) == 1
    }
}

extension Mailbox {
    /// A mailbox written `<local@domain>` or `local@domain` (as milters and config files write
    /// them), by the same grammar as RCPT TO; nil when it does not parse.
    public init?(path text: String) {
        let inner = text.hasPrefix("<") && text.hasSuffix(">") ? String(text.dropFirst().dropLast()) : text
        var parser = PathParser(bytes: Array("<\(inner)>".utf8), index: 0, limits: SMTPLimits(), utf8: true)
        guard case .mailbox(let m)? = try? parser.forwardPath(), parser.index == parser.bytes.count else { return nil }
        self = m
    }
}

extension ReversePath {
    /// `<>` or a mailbox, written with or without angle brackets.
    public init?(path text: String) {
        if text == "<>" || text.isEmpty {
            self = .null
        } else if let m = Mailbox(path: text) {
            self = .mailbox(m)
        } else {
            return nil
        }
    }
}
