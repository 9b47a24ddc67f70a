import Foundation
import NIOCore
import SluiceCluster
import SluiceDNS
import SluicePipeline
import SluiceServer
import SluiceDelivery
import SluiceSpool
import SluiceStageAPI

/// Everything `pipeline.conf` says, checked and typed. Relative paths resolve against the
/// directory of the config file.
///
/// `[server]` keys:
/// - `hostname` (default: the machine's name): greeting, Received, EHLO.
/// - `spool` (default `"var/spool"`): the spool root.
/// - `relay_from` (default `[]`): CIDRs whose clients may use a `"*"` route.
/// - `etrn_from` (default `[]`): CIDRs whose clients may use ETRN (RFC 1985); ETRN is offered when set.
/// - `max_recipients` (100), `max_errors` (10), `max_connections` (1000), `max_connections_per_ip` (50).
/// - `command_timeout_s` (300), `data_timeout_s` (180): idle limits, RFC 5321 4.5.3.2.
/// - `max_message_bytes` (52428800): the hard size cap; a size-limit stage may lower it.
/// - `command_line_limit` (512), `text_line_limit` (1000): RFC 5321 4.5.3.1 line limits.
/// - `greet_pause_ms` (0): wait before the greeting; a client that talks first is refused (554 5.5.0).
/// - `pipelining_violation` (`"disconnect"` | `"allow"`): input after DATA before the 354.
/// - `min_free_bytes` (104857600): below this free space on the spool, MAIL gets 452 4.3.1.
/// - `shutdown_grace_s` (30): how long open transactions may run after SIGTERM.
/// - `delivery_concurrency` (32): parallel deliveries (mostly waiting on fsync).
/// - `log_level` (`"info"`): trace, debug, info, notice, warning, error, critical.
///
/// `[queue]` keys: `min_backoff_s` (300), `max_backoff_s` (3600), `max_lifetime_s` (432000),
/// `destination_concurrency` (20), `connect_timeout_s` (30), `command_timeout_s` (300),
/// `delay_warning_s` (0 = off), `bounce_size_limit` (50000), `mx_port` (25: the port of mail hosts an `mx` route finds).
///
/// `[dns]` keys: `servers` (`[]` = the servers of /etc/resolv.conf; else `"address[:port]"`
/// forwarders), `timeout_ms` (3000), `trust_anchor` (none: a DNSSEC trust anchor file such as
/// /usr/share/dns/root.key): one resolver with one cache for every stage and for delivery.
///
/// `[tls]` keys: `certificate`, `key` (PEM files; both required when the table is present),
/// `min_version` (`"1.2"` | `"1.3"`, default "1.2"). Without `[tls]`, TLS is off.
///
/// `[auth]` keys: `users` (passwd-style `user:crypt-hash` file; `sluice passwd` writes it),
/// `sender_login` (optional `address user,...` map), `max_failures` (5), `failure_window_s` (900),
/// `failure_delay_ms` (1000), `offer_on_smtp` (false).
///
/// `[[listener]]`: `address` (`"127.0.0.1:2525"`, `"[::1]:2525"`), `kind` (`"smtp"` (default) |
/// `"submission"` | `"smtps"`; the last two need `[tls]` and `[auth]`), `proxy_protocol` (false:
/// a PROXY v1/v2 header comes first, from `proxy_from` CIDRs only, within `proxy_timeout_s`, 10).
/// `[[route]]`: `domains` (names, or `"*"` for trusted clients only), `to` (`"maildir:PATH"`,
/// `"smtp://host:port"`, `"lmtp://host:port"`, `"lmtp:unix:/path"`, `"mx"`: the recipient domain's
/// MX hosts via `[dns]`), `tls` for SMTP/LMTP/MX routes
/// (`"none"` | `"opportunistic"` (default) | `"required"` | `"verify"`: STARTTLS with a certificate
/// chain that verifies and names the next hop, or the mail waits), `tls_ca_file` (only with
/// `tls = "verify"`: a PEM bundle of trust anchors; default the system trust store).
/// `[cluster]` keys (cluster mode: the queue in PostgreSQL, shared by several nodes; see
/// `ClusterSettings`): `postgres` (required URL), `password_file`, `node` (default: `hostname`),
/// `lease_s` (60). Without `[cluster]` the queue is the file spool at `spool`.
/// `[[stage]]`: `use` (a registered stage), `name` (default: `use`), `timeout_ms` (30000),
/// `on_error` (`"tempfail"` | `"accept"` | `"reject"`), and the stage's own keys.
public struct GatewayConfig {
    public struct StageSpec {
        public var kind: String
        public var name: String
        public var timeout: Duration
        public var onError: FailurePolicy
        public var table: ConfigTable
    }

    public var file: String
    public var directory: String
    public var hostname: String
    public var spool: String
    public var relayFrom: [CIDR]
    public var etrnFrom: [CIDR]
    public var maxRecipients: Int
    public var maxErrors: Int
    public var maxConnections: Int
    public var maxConnectionsPerIP: Int
    public var commandTimeoutSeconds: Int
    public var dataTimeoutSeconds: Int
    public var maxMessageBytes: Int
    public var commandLineLimit: Int
    public var textLineLimit: Int
    public var greetPauseMilliseconds: Int
    public var disconnectOnPipeliningViolation: Bool
    public var minFreeBytes: Int
    public var shutdownGraceSeconds: Int
    public var deliveryConcurrency: Int
    public var logLevel: String
    public var listeners: [Listener]
    public var listenerTexts: [String]
    /// `[tls]`, when present.
    public var tls: ServerTLS.Settings?
    /// `[auth]`, when present.
    public var auth: AuthConfig?

    /// `[auth]` keys.
    public struct AuthConfig: Sendable {
        /// `users`: the passwd-style file of `user:crypt-hash` lines (required).
        public var usersFile: String
        /// `sender_login`: the address-to-users map; nil = any sender.
        public var senderLoginFile: String?
        /// `max_failures` (5) within `failure_window_s` (900) per client address; then 421.
        public var maxFailures: Int
        public var failureWindowSeconds: Int
        /// `failure_delay_ms` (1000): the reply to the n-th failure waits n times this (up to 10).
        public var failureDelayMilliseconds: Int
        /// `offer_on_smtp` (false): offer AUTH on `kind = "smtp"` listeners too.
        public var offerOnSMTP: Bool
    }
    public var routes: [RouteTable.Route]
    public var stages: [StageSpec]
    public var queue: QueuePolicy
    public var dns: DNSConfiguration
    /// Each relay route's `tls` and `tls_ca_file`, by next hop.
    public var relayTLS: [RelayEndpoint: RelayTLSSettings]
    /// The `tls` and `tls_ca_file` of an `mx` route, for every mail host it finds.
    public var mxTLS: RelayTLSSettings
    public var relayTimeouts: RelayTimeouts
    /// `[cluster]`, when present.
    public var cluster: ClusterSettings?

    /// - Parameter stagesOnly: for `sluice milter`, which runs only the stage chain: no
    ///   `[[listener]]` is required (listeners, routes and the rest are read and checked if present).
    public static func load(path: String, stagesOnly: Bool = false) throws -> GatewayConfig {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        return try GatewayConfig(file: try ConfigFile(path: absolute), stagesOnly: stagesOnly)
    }

    public init(file: ConfigFile, stagesOnly: Bool = false) throws {
        self.file = file.path
        self.directory = (file.path as NSString).deletingLastPathComponent
        let root = file.table("", file.root)
        func tables(_ key: String) throws -> [[String: ConfigValue]] {
            guard let v = root.value(key) else { return [] }
            guard case .array(let items) = v else { throw root.error(key, "expected [[\(key)]] tables") }
            return try items.map {
                guard case .table(let t) = $0 else { throw root.error(key, "expected [[\(key)]] tables") }
                return t
            }
        }
        var serverValues: [String: ConfigValue] = [:]
        if let v = root.value("server") {
            guard case .table(let t) = v else { throw root.error("server", "expected a [server] table") }
            serverValues = t
        }
        let listenerTables = try tables("listener")
        let routeTables = try tables("route")
        let stageTables = try tables("stage")
        var queueValues: [String: ConfigValue] = [:]
        if let v = root.value("queue") {
            guard case .table(let t) = v else { throw root.error("queue", "expected a [queue] table") }
            queueValues = t
        }
        var tlsValues: [String: ConfigValue]?
        if let v = root.value("tls") {
            guard case .table(let t) = v else { throw root.error("tls", "expected a [tls] table") }
            tlsValues = t
        }
        var authValues: [String: ConfigValue]?
        if let v = root.value("auth") {
            guard case .table(let t) = v else { throw root.error("auth", "expected an [auth] table") }
            authValues = t
        }
        var dnsValues: [String: ConfigValue] = [:]
        if let v = root.value("dns") {
            guard case .table(let t) = v else { throw root.error("dns", "expected a [dns] table") }
            dnsValues = t
        }
        var clusterValues: [String: ConfigValue]?
        if let v = root.value("cluster") {
            guard case .table(let t) = v else { throw root.error("cluster", "expected a [cluster] table") }
            clusterValues = t
        }
        try root.finish()

        let server = file.table("server", serverValues)
        let defaultHost = ProcessInfo.processInfo.hostName
        hostname = try server.string("hostname", default: defaultHost.isEmpty ? "localhost" : defaultHost)
        guard !hostname.isEmpty, hostname.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }) else {
            throw server.error("hostname", "'\(hostname)' is not a host name")
        }
        let dir = directory
        func resolve(_ p: String) -> String { p.hasPrefix("/") ? p : dir + "/" + p }
        spool = resolve(try server.string("spool", default: "var/spool"))
        relayFrom = try server.strings("relay_from", default: []).map { text in
            guard let c = CIDR(text) else { throw server.error("relay_from", "'\(text)' is not an address or CIDR") }
            return c
        }
        etrnFrom = try server.strings("etrn_from", default: []).map { text in
            guard let c = CIDR(text) else { throw server.error("etrn_from", "'\(text)' is not an address or CIDR") }
            return c
        }
        maxRecipients = try server.int("max_recipients", default: 100, range: 1...100_000)
        maxErrors = try server.int("max_errors", default: 10, range: 1...10_000)
        maxConnections = try server.int("max_connections", default: 1000, range: 1...1_000_000)
        maxConnectionsPerIP = try server.int("max_connections_per_ip", default: 50, range: 1...1_000_000)
        commandTimeoutSeconds = try server.int("command_timeout_s", default: 300, range: 1...86_400)
        dataTimeoutSeconds = try server.int("data_timeout_s", default: 180, range: 1...86_400)
        maxMessageBytes = try server.int("max_message_bytes", default: 52_428_800, range: 1...Int(Int32.max))
        commandLineLimit = try server.int("command_line_limit", default: 512, range: 512...65_536)
        textLineLimit = try server.int("text_line_limit", default: 1000, range: 1000...1_000_000)
        greetPauseMilliseconds = try server.int("greet_pause_ms", default: 0, range: 0...60_000)
        disconnectOnPipeliningViolation = try server.choice("pipelining_violation", ["disconnect", "allow"], default: "disconnect") == "disconnect"
        minFreeBytes = try server.int("min_free_bytes", default: 104_857_600, range: 0...Int.max)
        shutdownGraceSeconds = try server.int("shutdown_grace_s", default: 30, range: 0...3600)
        deliveryConcurrency = try server.int("delivery_concurrency", default: 32, range: 1...256)
        logLevel = try server.choice("log_level", ["trace", "debug", "info", "notice", "warning", "error", "critical"], default: "info")
        try server.finish()

        let q = file.table("queue", queueValues)
        queue = QueuePolicy()
        queue.minBackoff = .seconds(try q.int("min_backoff_s", default: 300, range: 1...86_400))
        queue.maxBackoff = .seconds(try q.int("max_backoff_s", default: 3600, range: 1...604_800))
        queue.maxLifetime = Double(try q.int("max_lifetime_s", default: 432_000, range: 1...31_536_000))
        queue.destinationConcurrency = try q.int("destination_concurrency", default: 20, range: 1...1000)
        queue.delayWarning = Double(try q.int("delay_warning_s", default: 0, range: 0...31_536_000))
        queue.bounceSizeLimit = try q.int("bounce_size_limit", default: 50_000, range: 0...1_073_741_824)
        queue.mxPort = try q.int("mx_port", default: 25, range: 1...65535)
        relayTimeouts = RelayTimeouts()
        relayTimeouts.connect = .seconds(Int64(try q.int("connect_timeout_s", default: 30, range: 1...3600)))
        relayTimeouts.command = .seconds(Int64(try q.int("command_timeout_s", default: 300, range: 1...3600)))
        try q.finish()

        let d = file.table("dns", dnsValues)
        dns = DNSConfiguration(
            servers: try d.strings("servers", default: []).map { text in
                guard let server = DNSConfiguration.Server(text) else {
                    throw d.error("servers", "'\(text)' is not \"address\" or \"address:port\" (IPv6 as \"[::1]:53\")")
                }
                return server
            },
            timeout: .milliseconds(try d.int("timeout_ms", default: 3000, range: 10...120_000)),
            trustAnchorFile: try d.string("trust_anchor").map(resolve)
        )
        if let anchor = dns.trustAnchorFile, !FileManager.default.isReadableFile(atPath: anchor) {
            throw d.error("trust_anchor", "cannot read \(anchor)")
        }
        try d.finish()

        if let tlsValues {
            let t = file.table("tls", tlsValues)
            guard let certificate = try t.string("certificate") else { throw t.error("certificate", "missing (a PEM file)") }
            guard let key = try t.string("key") else { throw t.error("key", "missing (a PEM file)") }
            let version = try t.choice("min_version", ["1.2", "1.3"], default: "1.2")
            try t.finish()
            tls = ServerTLS.Settings(
                certificatePath: resolve(certificate), keyPath: resolve(key), minimumVersion: version == "1.3" ? .tlsv13 : .tlsv12
            )
        } else {
            tls = nil
        }

        if let authValues {
            let t = file.table("auth", authValues)
            guard let users = try t.string("users") else { throw t.error("users", "missing: the passwd-style file of users (sluice passwd USER writes it)") }
            auth = AuthConfig(
                usersFile: resolve(users), senderLoginFile: try t.string("sender_login").map(resolve),
                maxFailures: try t.int("max_failures", default: 5, range: 1...1000),
                failureWindowSeconds: try t.int("failure_window_s", default: 900, range: 1...86_400),
                failureDelayMilliseconds: try t.int("failure_delay_ms", default: 1000, range: 0...60_000),
                offerOnSMTP: try t.bool("offer_on_smtp", default: false)
            )
            try t.finish()
            if tls == nil { throw t.error("users", "AUTH is offered only inside TLS: [auth] needs [tls]") }
        } else {
            auth = nil
        }

        if let clusterValues {
            cluster = try Self.cluster(file.table("cluster", clusterValues), hostname: hostname, resolve: resolve)
        } else {
            cluster = nil
        }

        listeners = []
        listenerTexts = []
        for (i, values) in listenerTables.enumerated() {
            let t = file.table("listener[\(i + 1)]", values)
            guard let address = try t.string("address") else { throw t.error("address", "missing (e.g. \"127.0.0.1:2525\")") }
            guard let socket = Self.socketAddress(address) else {
                throw t.error("address", "'\(address)' is not host:port with an IP address (IPv6 as \"[::1]:2525\")")
            }
            let kind = Listener.Kind(rawValue: try t.choice("kind", Listener.Kind.allCases.map(\.rawValue), default: "smtp"))!
            if kind != .smtp && tls == nil {
                throw t.error("kind", "a \(kind.rawValue) listener needs [tls] (certificate and key)")
            }
            if kind != .smtp && auth == nil {
                throw t.error("kind", "a \(kind.rawValue) listener requires AUTH: add [auth] with users")
            }
            let proxy = try t.bool("proxy_protocol", default: false)
            let proxyFrom = try t.strings("proxy_from", default: []).map { text in
                guard let c = CIDR(text) else { throw t.error("proxy_from", "'\(text)' is not an address or CIDR") }
                return c
            }
            if proxy && proxyFrom.isEmpty {
                throw t.error("proxy_from", "proxy_protocol = true needs the proxies' addresses (e.g. [\"127.0.0.1\"])")
            }
            let proxyTimeout = try t.int("proxy_timeout_s", default: 10, range: 1...300)
            try t.finish()
            listeners.append(Listener(address: socket, kind: kind, proxyProtocol: proxy, proxyFrom: proxyFrom,
                                      proxyTimeout: .seconds(Int64(proxyTimeout))))
            listenerTexts.append(address)
        }
        if listeners.isEmpty && !stagesOnly {
            throw ConfigError(file: file.path, line: nil, key: "listener", message: "at least one [[listener]] with an address is needed")
        }

        routes = []
        relayTLS = [:]
        mxTLS = .opportunistic
        for (i, values) in routeTables.enumerated() {
            let t = file.table("route[\(i + 1)]", values)
            let domains = try t.strings("domains", default: [])
            guard !domains.isEmpty else { throw t.error("domains", "missing or empty") }
            for d in domains where d != "*" {
                guard !d.isEmpty, !d.contains("@"), !d.contains(" "), !d.hasPrefix("*") else {
                    throw t.error("domains", "'\(d)' is not a domain name (use \"*\" alone for any domain)")
                }
            }
            guard let to = try t.string("to") else { throw t.error("to", "missing (e.g. \"maildir:var/mail\")") }
            guard let destination = Destination(parsing: to, baseDirectory: directory) else {
                throw t.error("to", "'\(to)' is not a destination: use \"maildir:PATH\", \"smtp://host:port\", \"lmtp://host:port\", \"lmtp:unix:/path\" or \"mx\"")
            }
            let tls = try t.choice("tls", RelayTLSPolicy.allCases.map(\.rawValue), default: "opportunistic")
            switch destination {
            case .relay(let endpoint):
                relayTLS[endpoint] = try Self.relayTLS(RelayTLSPolicy(rawValue: tls)!, route: t, destination: destination, resolve: resolve)
            case .mx:
                mxTLS = try Self.relayTLS(RelayTLSPolicy(rawValue: tls)!, route: t, destination: destination, resolve: resolve)
            case .maildir:
                for key in ["tls", "tls_ca_file"] where t.contains(key) {
                    throw t.error(key, "only SMTP and LMTP routes use TLS")
                }
            }
            try t.finish()
            routes.append(RouteTable.Route(domains: domains, destination: destination))
        }

        stages = []
        for (i, values) in stageTables.enumerated() {
            let t = file.table("stage[\(i + 1)]", values)
            guard let kind = try t.string("use") else { throw t.error("use", "missing: which stage to run") }
            let name = try t.string("name", default: kind)
            let timeout = try t.int("timeout_ms", default: 30_000, range: 1...3_600_000)
            let policy = try t.choice("on_error", FailurePolicy.allCases.map(\.rawValue), default: "tempfail")
            stages.append(StageSpec(kind: kind, name: name, timeout: .milliseconds(timeout), onError: FailurePolicy(rawValue: policy)!, table: t))
        }
    }

    /// `[cluster]`: the URL checked, the password read (a `password_file` wins over the URL's).
    static func cluster(_ t: ConfigTable, hostname: String, resolve: (String) -> String) throws -> ClusterSettings {
        guard let url = try t.string("postgres") else {
            throw t.error("postgres", "missing: the PostgreSQL URL, e.g. \"postgresql://sluice@127.0.0.1:5432/sluice\"")
        }
        let parsed: (host: String, port: Int, username: String, password: String?, database: String)
        do {
            parsed = try ClusterSettings.parse(url: url)
        } catch let error as ClusterSettings.URLError {
            throw t.error("postgres", error.description)
        }
        var password = parsed.password
        if let file = try t.string("password_file") {
            let path = resolve(file)
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw t.error("password_file", "cannot read \(path): create it with the PostgreSQL password on its first line, readable by sluice only")
            }
            password = String(text.split(separator: "\n", omittingEmptySubsequences: false).first ?? "")
        }
        let node = try t.string("node", default: hostname)
        guard !node.isEmpty, node.utf8.count <= 255, node.allSatisfy({ $0.isLetter || $0.isNumber || "._-".contains($0) }) else {
            throw t.error("node", "'\(node)' is not a node name (letters, digits, '.', '_', '-')")
        }
        let lease = try t.int("lease_s", default: 60, range: 5...86_400)
        try t.finish()
        return ClusterSettings(
            host: parsed.host, port: parsed.port, username: parsed.username, password: password, database: parsed.database,
            node: node, leaseSeconds: lease
        )
    }

    /// A route's `tls` with its `tls_ca_file` (read here, so a bundle that cannot be used is a
    /// config error). `verify` needs something to match the certificate against: a host name or
    /// an IP address (an IP subjectAltName), which a unix socket next hop does not have.
    static func relayTLS(
        _ policy: RelayTLSPolicy, route t: ConfigTable, destination: Destination, resolve: (String) -> String
    ) throws -> RelayTLSSettings {
        guard let file = try t.string("tls_ca_file") else {
            if policy == .verify, case .relay(.lmtpUnix) = destination {
                throw t.error("tls", "tls = \"verify\" needs a next hop with a host name or IP address to match the certificate against, not a unix socket")
            }
            return RelayTLSSettings(policy: policy)
        }
        guard policy == .verify else {
            throw t.error("tls_ca_file", "is only used with tls = \"verify\" (this route has tls = \"\(policy.rawValue)\")")
        }
        if case .relay(.lmtpUnix) = destination {
            throw t.error("tls", "tls = \"verify\" needs a next hop with a host name or IP address to match the certificate against, not a unix socket")
        }
        guard !file.isEmpty else { throw t.error("tls_ca_file", "is empty: name a PEM file of CA certificates") }
        do {
            return RelayTLSSettings(policy: policy, trustAnchors: try RelayTrustAnchors(path: resolve(file)))
        } catch let error as RelayTrustAnchors.Error {
            throw t.error("tls_ca_file", error.description)
        }
    }

    static func socketAddress(_ text: String) -> SocketAddress? {
        var host = Substring(text)
        var port: Substring
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return nil }
            let rest = host[host.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            port = rest.dropFirst()
            host = host[host.index(after: host.startIndex)..<close]
        } else {
            guard let colon = host.lastIndex(of: ":") else { return nil }
            port = host[host.index(after: colon)...]
            host = host[..<colon]
        }
        guard let p = Int(port), (0...65535).contains(p) else { return nil }
        return try? SocketAddress(ipAddress: String(host), port: p)
    }
}
