import SMTPCore

/// An address pattern of the access stage, matched case-insensitively:
/// `user@example.test` (that address), `@example.test` or `example.test` (the whole domain),
/// `*.example.test` (its subdomains), `user@` (that local part at any domain), `<>` (the null sender).
struct AddressPattern: Sendable, CustomStringConvertible {
    private enum Kind: Sendable {
        case address(local: String, domain: String)
        case domain(String)
        case subdomains(String)
        case localPart(String)
        case nullSender
    }
    private let kind: Kind
    let description: String

    init?(_ text: String) {
        description = text
        let t = text.lowercased()
        if t == "<>" {
            kind = .nullSender
        } else if t.hasPrefix("*.") {
            let d = String(t.dropFirst(2))
            guard !d.isEmpty, !d.contains("@") else { return nil }
            kind = .subdomains(d)
        } else if t.hasPrefix("@") {
            let d = String(t.dropFirst())
            guard !d.isEmpty, !d.contains("@") else { return nil }
            kind = .domain(d)
        } else if t.hasSuffix("@") {
            let l = String(t.dropLast())
            guard !l.isEmpty else { return nil }
            kind = .localPart(l)
        } else if let at = t.lastIndex(of: "@") {
            let l = String(t[..<at]), d = String(t[t.index(after: at)...])
            guard !l.isEmpty, !d.isEmpty else { return nil }
            kind = .address(local: l, domain: d)
        } else {
            guard !t.isEmpty else { return nil }
            kind = .domain(t)
        }
    }

    func matches(_ path: ReversePath) -> Bool {
        switch path {
        case .null: if case .nullSender = kind { return true } else { return false }
        case .mailbox(let m): return matches(m)
        }
    }

    func matches(_ mailbox: Mailbox) -> Bool {
        let local = mailbox.localPart.lowercased()
        let domain = mailbox.normalizedDomain
        switch kind {
        case .nullSender: return false
        case .address(let l, let d): return local == l && domain == d
        case .domain(let d): return domain == d
        case .subdomains(let d): return domain.hasSuffix("." + d)
        case .localPart(let l): return local == l
        }
    }
}

/// A host name pattern with `*` and `?` wildcards, matched case-insensitively (for HELO names).
struct GlobPattern: Sendable, CustomStringConvertible {
    private let pattern: [UInt8]
    let description: String

    init(_ text: String) {
        description = text
        pattern = Array(text.lowercased().utf8)
    }

    func matches(_ text: String) -> Bool {
        let s = Array(text.lowercased().utf8)
        // Iterative wildcard match with backtracking to the last star.
        var p = 0, i = 0, star = -1, mark = 0
        while i < s.count {
            if p < pattern.count && (pattern[p] == UInt8(ascii: "?") || pattern[p] == s[i]) {
                p += 1; i += 1
            } else if p < pattern.count && pattern[p] == UInt8(ascii: "*") {
                star = p; mark = i; p += 1
            } else if star >= 0 {
                p = star + 1; mark += 1; i = mark
            } else {
                return false
            }
        }
        while p < pattern.count && pattern[p] == UInt8(ascii: "*") { p += 1 }
        return p == pattern.count
    }
}
