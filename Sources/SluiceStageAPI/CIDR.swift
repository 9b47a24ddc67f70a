#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address as bytes (4 or 16). IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`)
/// become IPv4, so one rule matches a client however the socket reports it.
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            bytes = withUnsafeBytes(of: &v4) { Array($0) }
            return
        }
        var v6 = in6_addr()
        let bare = text.hasPrefix("[") && text.hasSuffix("]") ? String(text.dropFirst().dropLast()) : text
        guard inet_pton(AF_INET6, bare, &v6) == 1 else { return nil }
        bytes = Self.unmapped(withUnsafeBytes(of: &v6) { Array($0) })
    }

    /// An address from its 4 (IPv4) or 16 (IPv6) network-order bytes, kept as given (an SPF
    /// `ip6:` mechanism or an AAAA record stays IPv6); `unmapped` turns a mapped one into IPv4.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// This address, or the IPv4 address an IPv4-mapped IPv6 one (`::ffff:a.b.c.d`) stands for.
    public var unmapped: IPAddress { IPAddress(bytes: Self.unmapped(bytes))! }

    private static func unmapped(_ b: [UInt8]) -> [UInt8] {
        guard b.count == 16, b[0..<10].allSatisfy({ $0 == 0 }), b[10] == 0xFF, b[11] == 0xFF else { return b }
        return Array(b[12..<16])
    }

    public var isIPv4: Bool { bytes.count == 4 }

    public var description: String {
        var buffer = [CChar](repeating: 0, count: 64)
        var copy = bytes
        let ok = inet_ntop(isIPv4 ? AF_INET : AF_INET6, &copy, &buffer, socklen_t(buffer.count)) != nil
        return ok ? String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
    }
}

/// A network in CIDR notation (`192.0.2.0/24`, `2001:db8::/32`); a bare address is a host route.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    public let network: IPAddress
    public let prefixLength: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(String(parts[0])) else { return nil }
        // The prefix counts bits of the address as written; an IPv4-mapped IPv6 network
        // (::ffff:a.b.c.d/n, n >= 96) becomes the IPv4 network /(n - 96).
        let writtenAsIPv6 = parts[0].contains(":")
        let maxLength = writtenAsIPv6 ? 128 : 32
        var length = maxLength
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].allSatisfy(\.isASCII), parts[1].allSatisfy(\.isNumber),
                  let l = Int(parts[1]), l >= 0, l <= maxLength
            else { return nil }
            length = l
        }
        if writtenAsIPv6 && address.isIPv4 {
            guard length >= 96 else { return nil }
            length -= 96
        }
        self.network = address
        self.prefixLength = length
    }

    public func contains(_ address: IPAddress) -> Bool {
        guard address.bytes.count == network.bytes.count else { return false }
        var bits = prefixLength
        for i in 0..<network.bytes.count where bits > 0 {
            let mask: UInt8 = bits >= 8 ? 0xFF : ~(0xFF >> UInt8(bits))
            if address.bytes[i] & mask != network.bytes[i] & mask { return false }
            bits -= 8
        }
        return true
    }

    public func contains(_ address: String) -> Bool {
        IPAddress(address).map(contains) ?? false
    }

    public var description: String { "\(network)/\(prefixLength)" }
}
