import SluiceStageAPI

/// What greylisting remembers a delivery attempt by: the client's network rather than its
/// address (a sender's pool of outbound hosts usually retries from a neighbour, as postgrey's
/// `--lookup-by-subnet`), the sender and the recipient, both lowercased.
struct GreylistTriplet: Sendable, Hashable {
    /// `192.0.2.0/24`, `2001:db8:1:2::/64`; the address itself when it is not an IP address.
    var clientNetwork: String
    /// The envelope sender, lowercased; empty for the null sender `<>`.
    var sender: String
    /// The recipient, lowercased.
    var recipient: String

    init(clientNetwork: String, sender: String, recipient: String) {
        self.clientNetwork = clientNetwork
        self.sender = sender
        self.recipient = recipient
    }

    /// The triplet of one RCPT.
    init(client: String, sender: ReversePath, recipient: Mailbox, ipv4Prefix: Int, ipv6Prefix: Int) {
        clientNetwork = Self.network(of: client, ipv4Prefix: ipv4Prefix, ipv6Prefix: ipv6Prefix)
        self.sender = sender.mailbox.map { "\($0)".lowercased() } ?? ""
        self.recipient = "\(recipient)".lowercased()
    }

    /// The network of `address` keeping its first `ipv4Prefix` or `ipv6Prefix` bits, written
    /// as CIDR. An IPv4-mapped IPv6 address counts as IPv4 (as `IPAddress` reads it).
    static func network(of address: String, ipv4Prefix: Int, ipv6Prefix: Int) -> String {
        guard let ip = IPAddress(address) else { return address.lowercased() }
        let length = ip.isIPv4 ? ipv4Prefix : ipv6Prefix
        var bytes = ip.bytes
        var bits = length
        for i in bytes.indices {
            if bits >= 8 {
                bits -= 8
                continue
            }
            bytes[i] &= ~(UInt8(0xFF) >> UInt8(bits))
            bits = 0
        }
        let network = IPAddress(bytes: bytes).map(\.description) ?? address
        return "\(network)/\(length)"
    }
}
