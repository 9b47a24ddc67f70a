/// Where a recipient's mail goes, from a route's `to`: `maildir:PATH`, `smtp://host[:port]`,
/// `lmtp://host[:port]`, `lmtp:unix:/path`, or `mx` (the recipient domain's MX hosts).
///
/// Parsed once, when the config loads; queue files keep it in its text form, which reads back
/// without a base directory (maildir and socket paths are absolute by then).
public enum Destination: Sendable, Hashable, CustomStringConvertible, Codable {
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

    /// Mail handed to this destination is delivered for good (a mailbox, or LMTP's final
    /// delivery), not relayed on: a success notice says `delivered`, not `relayed`.
    public var isFinal: Bool {
        switch self {
        case .maildir: true
        case .relay(let endpoint): endpoint.isLMTP
        case .mx: false
        }
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let destination = Destination(parsing: text, baseDirectory: "/") else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a destination: \(text)"))
        }
        self = destination
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
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

/// Where the relay client connects.
public enum RelayEndpoint: Sendable, Hashable, CustomStringConvertible {
    case smtp(host: String, port: Int)
    case lmtp(host: String, port: Int)
    case lmtpUnix(path: String)
    /// A mail host an `mx` route found: reached at `address`; under `tls = "verify"` its
    /// certificate must name `name`, the MX host name from DNS (as Postfix's verify level does).
    case mailHost(name: String, address: String, port: Int)

    public var isLMTP: Bool {
        switch self {
        case .smtp, .mailHost: false
        case .lmtp, .lmtpUnix: true
        }
    }

    public var description: String {
        switch self {
        case .smtp(let h, let p), .mailHost(_, let h, let p): "smtp://\(h):\(p)"
        case .lmtp(let h, let p): "lmtp://\(h):\(p)"
        case .lmtpUnix(let path): "lmtp:unix:\(path)"
        }
    }
}
