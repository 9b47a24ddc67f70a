/// Where a recipient's mail goes, from a route's `to`: `maildir:PATH`, `smtp://host[:port]`,
/// `lmtp://host[:port]`, `lmtp:unix:/path`, or `mx` (the recipient domain's MX hosts).
public enum Destination: Sendable, Hashable, CustomStringConvertible {
    case maildir(root: String)
    case relay(RelayEndpoint)
    /// The recipient domain's mail exchangers, from DNS (RFC 5321 5.1).
    case mx

    /// Parses a route's `to`; relative maildir paths resolve against `baseDirectory`.
    public init?(parsing text: String, baseDirectory: String) {
        if text == "mx" {
            self = .mx
        } else if text.hasPrefix("maildir:") {
            let path = String(text.dropFirst("maildir:".count))
            guard !path.isEmpty else { return nil }
            self = .maildir(root: path.hasPrefix("/") ? path : baseDirectory + "/" + path)
        } else if text.hasPrefix("lmtp:unix:") {
            let path = String(text.dropFirst("lmtp:unix:".count))
            guard !path.isEmpty else { return nil }
            self = .relay(.lmtpUnix(path: path.hasPrefix("/") ? path : baseDirectory + "/" + path))
        } else if text.hasPrefix("smtp://"), let (host, port) = Self.hostPort(text.dropFirst(7), defaultPort: 25) {
            self = .relay(.smtp(host: host, port: port))
        } else if text.hasPrefix("lmtp://"), let (host, port) = Self.hostPort(text.dropFirst(7), defaultPort: 24) {
            self = .relay(.lmtp(host: host, port: port))
        } else {
            return nil
        }
    }

    /// `host`, `host:port`, `[v6]`, `[v6]:port`.
    static func hostPort(_ text: Substring, defaultPort: Int) -> (String, Int)? {
        var host = text
        var port = defaultPort
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return nil }
            let rest = host[host.index(after: close)...]
            host = host[host.index(after: host.startIndex)..<close]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let p = Int(rest.dropFirst()) else { return nil }
                port = p
            }
        } else if let colon = host.lastIndex(of: ":") {
            guard let p = Int(host[host.index(after: colon)...]) else { return nil }
            port = p
            host = host[..<colon]
        }
        guard !host.isEmpty, (1...65535).contains(port), !host.contains("/") else { return nil }
        return (String(host), port)
    }

    public var description: String {
        switch self {
        case .maildir(let root): "maildir:\(root)"
        case .relay(let endpoint): endpoint.description
        case .mx: "mx"
        }
    }
}
