/// Delivery status notification requests (RFC 3461): MAIL's `RET` and `ENVID`, RCPT's
/// `NOTIFY` and `ORCPT`.

/// `RET=FULL|HDRS`: what a failure notification returns of the message.
public enum DSNReturn: String, Hashable, Sendable, Codable {
    case full = "FULL"
    case headers = "HDRS"
}

/// `NOTIFY=`: the events a recipient's sender wants to hear about. Empty is `NEVER`.
public struct DSNNotify: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let success = DSNNotify(rawValue: 1)
    public static let failure = DSNNotify(rawValue: 2)
    public static let delay = DSNNotify(rawValue: 4)
    public static let never: DSNNotify = []
    /// What a recipient without NOTIFY gets (RFC 3461 4.1: failures and delays).
    public static let unspecified: DSNNotify = [.failure, .delay]

    /// Parses `NEVER` or a comma list of `SUCCESS`, `FAILURE`, `DELAY` (case-insensitive).
    public init?(parsing text: String) {
        let words = text.uppercased().split(separator: ",", omittingEmptySubsequences: false)
        if words == ["NEVER"] { self = .never; return }
        var set: DSNNotify = []
        for word in words {
            switch word {
            case "SUCCESS": set.insert(.success)
            case "FAILURE": set.insert(.failure)
            case "DELAY": set.insert(.delay)
            default: return nil
            }
        }
        self = set
    }

    /// The parameter value: `NEVER` or the comma list.
    public var text: String {
        if isEmpty { return "NEVER" }
        return [(DSNNotify.success, "SUCCESS"), (.failure, "FAILURE"), (.delay, "DELAY")]
            .filter { contains($0.0) }.map(\.1).joined(separator: ",")
    }
}

/// A recipient's DSN request: `NOTIFY` and `ORCPT`.
public struct RecipientDSN: Hashable, Sendable {
    /// nil when RCPT had no NOTIFY.
    public var notify: DSNNotify?
    /// `ORCPT=addr-type;xtext`.
    public var originalRecipient: OriginalRecipient?

    /// ORCPT's address type (`rfc822`, `utf-8`) and its address, decoded from xtext.
    public struct OriginalRecipient: Hashable, Sendable {
        public var type: String
        public var address: String
        public init(type: String, address: String) {
            self.type = type
            self.address = address
        }
    }

    public init(notify: DSNNotify? = nil) { self.notify = notify }

    /// The events to report for this recipient (NOTIFY, or failures and delays without one).
    public var events: DSNNotify { notify ?? .unspecified }

    /// Reads NOTIFY and ORCPT out of RCPT's parameters, which have been checked by `validate`;
    /// anything unreadable counts as absent.
    public init(parameters: [ESMTPParameter]) {
        for p in parameters {
            switch p.keyword {
            case "NOTIFY": notify = p.value.flatMap(DSNNotify.init(parsing:))
            case "ORCPT": originalRecipient = p.value.flatMap(Self.parseOriginal)
            default: break
            }
        }
    }

    /// Checks RCPT's DSN parameters (RFC 3461 4.1, 4.2; RFC 6533 3 with SMTPUTF8) and returns
    /// the list with NOTIFY normalized, or the 501 reply for the first bad one. Parameters
    /// other than NOTIFY and ORCPT are returned unchanged for the caller to judge.
    public static func validate(_ parameters: [ESMTPParameter], utf8: Bool) -> Result<[ESMTPParameter], SMTPCommandError> {
        var out: [ESMTPParameter] = []
        for p in parameters {
            switch p.keyword {
            case "NOTIFY":
                guard let v = p.value, let notify = DSNNotify(parsing: v) else {
                    return .failure(.syntax("5.5.4", "Bad NOTIFY parameter syntax"))
                }
                out.append(ESMTPParameter(keyword: "NOTIFY", value: notify.text))
            case "ORCPT":
                guard let v = p.value, v.utf8.count <= 500, parseOriginal(v) != nil,
                      XText.isValid(v[v.index(after: v.firstIndex(of: ";")!)...], utf8: utf8)
                else { return .failure(.syntax("5.5.4", "Bad ORCPT parameter syntax")) }
                out.append(p)
            default:
                out.append(p)
            }
        }
        return .success(out)
    }

    private static func parseOriginal(_ value: String) -> OriginalRecipient? {
        guard let semi = value.firstIndex(of: ";") else { return nil }
        let type = value[..<semi]
        guard !type.isEmpty, type.utf8.allSatisfy({ SMTPGrammar.isAtext($0) }) else { return nil }
        let address = XText.decode(value[value.index(after: semi)...])
        guard !address.isEmpty else { return nil }
        return OriginalRecipient(type: String(type), address: address)
    }
}

/// xtext (RFC 3461 4): printable ASCII but `+` and `=`, with `+XX` (uppercase hex) for any
/// other octet. With SMTPUTF8, RFC 6533's unitext also allows UTF-8 characters.
public enum XText {
    public static func isValid<S: StringProtocol>(_ text: S, utf8: Bool) -> Bool {
        var it = text.utf8.makeIterator()
        while let b = it.next() {
            if b == UInt8(ascii: "+") {
                guard let h = it.next(), let l = it.next(), isUpperHex(h), isUpperHex(l) else { return false }
            } else if b >= 0x80 {
                guard utf8 else { return false }
            } else if b < 33 || b > 126 || b == UInt8(ascii: "=") {
                return false
            }
        }
        return true
    }

    /// Decodes `+XX` escapes; anything else is kept as it is.
    public static func decode<S: StringProtocol>(_ text: S) -> String {
        let bytes = Array(text.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "+"), i + 2 < bytes.count, let h = hex(bytes[i + 1]), let l = hex(bytes[i + 2]) {
                out.append(h << 4 | l)
                i += 3
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Encodes `text` as xtext: `+`, `=`, controls, space and non-ASCII octets become `+XX`.
    public static func encode(_ text: String) -> String {
        var out = ""
        for b in text.utf8 {
            if b >= 33 && b <= 126 && b != UInt8(ascii: "+") && b != UInt8(ascii: "=") {
                out.unicodeScalars.append(Unicode.Scalar(b))
            } else {
                let digits = Array("0123456789ABCDEF".utf8)
                out.unicodeScalars.append(Unicode.Scalar(UInt8(ascii: "+")))
                out.unicodeScalars.append(Unicode.Scalar(digits[Int(b >> 4)]))
                out.unicodeScalars.append(Unicode.Scalar(digits[Int(b & 0xF)]))
            }
        }
        return out
    }

    private static func isUpperHex(_ b: UInt8) -> Bool { SMTPGrammar.isDigit(b) || (b >= 0x41 && b <= 0x46) }

    private static func hex(_ b: UInt8) -> UInt8? {
        if SMTPGrammar.isDigit(b) { return b - 0x30 }
        if b >= 0x41 && b <= 0x46 { return b - 0x41 + 10 }
        if b >= 0x61 && b <= 0x66 { return b - 0x61 + 10 }
        return nil
    }
}
