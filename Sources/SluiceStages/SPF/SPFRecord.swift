/// An SPF record parsed by the RFC 7208 section 12 grammar, strictly: any syntax error anywhere
/// makes the whole record a permerror (4.6), which libspf2 alone does not always notice.
struct SPFRecord: Hashable, Sendable {
    enum Qualifier: Character, Hashable, Sendable {
        case pass = "+", fail = "-", softfail = "~", neutral = "?"
    }

    enum Mechanism: Hashable, Sendable {
        case all
        case include(SPFMacroString)
        case a(SPFMacroString?, v4: Int?, v6: Int?)
        case mx(SPFMacroString?, v4: Int?, v6: Int?)
        case ptr(SPFMacroString?)
        case ip4(IPAddress, prefix: Int?)
        case ip6(IPAddress, prefix: Int?)
        case exists(SPFMacroString)

        /// Mechanisms that cost a DNS query (RFC 7208 4.6.4).
        var queriesDNS: Bool {
            switch self {
            case .include, .a, .mx, .ptr, .exists: true
            case .all, .ip4, .ip6: false
            }
        }
    }

    struct Directive: Hashable, Sendable {
        var qualifier: Qualifier
        var mechanism: Mechanism
        /// The term as written, for libspf2.
        var text: String
    }

    var directives: [Directive] = []
    var redirect: SPFMacroString?
    var explanation: SPFMacroString?
    /// Unknown modifiers (ignored, RFC 7208 6).
    var unknownModifiers: [String] = []

    struct SyntaxError: Error, Hashable, CustomStringConvertible {
        let message: String
        var description: String { message }
    }

    /// True when `text` is an SPF version 1 record: "v=spf1" then a space or the end (4.5).
    static func isSPF1(_ text: String) -> Bool {
        let lower = text.prefix(7).lowercased()
        return lower == "v=spf1" || lower == "v=spf1 "
    }

    /// Parses a record that `isSPF1` accepted.
    init(_ text: String) throws(SyntaxError) {
        let body = text.dropFirst(6)
        // terms = *( 1*SP ( directive / modifier ) ); only SP separates terms.
        for scalar in body.unicodeScalars where scalar != " " && !(0x21...0x7E).contains(scalar.value) {
            throw SyntaxError(message: "character U+\(String(scalar.value, radix: 16, uppercase: true)) in the record")
        }
        for term in body.split(separator: " ", omittingEmptySubsequences: true).map(String.init) {
            try parseTerm(term)
        }
    }

    private mutating func parseTerm(_ term: String) throws(SyntaxError) {
        // A modifier is name "=" ...; a mechanism name never contains "=" before ":" or "/".
        if let eq = term.firstIndex(of: "="), !term[..<eq].contains(":"), !term[..<eq].contains("/") {
            let name = String(term[..<eq])
            let value = String(term[term.index(after: eq)...])
            guard Self.isModifierName(name) else { throw SyntaxError(message: "invalid modifier name in '\(term)'") }
            switch name.lowercased() {
            case "redirect":
                guard redirect == nil else { throw SyntaxError(message: "redirect= appears twice") }
                redirect = try Self.domainSpec(value, term: term)
            case "exp":
                guard explanation == nil else { throw SyntaxError(message: "exp= appears twice") }
                explanation = try Self.domainSpec(value, term: term)
            default:
                do { _ = try SPFMacroString(value) } catch { throw SyntaxError(message: "\(error.message) in '\(term)'") }
                unknownModifiers.append(term)
            }
            return
        }
        var rest = Substring(term)
        var qualifier = Qualifier.pass
        if let first = rest.first, let q = Qualifier(rawValue: first) {
            qualifier = q
            rest = rest.dropFirst()
        }
        let nameEnd = rest.firstIndex(where: { $0 == ":" || $0 == "/" }) ?? rest.endIndex
        let name = rest[..<nameEnd].lowercased()
        let argument = rest[nameEnd...]
        let mechanism: Mechanism
        switch name {
        case "all":
            guard argument.isEmpty else { throw SyntaxError(message: "'all' takes no argument: '\(term)'") }
            mechanism = .all
        case "include", "exists":
            guard argument.hasPrefix(":") else { throw SyntaxError(message: "'\(name)' needs a domain: '\(term)'") }
            let spec = try Self.domainSpec(String(argument.dropFirst()), term: term)
            mechanism = name == "include" ? .include(spec) : .exists(spec)
        case "a", "mx":
            // The dual-cidr-length is a suffix; the domain-spec may itself contain "/" and ":".
            let (body, cidrPart) = Self.splitDualCIDR(argument)
            var domainPart = ""
            if body.hasPrefix(":") {
                domainPart = String(body.dropFirst())
                guard !domainPart.isEmpty else { throw SyntaxError(message: "empty domain in '\(term)'") }
            } else if !body.isEmpty {
                throw SyntaxError(message: "malformed '\(term)'")
            }
            let spec = domainPart.isEmpty ? nil : try Self.domainSpec(domainPart, term: term)
            let (v4, v6) = try Self.dualCIDR(cidrPart, term: term)
            mechanism = name == "a" ? .a(spec, v4: v4, v6: v6) : .mx(spec, v4: v4, v6: v6)
        case "ptr":
            if argument.isEmpty {
                mechanism = .ptr(nil)
            } else {
                guard argument.hasPrefix(":") else { throw SyntaxError(message: "malformed 'ptr': '\(term)'") }
                mechanism = .ptr(try Self.domainSpec(String(argument.dropFirst()), term: term))
            }
        case "ip4", "ip6":
            guard argument.hasPrefix(":") else { throw SyntaxError(message: "'\(name)' needs an address: '\(term)'") }
            let value = argument.dropFirst()
            let slash = value.firstIndex(of: "/") ?? value.endIndex
            let addressText = String(value[..<slash])
            let max = name == "ip4" ? 32 : 128
            var prefix: Int?
            if slash != value.endIndex {
                prefix = try Self.cidrLength(value[value.index(after: slash)...], max: max, term: term)
            }
            if name == "ip4" {
                guard Self.isIP4Network(addressText), let ip = IPAddress(addressText), ip.isIPv4 else {
                    throw SyntaxError(message: "invalid IPv4 network in '\(term)'")
                }
                mechanism = .ip4(ip, prefix: prefix)
            } else {
                guard addressText.contains(":"), let ip = IPv6Raw.parse(addressText) else {
                    throw SyntaxError(message: "invalid IPv6 network in '\(term)'")
                }
                mechanism = .ip6(ip, prefix: prefix)
            }
        default:
            throw SyntaxError(message: "unknown mechanism '\(term)'")
        }
        directives.append(Directive(qualifier: qualifier, mechanism: mechanism, text: term))
    }

    /// name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
    static func isModifierName(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, first.properties.isAlphabetic, first.isASCII else { return false }
        return s.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-_.".unicodeScalars.contains($0)) }
    }

    /// domain-spec = macro-string domain-end; domain-end = ( "." toplabel [ "." ] ) / macro-expand
    static func domainSpec(_ text: String, term: String) throws(SyntaxError) -> SPFMacroString {
        let spec: SPFMacroString
        do { spec = try SPFMacroString(text) } catch { throw SyntaxError(message: "\(error.message) in '\(term)'") }
        guard let last = spec.parts.last else { throw SyntaxError(message: "empty domain in '\(term)'") }
        switch last {
        case .expand:
            return spec
        case .literal(let s):
            // Only the last literal part matters: "." toplabel [ "." ]
            var tail = Substring(s)
            if tail.hasSuffix(".") { tail = tail.dropLast() }
            guard let dot = tail.lastIndex(of: ".") else {
                // No dot in the trailing literal: valid only as text right after a macro? No: domain-end needs "." toplabel.
                throw SyntaxError(message: "'\(text)' does not end in a top-level label, in '\(term)'")
            }
            let top = tail[tail.index(after: dot)...]
            guard isTopLabel(top) else { throw SyntaxError(message: "'\(text)' does not end in a valid top-level label, in '\(term)'") }
            return spec
        }
    }

    /// toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
    static func isTopLabel(_ s: Substring) -> Bool {
        guard !s.isEmpty, s.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) else { return false }
        if s.contains("-") {
            return s.first!.isLetter || s.first!.isNumber ? (s.last!.isLetter || s.last!.isNumber) : false
        }
        return s.contains(where: { $0.isLetter })
    }

    /// Splits a trailing `/N`, `//N` or `/N//M` off an a/mx argument.
    static func splitDualCIDR(_ s: Substring) -> (Substring, Substring) {
        func digitsAfter(_ i: Substring.Index, in t: Substring) -> Bool {
            let tail = t[i...]
            return !tail.isEmpty && tail.allSatisfy { $0.isASCII && $0.isNumber }
        }
        var rest = s
        var start = s.endIndex
        if let slash = rest.lastIndex(of: "/"), slash > rest.startIndex, rest[rest.index(before: slash)] == "/",
           digitsAfter(rest.index(after: slash), in: rest) {
            let doubleStart = rest.index(before: slash)
            start = doubleStart
            rest = rest[..<doubleStart]
        }
        if let slash = rest.lastIndex(of: "/"), digitsAfter(rest.index(after: slash), in: rest) {
            start = slash
            rest = rest[..<slash]
        }
        return (s[..<start], s[start...])
    }

    /// dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ]
    static func dualCIDR(_ text: Substring, term: String) throws(SyntaxError) -> (Int?, Int?) {
        if text.isEmpty { return (nil, nil) }
        guard text.hasPrefix("/") else { throw SyntaxError(message: "malformed '\(term)'") }
        let body = text.dropFirst()
        if body.hasPrefix("/") {
            return (nil, try cidrLength(body.dropFirst(), max: 128, term: term))
        }
        if let slash = body.firstIndex(of: "/") {
            let v4 = try cidrLength(body[..<slash], max: 32, term: term)
            let rest = body[body.index(after: slash)...]
            guard rest.hasPrefix("/") else { throw SyntaxError(message: "malformed CIDR in '\(term)'") }
            return (v4, try cidrLength(rest.dropFirst(), max: 128, term: term))
        }
        return (try cidrLength(body, max: 32, term: term), nil)
    }

    /// "0" / %x31-39 0*2DIGIT, within 0...max.
    static func cidrLength(_ text: Substring, max: Int, term: String) throws(SyntaxError) -> Int {
        guard !text.isEmpty, text.count <= 3, text.allSatisfy({ $0.isASCII && $0.isNumber }),
              text == "0" || text.first != "0", let n = Int(text), n <= max else {
            throw SyntaxError(message: "invalid CIDR length in '\(term)'")
        }
        return n
    }

    /// ip4-network = qnum "." qnum "." qnum "." qnum, no leading zeros.
    static func isIP4Network(_ s: String) -> Bool {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { p in
            !p.isEmpty && p.count <= 3 && p.allSatisfy { $0.isASCII && $0.isNumber } && (p == "0" || p.first != "0") && Int(p)! <= 255
        }
    }
}

/// IPv6 text parsed without mapping `::ffff:a.b.c.d` to IPv4 (an ip6 network stays IPv6).
enum IPv6Raw {
    static func parse(_ text: String) -> IPAddress? {
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
        return IPAddress(bytes: withUnsafeBytes(of: &v6) { Array($0) })
    }
}

#if canImport(Glibc)
import Glibc
#endif
import SluiceStageAPI
