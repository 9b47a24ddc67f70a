import SluiceStageAPI

/// A resolver that answers from a fixed in-memory zone: for unit tests and tools.
///
/// Names are case-insensitive. A name with no records at all is NXDOMAIN; a name with other
/// types is NODATA; names in `timeouts` never answer (the query throws `DNSError.timeout`).
public struct StaticResolver: DNSResolver {
    private var zone: [String: [DNSRecordType: [DNSRecord]]] = [:]
    private var timeouts: Set<String> = []

    public init() {}

    private static func key(_ name: String) -> String {
        (name.hasSuffix(".") ? String(name.dropLast()) : name).lowercased()
    }

    /// Adds a record at `name`.
    public mutating func add(_ name: String, _ type: DNSRecordType, _ record: DNSRecord) {
        zone[Self.key(name), default: [:]][type, default: []].append(record)
    }

    /// Adds a TXT record made of one string.
    public mutating func addText(_ name: String, _ text: String) {
        add(name, .txt, .txt([Array(text.utf8)]))
    }

    /// Makes every query for `name` time out.
    public mutating func addTimeout(_ name: String) { timeouts.insert(Self.key(name)) }

    public func query(_ name: String, _ type: DNSRecordType) async throws -> DNSAnswer {
        try answer(name, type)
    }

    /// The answer, synchronously; CNAMEs are followed (up to 8).
    public func answer(_ name: String, _ type: DNSRecordType) throws -> DNSAnswer {
        var current = Self.key(name)
        for _ in 0..<8 {
            if timeouts.contains(current) { throw DNSError(.timeout, "\(name)/\(type): no answer (static zone)") }
            guard let node = zone[current] else {
                return DNSAnswer(name: name, type: type, responseCode: .nameError, records: [])
            }
            if type != .cname, let alias = node[.cname]?.first, case .cname(let target) = alias {
                current = Self.key(target)
                continue
            }
            return DNSAnswer(name: name, type: type, responseCode: .noError, records: node[type] ?? [], ttl: 300,
                             canonicalName: current == Self.key(name) ? nil : current)
        }
        return DNSAnswer(name: name, type: type, responseCode: .serverFailure, records: [])
    }
}
