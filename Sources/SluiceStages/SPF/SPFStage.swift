import SMTPCore
import SluiceStageAPI

/// `use = "spf"`: checks the sender's SPF (RFC 7208) at MAIL FROM and acts per result.
///
/// Keys (each result's action is `"tag"`, `"reject"` or `"tempfail"`):
/// - `fail` (default "reject"): 550 5.7.23 with the domain's explanation.
/// - `softfail`, `neutral`, `none`, `pass` (default "tag"): reject gives 550 5.7.23.
/// - `permerror` (default "tag"): reject gives 550 5.7.24.
/// - `temperror` (default "tag"): tempfail gives 451 4.7.24.
/// - `helo` (default false): also check the HELO identity (RFC 7208 2.3), first; its result
///   is acted on by the same table.
/// - `skip_clients` (default []): CIDRs never checked (your own relays).
/// - `max_void_lookups` (default 2), `max_dns_terms` (default 10), `max_time_ms` (default 20000):
///   limits of one check (RFC 7208 4.6.4); past them the result is permerror (temperror for time).
/// - `threads` (default 16): checks that can wait for DNS at once.
/// - `cache_size` (default 10000): results kept for repeated checks of the same client,
///   sender and HELO, each no longer than the shortest TTL of the DNS answers it came from; 0
///   turns the cache off.
/// - `default_explanation` (default "%{o} does not authorize %{c} to send its mail (SPF)"): the
///   text of a fail's 550 reply when the domain has no `exp=` (macros as in RFC 7208 7).
///
/// "tag" continues; every result is recorded for Authentication-Results (`spf=... smtp.mailfrom=...`)
/// and the message gets a `Received-SPF:` field (RFC 7208 9.1) at the top, recorded at MAIL FROM
/// for the gateway to prepend when it spools the message (no end-of-message work).
public struct SPFStage: Stage {
    public enum Action: String, Sendable, CaseIterable {
        case tag, reject, tempfail
    }

    public let actions: [SPFResult: Action]
    public let checkHELO: Bool
    public let skipClients: [CIDR]
    let evaluator: SPFEvaluator
    let receiver: String

    public var phases: Set<StagePhase> { [.mailFrom] }
    public var capabilities: StageCapabilities { .addsHeaders }

    public static let factory = StageFactory(
        name: "spf", summary: "SPF (RFC 7208) at MAIL FROM with libspf2: reject, tempfail or tag per result; Received-SPF"
    ) { config, environment in try SPFStage(config: config, environment: environment) }

    private static let defaults: [SPFResult: Action] = [
        .pass: .tag, .fail: .reject, .softfail: .tag, .neutral: .tag, .none: .tag, .permerror: .tag, .temperror: .tag,
    ]

    public init(config: ConfigTable, environment: StageEnvironment) throws {
        var actions: [SPFResult: Action] = [:]
        for result in SPFResult.allCases {
            let name = try config.choice(result.rawValue, Action.allCases.map(\.rawValue), default: Self.defaults[result]!.rawValue)
            actions[result] = Action(rawValue: name)!
        }
        if actions[.temperror] == .reject {
            throw config.error("temperror", "a temporary error cannot be a permanent rejection: use \"tempfail\" or \"tag\"")
        }
        self.actions = actions
        checkHELO = try config.bool("helo", default: false)
        skipClients = try config.strings("skip_clients", default: []).map { text in
            guard let cidr = CIDR(text) else { throw config.error("skip_clients", "'\(text)' is not an address or CIDR") }
            return cidr
        }
        var limits = SPFEvaluator.Limits()
        limits.voidLookups = try config.int("max_void_lookups", default: 2, range: 0...100)
        limits.dnsTerms = try config.int("max_dns_terms", default: 10, range: 1...100)
        limits.time = .milliseconds(try config.int("max_time_ms", default: 20_000, range: 100...600_000))
        let threads = try config.int("threads", default: 16, range: 1...256)
        let cacheSize = try config.int("cache_size", default: 10_000, range: 0...10_000_000)
        let explanation = try config.string("default_explanation", default: SPFEvaluator.standardExplanation)
        if let problem = SPFMacroString.problem(explanation, explanation: true) {
            throw config.error("default_explanation", problem)
        }
        receiver = environment.hostname
        evaluator = SPFEvaluator(
            resolver: environment.resolver, receiver: environment.hostname, limits: limits, threads: threads,
            defaultExplanation: explanation, cacheSize: cacheSize
        )
    }

    private static let heloKey = StateKey<SPFOutcome>("spf.helo")

    public func mailFrom(session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        guard let ip = IPAddress(session.clientAddress), !skipClients.contains(where: { $0.contains(ip) }) else { return .continue }
        let helo = session.heloName ?? ""
        var outcomes: [SPFOutcome] = []
        defer { addTraceFields(outcomes, to: transaction) }
        if checkHELO && !helo.isEmpty {
            let outcome: SPFOutcome
            if let cached = session.state[Self.heloKey], cached.helo == helo {
                outcome = cached
            } else {
                outcome = await evaluator.checkHELO(ip: ip, helo: helo)
                session.state[Self.heloKey] = outcome
            }
            outcomes.append(outcome)
            let verdict = self.verdict(for: outcome)
            if verdict != .continue { return verdict }
        }
        let sender = transaction.sender.mailbox.map { "\($0)" } ?? ""
        if !(checkHELO && sender.isEmpty) {  // the null sender's check is the HELO check
            let outcome = await evaluator.check(ip: ip, sender: sender, helo: helo)
            outcomes.append(outcome)
            return verdict(for: outcome)
        }
        return .continue
    }

    /// Records each check's result and its `Received-SPF` field; the fields read in check order,
    /// above our Received (RFC 7208 9.1).
    private func addTraceFields(_ outcomes: [SPFOutcome], to transaction: TransactionInfo) {
        for outcome in outcomes { transaction.results.record(outcome.authenticationResult) }
        for outcome in outcomes.reversed() {
            transaction.results.prepend(.make(name: "Received-SPF", value: outcome.receivedSPF(receiver: receiver)))
        }
    }

    func verdict(for outcome: SPFOutcome) -> StageVerdict {
        switch actions[outcome.result] ?? .tag {
        case .tag:
            return .continue
        case .reject:
            let code = outcome.result == .permerror ? "5.7.24" : "5.7.23"
            let text = outcome.result == .fail ? (outcome.explanation ?? outcome.comment(receiver: receiver)) : outcome.comment(receiver: receiver)
            return .reject(SMTPReply(550, code, "SPF \(outcome.result.rawValue): \(Self.replySafe(text))"))
        case .tempfail:
            return .tempfail(SMTPReply(451, "4.7.24", "SPF \(outcome.result.rawValue): \(Self.replySafe(outcome.comment(receiver: receiver)))"))
        }
    }

    /// Reply text is printable ASCII on one line.
    static func replySafe(_ s: String) -> String {
        String(String(s.unicodeScalars.filter { $0.value >= 0x20 && $0.value < 0x7F }.map(Character.init)).prefix(400))
    }
}
