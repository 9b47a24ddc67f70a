import SluiceStageAPI

/// `use = "dnsbl"`: DNS block lists and allow lists of client addresses, through the
/// gateway's resolver.
///
/// ```toml
/// [[stage]]
/// use = "dnsbl"
/// zones = ["zen.example", { zone = "bl.example", weight = 2 }]
/// allow_zones = ["list.dnswl.example"]
/// threshold = 1
/// check_at = "rcpt"      # or "connect"
/// ```
///
/// Keys:
/// - `zones`: block lists, each a name or `{ zone, weight (1), codes ([]: any 127.0.0.x) }`.
/// - `allow_zones` (default []): allow lists; a client listed there is never blocked.
/// - `threshold` (default 1): the summed weight of the lists naming the client that blocks it.
/// - `check_at` (default "rcpt"): `"rcpt"` refuses each recipient with 554 5.7.1 (the log
///   then shows who was sending to whom, as Postfix's reject_rbl_client), `"connect"`
///   refuses the session.
/// - `reply` (default "Service unavailable; client [%c] blocked using %z"): `%c` the client,
///   `%z` the lists, `%t` the list's TXT record (its reason text) when it has one.
public struct DNSBLStage: Stage {
    struct Zone: Sendable {
        var name: String
        var weight: Int
        var codes: Set<String>
    }

    let zones: [Zone]
    let allowZones: [String]
    let threshold: Int
    let atConnect: Bool
    let replyTemplate: String
    let resolver: any DNSResolver

    public var phases: Set<StagePhase> { atConnect ? [.connect] : [.rcptTo] }

    public static let factory = StageFactory(
        name: "dnsbl", summary: "DNS block/allow lists of the client address (weights, threshold), at connect or RCPT"
    ) { config, environment in try DNSBLStage(config: config, environment: environment) }

    public init(config: ConfigTable, environment: StageEnvironment) throws {
        guard case .array(let items)? = config.value("zones"), !items.isEmpty else {
            throw config.error("zones", "missing: the block lists to ask, e.g. [\"zen.spamhaus.org\"]")
        }
        var zones: [Zone] = []
        for item in items {
            switch item {
            case .string(let name):
                zones.append(Zone(name: name, weight: 1, codes: []))
            case .table(let t):
                guard case .string(let name)? = t["zone"] else { throw config.error("zones", "a table needs zone = \"...\"") }
                var weight = 1
                if case .int(let w)? = t["weight"] { weight = w }
                var codes = Set<String>()
                if case .array(let list)? = t["codes"] {
                    for case .string(let code) in list { codes.insert(code) }
                }
                zones.append(Zone(name: name, weight: weight, codes: codes))
            default:
                throw config.error("zones", "each entry is a zone name or { zone, weight, codes }")
            }
        }
        self.zones = zones
        allowZones = try config.strings("allow_zones", default: [])
        threshold = try config.int("threshold", default: 1, range: 1...1000)
        atConnect = try config.choice("check_at", ["rcpt", "connect"], default: "rcpt") == "connect"
        replyTemplate = try config.string("reply", default: "Service unavailable; client [%c] blocked using %z")
        resolver = environment.resolver
    }

    /// The reversed-address query name (RFC 5782 2.1 and 2.4).
    public static func queryName(_ ip: IPAddress, zone: String) -> String {
        if ip.isIPv4 { return ip.bytes.reversed().map(String.init).joined(separator: ".") + "." + zone }
        var nibbles: [String] = []
        for byte in ip.bytes.reversed() {
            nibbles.append(String(byte & 0xF, radix: 16))
            nibbles.append(String(byte >> 4, radix: 16))
        }
        return nibbles.joined(separator: ".") + "." + zone
    }

    /// The outcome for a client, kept for the session.
    struct Listing: Sendable {
        var blocked: Bool
        var zones: [String]
        var text: String?
    }

    static let key = StateKey<Listing>("dnsbl.listing")

    func check(_ session: SessionInfo) async -> Listing {
        if let cached = session.state[Self.key] { return cached }
        guard let ip = IPAddress(session.clientAddress) else { return Listing(blocked: false, zones: []) }
        // Allow lists first: a listed client is not blocked.
        for zone in allowZones {
            if let answer = try? await resolver.query(Self.queryName(ip, zone: zone), .a), !answer.records.isEmpty {
                let listing = Listing(blocked: false, zones: [])
                session.state[Self.key] = listing
                return listing
            }
        }
        let hits = await withTaskGroup(of: (Zone, Bool).self) { group in
            for zone in zones {
                group.addTask {
                    guard let answer = try? await resolver.query(Self.queryName(ip, zone: zone.name), .a) else { return (zone, false) }
                    // Only 127.0.0.0/8 answers are listings (RFC 5782 2.1); others are errors.
                    let codes = answer.records.compactMap { $0.address }.filter { $0.isIPv4 && $0.bytes[0] == 127 }.map { "\($0)" }
                    let listed = !codes.isEmpty && (zone.codes.isEmpty || codes.contains(where: zone.codes.contains))
                    return (zone, listed)
                }
            }
            var out: [Zone] = []
            for await (zone, listed) in group where listed { out.append(zone) }
            return out
        }
        let score = hits.reduce(0) { $0 + $1.weight }
        var text: String?
        if score >= threshold, let first = hits.first,
           let txt = try? await resolver.query(Self.queryName(ip, zone: first.name), .txt) {
            text = txt.records.compactMap(\.text).first
        }
        let listing = Listing(blocked: score >= threshold, zones: hits.map(\.name).sorted(), text: text)
        session.state[Self.key] = listing
        return listing
    }

    func reply(_ listing: Listing, client: String) -> String {
        let text = replyTemplate
            .split(separator: "%c", omittingEmptySubsequences: false).joined(separator: client)
            .split(separator: "%z", omittingEmptySubsequences: false).joined(separator: listing.zones.joined(separator: ", "))
            .split(separator: "%t", omittingEmptySubsequences: false).joined(separator: listing.text ?? "")
        return String(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value < 0x7F }.map(Character.init)).prefix(400).description
    }

    public func connect(session: SessionInfo) async throws -> StageVerdict {
        let listing = await check(session)
        return listing.blocked ? .reject(554, "5.7.1", reply(listing, client: session.clientAddress)) : .continue
    }

    public func rcptTo(_ recipient: Recipient, session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        let listing = await check(session)
        return listing.blocked ? .reject(554, "5.7.1", reply(listing, client: session.clientAddress)) : .continue
    }
}
