import SluiceStageAPI

/// The `[dns]` table of `pipeline.conf`.
///
/// ```toml
/// [dns]
/// servers = ["127.0.0.1:15353"]   # forwarders, "address[:port]"; empty = the system's resolv.conf
/// timeout_ms = 3000               # per query
/// trust_anchor = "/usr/share/dns/root.key"   # optional: validate DNSSEC (Debian dns-root-data)
/// ```
public struct DNSConfiguration: Sendable, Hashable {
    /// Forwarders as (address, port); empty means the servers in /etc/resolv.conf.
    public var servers: [Server]
    /// How long one query may take before it fails with `DNSError.timeout`.
    public var timeout: Duration
    /// A DNSSEC trust anchor file (e.g. the root key); without one answers are `insecure`.
    public var trustAnchorFile: String?

    public struct Server: Sendable, Hashable, CustomStringConvertible {
        public var address: IPAddress
        public var port: Int

        /// `192.0.2.1`, `192.0.2.1:5353`, `2001:db8::1`, `[2001:db8::1]:5353`.
        public init?(_ text: String) {
            var host = text
            var port = 53
            if text.hasPrefix("[") {
                guard let close = text.firstIndex(of: "]") else { return nil }
                host = String(text[text.index(after: text.startIndex)..<close])
                let rest = text[text.index(after: close)...]
                if !rest.isEmpty {
                    guard rest.hasPrefix(":"), let p = Self.port(rest.dropFirst()) else { return nil }
                    port = p
                }
                guard host.contains(":") else { return nil }  // brackets are for IPv6
            } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") {
                host = String(text[..<colon])
                guard let p = Self.port(text[text.index(after: colon)...]) else { return nil }
                port = p
            }
            guard let address = IPAddress(host), (1...65535).contains(port) else { return nil }
            self.address = address
            self.port = port
        }

        /// Digits only (no sign), 1...65535.
        static func port(_ s: Substring) -> Int? {
            guard !s.isEmpty, s.count <= 5, s.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
            return Int(s)
        }

        /// libunbound's forwarder syntax: `address@port`.
        var unboundForm: String { "\(address)@\(port)" }

        public var description: String { address.isIPv4 ? "\(address):\(port)" : "[\(address)]:\(port)" }
    }

    public init(servers: [Server] = [], timeout: Duration = .milliseconds(3000), trustAnchorFile: String? = nil) {
        self.servers = servers
        self.timeout = timeout
        self.trustAnchorFile = trustAnchorFile
    }
}
