import COpenDMARC
import SMTPCore
import SluiceStageAPI
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// `use = "dmarc"`: DMARC (RFC 7489) with libopendmarc at end of message: aligns the SPF and
/// DKIM results recorded earlier in the chain (put `spf` and `dkim-verify` before it) with the
/// RFC5322.From domain, fetches the domain's policy through the gateway's resolver (falling
/// back to the organizational domain by the Public Suffix List), and honours p=, sp= and pct=.
///
/// Keys (what to do when the domain's policy says so):
/// - `reject` (default "reject"): `"reject"` (550 5.7.1), `"quarantine"`, or `"tag"` only.
/// - `quarantine` (default "quarantine"): `"quarantine"` (the core's quarantine), `"reject"`, or `"tag"`.
/// - `temperror` (default "tag"): when the policy cannot be fetched: `"tag"` or `"tempfail"` (451 4.7.1).
/// - `public_suffix_list` (default "/usr/share/publicsuffix/public_suffix_list.dat", Debian's
///   `publicsuffix` package).
/// - `honor_pct` (default true): apply the policy to pct% of failing mail, the next lower one
///   to the rest (RFC 7489 6.6.4).
///
/// Records `dmarc=pass|fail|none|temperror|permerror (p=... dis=...) header.from=...`.
public struct DMARCStage: Stage {
    public enum Action: String, Sendable, CaseIterable { case reject, quarantine, tag, tempfail }

    let onReject: Action
    let onQuarantine: Action
    let onTemperror: Action
    let honorPct: Bool
    let resolver: any DNSResolver

    public var phases: Set<StagePhase> { [.endOfMessage] }

    public static let factory = StageFactory(
        name: "dmarc", summary: "DMARC (RFC 7489) with libopendmarc over the SPF and DKIM results before it; reject/quarantine/tag"
    ) { config, environment in try DMARCStage(config: config, environment: environment) }

    public init(config: ConfigTable, environment: StageEnvironment) throws {
        onReject = Action(rawValue: try config.choice("reject", ["reject", "quarantine", "tag"], default: "reject"))!
        onQuarantine = Action(rawValue: try config.choice("quarantine", ["quarantine", "reject", "tag"], default: "quarantine"))!
        onTemperror = Action(rawValue: try config.choice("temperror", ["tag", "tempfail"], default: "tag"))!
        honorPct = try config.bool("honor_pct", default: true)
        let psl = try config.string("public_suffix_list", default: "/usr/share/publicsuffix/public_suffix_list.dat")
        try DMARCLibrary.start(publicSuffixList: environment.resolvePath(psl))
        resolver = environment.resolver
    }

    /// What DMARC concluded for one message.
    public struct Evaluation: Sendable, Hashable {
        public var result: String
        public var fromDomain: String
        public var policy: String?
        public var disposition: String
    }

    public static let evaluationKey = StateKey<Evaluation>("dmarc.evaluation")

    public func endOfMessage(_ message: MessageView, session: SessionInfo, transaction: TransactionInfo) async throws -> StageDecision {
        let froms = message.headers.filter { $0.name.caseInsensitiveEquals("From") }
        // Domains are case-insensitive: `a@EXAMPLE.org, b@example.org` has one author domain.
        let domains = froms.flatMap { Self.domains(in: $0.unfoldedValue) }.map { $0.lowercased() }
        guard froms.count == 1, let from = domains.first, Set(domains).count == 1, let fromDomain = IDNA.toASCII(from.lowercased()) else {
            // RFC 7489 6.6.1: no single author domain, no DMARC evaluation.
            transaction.results.record(AuthenticationResult(method: "dmarc", result: "permerror", reason: "no single RFC5322.From domain"))
            return StageDecision()
        }
        // The policy record: the From domain's, else its organizational domain's (RFC 7489 6.6.3).
        let organizational = DMARCLibrary.organizationalDomain(fromDomain)
        var record: String?
        var policyDomain = fromDomain
        var dnsFailed = false
        discovery: for candidate in [fromDomain, organizational] {
            switch await fetchRecord(candidate) {
            case .record(let text):
                record = text
                policyDomain = candidate
                break discovery
            case .none:
                break
            case .several:
                // RFC 7489 6.6.3 step 5: more than one record ends policy discovery.
                break discovery
            case .error:
                dnsFailed = true
                break discovery
            }
            if candidate == organizational { break }
        }
        if record == nil && dnsFailed {
            transaction.results.record(AuthenticationResult(method: "dmarc", result: "temperror", properties: [.init("header.from", fromDomain)]))
            if onTemperror == .tempfail { return StageDecision(.tempfail(451, "4.7.1", "DMARC policy of \(fromDomain) could not be fetched, try again later")) }
            return StageDecision()
        }
        guard let record else {
            transaction.results.record(AuthenticationResult(method: "dmarc", result: "none", properties: [.init("header.from", fromDomain)]))
            transaction.state[Self.evaluationKey] = Evaluation(result: "none", fromDomain: fromDomain, policy: nil, disposition: "none")
            return StageDecision()
        }
        let outcome = DMARCLibrary.evaluate(
            clientIP: session.clientAddress, fromDomain: fromDomain, record: record, policyDomain: policyDomain,
            organizationalDomain: organizational, spf: Self.spf(transaction, session: session),
            dkim: transaction.state[DKIMVerifyStage.resultsKey] ?? Self.dkim(transaction)
        )
        var disposition = outcome.disposition
        if honorPct, outcome.pct < 100, disposition != "none", Int.random(in: 0..<100) >= outcome.pct {
            disposition = disposition == "reject" ? "quarantine" : "none"
        }
        transaction.results.record(AuthenticationResult(
            method: "dmarc", result: outcome.result, reason: "p=\(outcome.policy) dis=\(disposition.uppercased())",
            properties: [.init("header.from", fromDomain)]
        ))
        transaction.state[Self.evaluationKey] = Evaluation(result: outcome.result, fromDomain: fromDomain, policy: outcome.policy, disposition: disposition)
        let action: Action
        switch disposition {
        case "reject": action = onReject
        case "quarantine": action = onQuarantine
        default: return StageDecision()
        }
        switch action {
        case .reject: return StageDecision(.reject(550, "5.7.1", "Message rejected by the DMARC policy of \(fromDomain)"))
        case .quarantine: return StageDecision(.quarantine(reason: "DMARC policy of \(fromDomain) (p=\(outcome.policy))"))
        case .tag, .tempfail: return StageDecision()
        }
    }

    enum Fetched { case record(String), none, several, error }

    /// `_dmarc.<domain>` TXT: the records whose first tag is `v=DMARC1` (RFC 7489 6.6.3).
    func fetchRecord(_ domain: String) async -> Fetched {
        do {
            let answer = try await resolver.query("_dmarc." + domain, .txt)
            guard answer.isDefinite else { return .error }
            let records = answer.records.compactMap(\.text).filter(Self.isDMARCRecord)
            switch records.count {
            case 0: return .none
            case 1: return .record(records[0])
            default: return .several
            }
        } catch {
            return .error
        }
    }

    /// dmarc-version = "v" *WSP "=" *WSP "DMARC1" (RFC 7489 6.4), then the end, a `;` or white space.
    static func isDMARCRecord(_ text: String) -> Bool {
        var rest = Substring(text)
        func skipWSP() { rest = rest.drop { $0 == " " || $0 == "\t" } }
        guard rest.first == "v" else { return false }
        rest = rest.dropFirst()
        skipWSP()
        guard rest.first == "=" else { return false }
        rest = rest.dropFirst()
        skipWSP()
        guard rest.hasPrefix("DMARC1") else { return false }
        rest = rest.dropFirst(6)
        return rest.isEmpty || [";", " ", "\t"].contains(rest.first!)
    }

    /// The SPF identity and result recorded by an `spf` stage: the MAIL FROM domain, or the HELO
    /// name for the null sender (RFC 7489 4.1).
    static func spf(_ transaction: TransactionInfo, session: SessionInfo) -> (domain: String, result: String, helo: Bool)? {
        let spf = transaction.results.all.filter { $0.method == "spf" }
        if let mailfrom = spf.first(where: { $0.properties.contains { $0.name == "smtp.mailfrom" } }),
           let address = mailfrom.properties.first(where: { $0.name == "smtp.mailfrom" })?.value,
           let at = address.lastIndex(of: "@") {
            return (String(address[address.index(after: at)...]).lowercased(), mailfrom.result, false)
        }
        if let helo = spf.first(where: { $0.properties.contains { $0.name == "smtp.helo" } }),
           let name = helo.properties.first(where: { $0.name == "smtp.helo" })?.value {
            return (name.lowercased(), helo.result, true)
        }
        return nil
    }

    /// DKIM results recorded as Authentication-Results by another stage (e.g. a milter's).
    static func dkim(_ transaction: TransactionInfo) -> [DKIMVerifyStage.SignatureResult] {
        transaction.results.all.filter { $0.method == "dkim" }.compactMap { r in
            guard let d = r.properties.first(where: { $0.name == "header.d" })?.value else { return nil }
            let s = r.properties.first(where: { $0.name == "header.s" })?.value ?? ""
            return DKIMVerifyStage.SignatureResult(domain: d, selector: s, algorithm: "", result: r.result, reason: nil, signaturePrefix: "")
        }
    }

    /// Address domains in a From field value (RFC 5322 3.4 mailbox-list / group).
    static func domains(in value: String) -> [String] {
        HeaderAddress.parseList(value).map(\.domain)
    }
}

/// libopendmarc: the process-wide library (the Public Suffix List), and one evaluation.
enum DMARCLibrary {
    private static let started = Mutex<String?>(nil)

    static func start(publicSuffixList path: String) throws {
        try started.withLock { current in
            if current != nil { return }
            guard access(path, R_OK) == 0 else {
                throw ConfigError(file: "", line: nil, key: "public_suffix_list", message: "cannot read \(path) (Debian package publicsuffix)")
            }
            var lib = OPENDMARC_LIB_T()
            lib.tld_type = OPENDMARC_TLD_TYPE_MOZILLA
            withUnsafeMutableBytes(of: &lib.tld_source_file) { raw in
                let bytes = Array(path.utf8.prefix(raw.count - 1)) + [0]
                raw.copyBytes(from: bytes)
            }
            let status = opendmarc_policy_library_init(&lib)
            guard status == DMARC_PARSE_OKAY else {
                throw ConfigError(file: "", line: nil, key: "public_suffix_list", message: "libopendmarc could not load \(path) (\(status))")
            }
            current = path
        }
    }

    static func organizationalDomain(_ domain: String) -> String {
        var out = [UInt8](repeating: 0, count: 256)
        var input = Array(domain.utf8) + [0]
        guard opendmarc_get_tld(&input, &out, out.count) == 0 else { return domain }
        let org = String(cString: out.map { CChar(bitPattern: $0) })
        return org.isEmpty ? domain : org
    }

    struct Outcome {
        var result: String
        var policy: String
        var disposition: String
        var pct: Int
    }

    static func evaluate(
        clientIP: String, fromDomain: String, record: String, policyDomain: String, organizationalDomain: String,
        spf: (domain: String, result: String, helo: Bool)?, dkim: [DKIMVerifyStage.SignatureResult]
    ) -> Outcome {
        var ip = Array(clientIP.utf8) + [0]
        let ctx = opendmarc_policy_connect_init(&ip, clientIP.contains(":") ? DMARC_POLICY_IP_TYPE_IPV6 : DMARC_POLICY_IP_TYPE_IPV4)
        defer { _ = opendmarc_policy_connect_shutdown(ctx) }
        var from = Array(fromDomain.utf8) + [0]
        _ = opendmarc_policy_store_from_domain(ctx, &from)
        if let spf {
            var d = Array(spf.domain.utf8) + [0]
            let outcome: Int32 = switch spf.result {
            case "pass": DMARC_POLICY_SPF_OUTCOME_PASS
            case "temperror": DMARC_POLICY_SPF_OUTCOME_TMPFAIL
            case "none": DMARC_POLICY_SPF_OUTCOME_NONE
            default: DMARC_POLICY_SPF_OUTCOME_FAIL
            }
            var human = Array(spf.result.utf8) + [0]
            _ = opendmarc_policy_store_spf(ctx, &d, outcome, spf.helo ? DMARC_POLICY_SPF_ORIGIN_HELO : DMARC_POLICY_SPF_ORIGIN_MAILFROM, &human)
        }
        for signature in dkim {
            var d = Array(signature.domain.lowercased().utf8) + [0]
            var s = Array(signature.selector.utf8) + [0]
            let outcome: Int32 = switch signature.result {
            case "pass": DMARC_POLICY_DKIM_OUTCOME_PASS
            case "temperror": DMARC_POLICY_DKIM_OUTCOME_TMPFAIL
            default: DMARC_POLICY_DKIM_OUTCOME_FAIL
            }
            var human = Array(signature.result.utf8) + [0]
            _ = opendmarc_policy_store_dkim(ctx, &d, &s, outcome, &human)
        }
        var text = Array(record.utf8) + [0]
        var domain = Array(policyDomain.utf8) + [0]
        var org = Array(organizationalDomain.utf8) + [0]
        // The From domain's own record is judged by p=; sp= applies only to a record found at
        // the organizational domain (RFC 7489 6.6.3), which libopendmarc infers from `org`.
        let stored = policyDomain == fromDomain
            ? opendmarc_policy_store_dmarc(ctx, &text, &domain, nil)
            : opendmarc_policy_store_dmarc(ctx, &text, &domain, &org)
        guard stored == DMARC_PARSE_OKAY else {
            return Outcome(result: "permerror", policy: "invalid", disposition: "none", pct: 100)
        }
        var p: Int32 = 0, sp: Int32 = 0, pct: Int32 = 100
        _ = opendmarc_policy_fetch_p(ctx, &p)
        _ = opendmarc_policy_fetch_sp(ctx, &sp)
        _ = opendmarc_policy_fetch_pct(ctx, &pct)
        let usesSP = policyDomain != fromDomain && sp != 0
        let effective = usesSP ? sp : p
        let policyName = switch UInt8(truncatingIfNeeded: effective) {
        case UInt8(ascii: "r"): "reject"
        case UInt8(ascii: "q"): "quarantine"
        default: "none"
        }
        switch opendmarc_get_policy_to_enforce(ctx) {
        case DMARC_POLICY_PASS:
            return Outcome(result: "pass", policy: policyName, disposition: "none", pct: Int(pct))
        case DMARC_POLICY_REJECT:
            return Outcome(result: "fail", policy: policyName, disposition: "reject", pct: Int(pct))
        case DMARC_POLICY_QUARANTINE:
            return Outcome(result: "fail", policy: policyName, disposition: "quarantine", pct: Int(pct))
        case DMARC_POLICY_NONE:
            return Outcome(result: "fail", policy: policyName, disposition: "none", pct: Int(pct))
        default:
            return Outcome(result: "none", policy: policyName, disposition: "none", pct: Int(pct))
        }
    }
}
