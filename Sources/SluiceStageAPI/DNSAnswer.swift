/// What a resolver found for one question.
public struct DNSAnswer: Sendable, Hashable {
    public var name: String
    public var type: DNSRecordType
    public var responseCode: ResponseCode
    /// The records of `type` (after following CNAMEs); empty for NODATA and NXDOMAIN.
    public var records: [DNSRecord]
    /// Seconds the answer may be cached.
    public var ttl: Int
    /// DNSSEC validation status, kept for DANE (RFC 7672).
    public var security: Security
    /// The final name after CNAMEs, when it differs from `name`.
    public var canonicalName: String?

    /// The DNS RCODE (RFC 1035 4.1.1, RFC 6895).
    public enum ResponseCode: Hashable, Sendable, CustomStringConvertible {
        case noError, formatError, serverFailure, nameError, notImplemented, refused
        case other(Int)

        public init(_ code: Int) {
            switch code {
            case 0: self = .noError
            case 1: self = .formatError
            case 2: self = .serverFailure
            case 3: self = .nameError
            case 4: self = .notImplemented
            case 5: self = .refused
            default: self = .other(code)
            }
        }

        public var description: String {
            switch self {
            case .noError: "NOERROR"
            case .formatError: "FORMERR"
            case .serverFailure: "SERVFAIL"
            case .nameError: "NXDOMAIN"
            case .notImplemented: "NOTIMP"
            case .refused: "REFUSED"
            case .other(let c): "RCODE\(c)"
            }
        }
    }

    public enum Security: String, Hashable, Sendable {
        /// Validated with DNSSEC.
        case secure
        /// Not signed, or no trust anchor configured.
        case insecure
        /// Signed but validation failed: treat as an error.
        case bogus
    }

    public init(
        name: String, type: DNSRecordType, responseCode: ResponseCode, records: [DNSRecord],
        ttl: Int = 0, security: Security = .insecure, canonicalName: String? = nil
    ) {
        self.name = name
        self.type = type
        self.responseCode = responseCode
        self.records = records
        self.ttl = ttl
        self.security = security
        self.canonicalName = canonicalName
    }

    /// The name does not exist (NXDOMAIN).
    public var isNameError: Bool { responseCode == .nameError }
    /// The name exists but has no record of this type.
    public var isNoData: Bool { responseCode == .noError && records.isEmpty }
    /// A definite answer: records, NODATA or NXDOMAIN (as opposed to a server failure).
    public var isDefinite: Bool { responseCode == .noError || responseCode == .nameError }
}
