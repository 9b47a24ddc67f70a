/// One record of an answer, decoded for the types mail needs; other types keep their rdata.
public enum DNSRecord: Hashable, Sendable, CustomStringConvertible {
    case a(IPAddress)
    case aaaa(IPAddress)
    /// A mail exchanger: lower preference first (RFC 5321 5.1). `exchange` is "." for a null MX (RFC 7505).
    case mx(preference: Int, exchange: String)
    /// The character-strings of one TXT record, as sent (each at most 255 octets).
    case txt([[UInt8]])
    case ptr(String)
    case cname(String)
    case other(type: DNSRecordType, rdata: [UInt8])

    /// For TXT: the strings joined without separator, as SPF and DKIM read them (RFC 7208 3.3).
    public var text: String? {
        guard case .txt(let strings) = self else { return nil }
        return String(decoding: strings.joined(), as: UTF8.self)
    }

    /// For A and AAAA: the address.
    public var address: IPAddress? {
        switch self {
        case .a(let ip), .aaaa(let ip): ip
        default: nil
        }
    }

    public var description: String {
        switch self {
        case .a(let ip), .aaaa(let ip): "\(ip)"
        case .mx(let p, let x): "\(p) \(x)"
        case .txt(let s): s.map { "\"\(String(decoding: $0, as: UTF8.self))\"" }.joined(separator: " ")
        case .ptr(let n), .cname(let n): n
        case .other(let t, let d): "\(t) \\# \(d.count)"
        }
    }
}
