/// A mailbox `local-part@domain` (RFC 5321 section 4.1.2).
public struct Mailbox: Hashable, Sendable, CustomStringConvertible, Codable {
    /// The local part with any quoting removed: `a b` for `"a b"@example.test`.
    public var localPart: String
    /// The domain as sent, or an address literal with its brackets (`[192.0.2.1]`).
    public var domain: String

    public init(localPart: String, domain: String) {
        self.localPart = localPart
        self.domain = domain
    }

    /// The domain lowercased, for routing and comparisons (domains are case-insensitive).
    public var normalizedDomain: String { domain.lowercased() }

    /// True when the address contains non-ASCII text and so needs SMTPUTF8 (RFC 6531).
    public var requiresSMTPUTF8: Bool {
        !localPart.utf8.allSatisfy { $0 < 0x80 } || !domain.utf8.allSatisfy { $0 < 0x80 }
    }

    /// True when the local part must be sent quoted: it is not a valid RFC 5321 Dot-string.
    public var localPartNeedsQuoting: Bool {
        let bytes = Array(localPart.utf8)
        if bytes.isEmpty || bytes.first == UInt8(ascii: ".") || bytes.last == UInt8(ascii: ".") { return true }
        var previousDot = false
        for b in bytes {
            if b == UInt8(ascii: ".") {
                if previousDot { return true }
                previousDot = true
            } else {
                previousDot = false
                if !SMTPGrammar.isAtext(b) && b < 0x80 { return true }
            }
        }
        return false
    }

    /// The local part as written in a path: quoted (RFC 5321 Quoted-string) when needed.
    public var localPartText: String {
        guard localPartNeedsQuoting else { return localPart }
        var out = "\""
        for scalar in localPart.unicodeScalars {
            if scalar == "\"" || scalar == "\\" { out.append("\\") }
            out.unicodeScalars.append(scalar)
        }
        out.append("\"")
        return out
    }

    /// `local@domain` as it is written inside a path.
    public var description: String { "\(localPartText)@\(domain)" }
}

/// The argument of `MAIL FROM`: a mailbox or the null sender `<>`.
public enum ReversePath: Hashable, Sendable, CustomStringConvertible, Codable {
    case null
    case mailbox(Mailbox)

    public var mailbox: Mailbox? {
        if case .mailbox(let m) = self { return m }
        return nil
    }

    /// `<>` or `<local@domain>`.
    public var description: String { "<\(mailbox?.description ?? "")>" }
}

/// The argument of `RCPT TO`: a mailbox or the bare `<Postmaster>` (RFC 5321 section 4.5.1).
public enum ForwardPath: Hashable, Sendable, CustomStringConvertible {
    case postmaster
    case mailbox(Mailbox)

    public var description: String {
        switch self {
        case .postmaster: return "<Postmaster>"
        case .mailbox(let m): return "<\(m)>"
        }
    }
}
