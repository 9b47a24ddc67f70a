import SMTPCore
import SluiceStageAPI

/// `use = "spam"`: scans each message with SpamAssassin's spamd or rspamd at end of message.
///
/// ```toml
/// [[stage]]
/// use = "spam"
/// backend = "spamd://127.0.0.1:783"     # or "rspamd://127.0.0.1:11333"
/// reject_score = 15.0        # 550 5.7.1 at or above
/// quarantine_score = 8.0     # quarantine at or above (optional)
/// add_headers = true
/// max_scan_bytes = 2097152
/// timeout_ms = 15000
/// on_error = "accept"
/// ```
///
/// Keys:
/// - `backend` (required): `spamd://host[:port]` (SPAMC/1.5 spoken natively; spamd closes each
///   connection, so there is one per message) or `rspamd://host[:port]` (HTTP `/checkv2`, the
///   envelope in the request headers IP, Helo, From, Rcpt, Queue-Id, User).
/// - `reject_score`, `quarantine_score` (optional): thresholds on the score.
/// - `use_backend_action` (default false): follow rspamd's action (reject → 550 5.7.1,
///   soft reject and greylist → 451 4.7.1, add header / rewrite subject → marked as spam).
/// - `add_headers` (default true), `status_header` ("X-Spam-Status"), `score_header`
///   ("X-Spam-Score"), `flag_header` ("X-Spam-Flag"): the fields put on each message.
/// - `max_scan_bytes` (default 2097152): larger messages pass unscanned, marked so.
/// - `max_concurrency` (default 8): scans at once; others wait.
/// - `user` (optional): spamd's `User:` (per-user preferences).
/// - `timeout_ms` (the common key, default 30000): one scan, connect to reply.
///
/// The message streams from the spool to the scanner; the score and symbols go into the
/// trace (via the verdict's reason) and the `X-Spam-*` fields.
public struct SpamStage: Stage {
    let backend: SpamBackend
    let rejectScore: Double?
    let quarantineScore: Double?
    let useBackendAction: Bool
    let addHeaders: Bool
    let statusHeader: String
    let scoreHeader: String
    let flagHeader: String
    let maxScanBytes: Int
    let user: String?
    let timeout: Duration
    let hostname: String
    let slots: ScanSlots

    public var phases: Set<StagePhase> { [.endOfMessage] }
    public var capabilities: StageCapabilities { [.readsBody, .addsHeaders] }

    public static let factory = StageFactory(
        name: "spam", summary: "scans with spamd (SPAMC/1.5) or rspamd (/checkv2): reject, quarantine or mark by score"
    ) { config, environment in try SpamStage(config: config, environment: environment) }

    public init(config: ConfigTable, environment: StageEnvironment) throws {
        guard let text = try config.string("backend") else { throw config.error("backend", "missing: spamd://host:port or rspamd://host:port") }
        guard let backend = SpamBackend(text) else { throw config.error("backend", "'\(text)' is not spamd://host[:port] or rspamd://host[:port]") }
        self.backend = backend
        rejectScore = try config.double("reject_score")
        quarantineScore = try config.double("quarantine_score")
        useBackendAction = try config.bool("use_backend_action", default: false)
        addHeaders = try config.bool("add_headers", default: true)
        statusHeader = try config.string("status_header", default: "X-Spam-Status")
        scoreHeader = try config.string("score_header", default: "X-Spam-Score")
        flagHeader = try config.string("flag_header", default: "X-Spam-Flag")
        maxScanBytes = try config.int("max_scan_bytes", default: 2_097_152, range: 1...(1 << 30))
        user = try config.string("user")
        slots = ScanSlots(try config.int("max_concurrency", default: 8, range: 1...1024))
        // The chain's timeout for this stage; the scan itself gives up a little before it.
        let ms = try config.int("timeout_ms", default: 30_000, range: 1...3_600_000)
        timeout = .milliseconds(max(50, ms - ms / 10))
        hostname = environment.hostname
        if let r = rejectScore, let q = quarantineScore, q > r {
            throw config.error("quarantine_score", "above reject_score: it could never apply")
        }
    }

    public func endOfMessage(_ message: MessageView, session: SessionInfo, transaction: TransactionInfo) async throws -> StageDecision {
        if message.receivedSize > maxScanBytes {
            let note = "No, not scanned (size \(message.receivedSize) > max_scan_bytes \(maxScanBytes))"
            return StageDecision(.continue, edits: addHeaders ? [.insertHeader(index: 0, name: statusHeader, value: " " + note)] : [])
        }
        let headers = message.headers
        let body = message.body
        // Two passes over the spool file: the length first (spamd and HTTP need it up front).
        var length = 0
        for f in headers { length += f.wireBytes.count }
        length += 2
        for try await chunk in body { length += chunk.count }
        let envelope = ScanEnvelope(
            clientIP: session.clientAddress, helo: session.heloName, sender: transaction.sender.mailbox.map { "\($0)" } ?? "",
            recipients: transaction.recipients.map { "\($0.mailbox)" }, queueID: transaction.queueID,
            user: session.authenticatedUser, hostname: hostname
        )
        await slots.acquire()
        let verdict: SpamVerdict
        do {
            verdict = try await SpamScanner.scan(
                backend: backend, envelope: envelope, user: user, length: length,
                message: { MessageStream(headers: headers, body: body) }, deadline: timeout
            )
        } catch {
            await slots.release()
            throw error  // the stage's on_error decides
        }
        await slots.release()
        return decide(verdict)
    }

    func decide(_ v: SpamVerdict) -> StageDecision {
        var decision = decideVerdict(v)
        decision.note = "\(backend) score=\(Self.format(v.score))/\(Self.format(v.required))"
            + (v.action.map { " action=\($0)" } ?? "") + " symbols=\(v.symbols.prefix(30).joined(separator: ","))"
        return decision
    }

    private func decideVerdict(_ v: SpamVerdict) -> StageDecision {
        let score = Self.format(v.score)
        var edits: [MessageEdit] = []
        var spam = v.isSpam
        if useBackendAction, let action = v.action {
            switch action {
            case "reject":
                return StageDecision(.reject(550, "5.7.1", "Spam message rejected (score \(score))"))
            case "soft reject":
                return StageDecision(.tempfail(451, "4.7.1", "Try again later (score \(score))"))
            case "greylist":
                return StageDecision(.tempfail(451, "4.7.1", "Greylisted, try again later"))
            case "add header", "rewrite subject":
                spam = true
            default:
                break
            }
        }
        if let r = rejectScore, v.score >= r {
            return StageDecision(.reject(550, "5.7.1", "Spam message rejected (score \(score) >= \(Self.format(r)))"))
        }
        if addHeaders {
            let tests = Self.folded(v.symbols.prefix(50).map { $0 })
            edits = [
                .insertHeader(index: 0, name: flagHeader, value: spam ? " YES" : " NO"),
                .insertHeader(index: 0, name: scoreHeader, value: " \(score)"),
                .insertHeader(index: 0, name: statusHeader,
                              value: " \(spam ? "Yes" : "No"), score=\(score) required=\(Self.format(v.required))\r\n\ttests=\(tests)"),
            ]
        }
        if let q = quarantineScore, v.score >= q {
            return StageDecision(.quarantine(reason: "spam score \(score) >= \(Self.format(q))"), edits: edits)
        }
        return StageDecision(.continue, edits: edits)
    }

    /// The symbols, comma-separated, folded so no line passes 78 octets (RFC 5322 2.1.1).
    static func folded(_ symbols: [String]) -> String {
        guard !symbols.isEmpty else { return "none" }
        var out = ""
        var line = "\ttests=".count
        for (i, s) in symbols.enumerated() {
            let piece = s + (i < symbols.count - 1 ? "," : "")
            if line + piece.count > 78 && line > 8 {
                out += "\r\n\t"
                line = 1
            }
            out += piece
            line += piece.count
        }
        return out
    }

    static func format(_ x: Double) -> String {
        let r = (x * 10).rounded() / 10
        // A score too big for an Int (a scanner's reply is input like any other) stays a Double.
        guard r.isFinite, abs(r) < 1e15 else { return String(r) }
        return r == r.rounded() ? String(Int(r)) + ".0" : String(r)
    }
}

/// A counting semaphore for scans in flight.
actor ScanSlots {
    private var free: Int
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(_ count: Int) { free = count }

    func acquire() async {
        if free > 0 {
            free -= 1
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    func release() {
        if waiting.isEmpty {
            free += 1
        } else {
            waiting.removeFirst().resume()
        }
    }
}
