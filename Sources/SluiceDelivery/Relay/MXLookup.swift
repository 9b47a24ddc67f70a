import SMTPCore
import SluiceStageAPI

/// Where mail for a domain goes under a `to = "mx"` route (RFC 5321 5.1): the MX hosts by
/// preference (equal ones shuffled), or the domain itself when it has no MX (the implicit MX),
/// each with its addresses. A null MX (RFC 7505) refuses mail.
public struct MXLookup: Sendable {
    /// One host to try, with its addresses in the order to try them.
    public struct Host: Sendable, Hashable {
        public var name: String
        public var addresses: [IPAddress]
    }

    public enum Targets: Sendable, Hashable {
        case hosts([Host])
        /// A permanent answer: the recipients fail (e.g. null MX, no such domain).
        case failed(SMTPReply)
        /// A DNS problem: try again later.
        case deferred(SMTPReply)
    }

    let resolver: any DNSResolver
    /// At most this many MX hosts are tried (Postfix's smtp_mx_address_limit is similar).
    let maxHosts: Int

    public init(resolver: any DNSResolver, maxHosts: Int = 5) {
        self.resolver = resolver
        self.maxHosts = maxHosts
    }

    public func targets(for domain: String) async -> Targets {
        // An address literal ([192.0.2.1], [IPv6:2001:db8::1]) is the host itself.
        if domain.hasPrefix("[") && domain.hasSuffix("]") {
            var inner = domain.dropFirst().dropLast()
            if inner.lowercased().hasPrefix("ipv6:") { inner = inner.dropFirst(5) }
            guard let ip = IPAddress(String(inner)) else {
                return .failed(SMTPReply(550, "5.1.2", "\(domain) is not a usable address literal"))
            }
            return .hosts([Host(name: domain, addresses: [ip])])
        }
        // DNS holds the A-label form of an internationalized domain (RFC 5891 5, RFC 6531).
        guard let domain = IDNA.toASCII(domain) else {
            return .failed(SMTPReply(550, "5.1.2", "\(domain) is not a valid domain name"))
        }
        let answer: DNSAnswer
        do {
            answer = try await resolver.query(domain, .mx)
        } catch {
            return .deferred(SMTPReply(451, "4.4.3", "MX lookup for \(domain) failed: \(error)"))
        }
        var names: [String]
        switch answer.responseCode {
        case .nameError:
            return .failed(SMTPReply(550, "5.1.2", "domain \(domain) does not exist (NXDOMAIN)"))
        case .noError:
            let exchanges = answer.records.compactMap { r -> (Int, String)? in
                if case .mx(let p, let x) = r { (p, x) } else { nil }
            }
            if exchanges.count == 1 && (exchanges[0].1 == "." || exchanges[0].1.isEmpty) {
                return .failed(SMTPReply(556, "5.1.10", "\(domain) accepts no mail (null MX, RFC 7505)"))
            }
            if exchanges.isEmpty {
                names = [domain]  // implicit MX (RFC 5321 5.1)
            } else {
                names = Dictionary(grouping: exchanges.filter { $0.1 != "." && !$0.1.isEmpty }, by: \.0)
                    .sorted { $0.key < $1.key }
                    .flatMap { $0.value.map(\.1).shuffled() }
            }
        default:
            return .deferred(SMTPReply(451, "4.4.3", "MX lookup for \(domain): \(answer.responseCode)"))
        }
        names = Array(names.prefix(maxHosts))
        var hosts: [Host] = []
        var temporary: String?
        for name in names {
            var addresses: [IPAddress] = []
            for type in [DNSRecordType.a, .aaaa] {
                do {
                    let a = try await resolver.query(name, type)
                    if a.isDefinite {
                        addresses += a.records.compactMap(\.address)
                    } else {
                        temporary = "\(name)/\(type): \(a.responseCode)"
                    }
                } catch {
                    temporary = "\(name)/\(type): \(error)"
                }
            }
            if !addresses.isEmpty { hosts.append(Host(name: name, addresses: addresses)) }
        }
        if hosts.isEmpty {
            if let temporary { return .deferred(SMTPReply(451, "4.4.3", "no address for the mail hosts of \(domain): \(temporary)")) }
            return .failed(SMTPReply(550, "5.4.4", "the mail hosts of \(domain) have no address"))
        }
        return .hosts(hosts)
    }
}
