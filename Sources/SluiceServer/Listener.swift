import NIOCore
import SluiceStageAPI

/// One `[[listener]]`: where to listen and what kind of service it is.
public struct Listener: Sendable {
    /// `kind`: what the port is for.
    public enum Kind: String, Sendable, CaseIterable {
        /// Port 25 style: STARTTLS offered when `[tls]` is set (RFC 3207).
        case smtp
        /// Port 587 style (RFC 6409): STARTTLS, and AUTH required before MAIL.
        case submission
        /// Port 465 style (RFC 8314): TLS from the first byte, AUTH required before MAIL.
        case smtps
    }

    public var address: SocketAddress
    public var kind: Kind
    /// Accept a PROXY protocol header (v1 or v2) first, from `proxyFrom` only.
    public var proxyProtocol: Bool
    public var proxyFrom: [CIDR]
    /// `proxy_timeout_s`: how long a connection may take to send its PROXY header.
    public var proxyTimeout: TimeAmount

    public init(address: SocketAddress, kind: Kind = .smtp, proxyProtocol: Bool = false, proxyFrom: [CIDR] = [],
                proxyTimeout: TimeAmount = .seconds(10)) {
        self.address = address
        self.kind = kind
        self.proxyProtocol = proxyProtocol
        self.proxyFrom = proxyFrom
        self.proxyTimeout = proxyTimeout
    }

    /// Submission and SMTPS require authentication before MAIL.
    public var requiresAuth: Bool { kind != .smtp }
}
