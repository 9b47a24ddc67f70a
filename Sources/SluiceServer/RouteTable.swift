import SMTPCore
import SluiceSpool
import SluiceStageAPI

/// Which recipient domains the gateway takes mail for, and where each goes (`[[route]]`).
///
/// A domain listed by name is accepted from anyone. The `"*"` route serves only trusted clients
/// (`[server] relay_from`), so the gateway is never an open relay.
public struct RouteTable: Sendable {
    public struct Route: Sendable, Hashable {
        /// Lowercased domains, or `["*"]`.
        public var domains: [String]
        /// The route's `to` (e.g. `maildir:/srv/mail`), parsed when the config loaded.
        public var destination: Destination
        public init(domains: [String], destination: Destination) {
            self.domains = domains.map { $0.lowercased() }
            self.destination = destination
        }
    }

    public let routes: [Route]
    private let byDomain: [String: Destination]
    private let wildcard: Destination?

    public init(_ routes: [Route]) {
        self.routes = routes
        var map: [String: Destination] = [:]
        var wildcard: Destination?
        for route in routes {
            for domain in route.domains {
                if domain == "*" {
                    if wildcard == nil { wildcard = route.destination }
                } else if map[domain] == nil {
                    map[domain] = route.destination
                }
            }
        }
        self.byDomain = map
        self.wildcard = wildcard
    }

    /// The first domain listed by name; bare `<Postmaster>` goes there.
    public var primaryDomain: String? { routes.lazy.flatMap(\.domains).first { $0 != "*" } }

    /// The destination for a recipient, or the refusal (554 5.7.1 relay access denied).
    ///
    /// For untrusted clients, local parts that route elsewhere (`%`, `!`, or an `@` inside a quoted
    /// local part) are refused as Postfix does, and address literals are never local.
    public func destination(for mailbox: Mailbox, trusted: Bool) -> Result<Destination, SMTPReply> {
        var domain = mailbox.normalizedDomain
        if domain.hasSuffix(".") { domain.removeLast() }
        let denied = SMTPReply(554, "5.7.1", "<\(mailbox)>: Relay access denied")
        if !trusted {
            if mailbox.localPart.contains(where: { $0 == "@" || $0 == "%" || $0 == "!" }) { return .failure(denied) }
            if domain.hasPrefix("[") { return .failure(denied) }
        }
        if let d = byDomain[domain] { return .success(d) }
        if trusted, let wildcard { return .success(wildcard) }
        return .failure(denied)
    }
}
