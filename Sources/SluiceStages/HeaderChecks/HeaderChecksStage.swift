import SMTPCore
import SluiceStageAPI
import Synchronization

/// `use = "header-checks"`: rules on header fields, like Postfix's `header_checks`, plus headers to add.
///
/// Keys:
/// - `rules`: an array of tables, tried in order on every header field at end of message:
///   - `header`: the field name (case-insensitive).
///   - `match`: a regular expression searched in the unfolded value (`(?i)` for case-insensitive).
///   - `action`: `"reject"`, `"tempfail"`, `"discard"`, `"quarantine"` (a verdict: the first matching
///     rule with one decides), or `"remove"` (delete the field and go on).
///   - `reply`: for reject/tempfail, default `"550 5.7.1 Message content rejected"` /
///     `"451 4.7.1 Message content deferred"`.
/// - `add`: an array of `{ name = "...", value = "..." }` fields appended to every message that passes.
public struct HeaderChecksStage: Stage {
    struct Rule: Sendable {
        enum Action: String, Sendable, CaseIterable {
            case reject, tempfail, discard, quarantine, remove
        }
        var header: String
        var pattern: String
        var regex: LockedRegex
        var action: Action
        var reply: SMTPReply
    }

    let rules: [Rule]
    let additions: [(name: String, value: String)]

    public var phases: Set<StagePhase> { [.endOfMessage] }
    public var capabilities: StageCapabilities {
        var caps: StageCapabilities = []
        if rules.contains(where: { $0.action == .remove }) { caps.insert(.changesHeaders) }
        if !additions.isEmpty { caps.insert(.addsHeaders) }
        return caps
    }

    public static let factory = StageFactory(
        name: "header-checks", summary: "regular-expression rules on header fields (reject, discard, quarantine, remove) and added fields"
    ) { config, _ in try HeaderChecksStage(config: config) }

    public init(config: ConfigTable) throws {
        var rules: [Rule] = []
        if let v = config.value("rules") {
            guard case .array(let items) = v else { throw config.error("rules", "expected an array of tables") }
            for (i, item) in items.enumerated() {
                guard case .table(let t) = item else { throw config.error("rules", "rule \(i + 1) is not a table") }
                let rule = ConfigTable(path: "\(config.path).rules[\(i + 1)]", file: config.file, values: t)
                guard let header = try rule.string("header"), !header.isEmpty else { throw rule.error("header", "missing") }
                guard let pattern = try rule.string("match") else { throw rule.error("match", "missing") }
                let regex: LockedRegex
                do { regex = LockedRegex(try Regex(pattern)) } catch { throw rule.error("match", "not a regular expression: \(error)") }
                let actionText = try rule.choice("action", Rule.Action.allCases.map(\.rawValue), default: "reject")
                let action = Rule.Action(rawValue: actionText)!
                let defaultReply = action == .tempfail ? "451 4.7.1 Message content deferred" : "550 5.7.1 Message content rejected"
                let replyText = try rule.string("reply", default: defaultReply)
                guard let reply = SMTPReply(parsing: replyText), reply.code >= 400 else {
                    throw rule.error("reply", "'\(replyText)' is not a 4xx/5xx reply")
                }
                try rule.finish()
                rules.append(Rule(header: header, pattern: pattern, regex: regex, action: action, reply: reply))
            }
        }
        var additions: [(String, String)] = []
        if let v = config.value("add") {
            guard case .array(let items) = v else { throw config.error("add", "expected an array of { name, value } tables") }
            for (i, item) in items.enumerated() {
                guard case .table(let t) = item else { throw config.error("add", "entry \(i + 1) is not a table") }
                let field = ConfigTable(path: "\(config.path).add[\(i + 1)]", file: config.file, values: t)
                guard let name = try field.string("name"), !name.isEmpty,
                      name.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: ":") })
                else { throw field.error("name", "missing or not a header field name") }
                let value = try field.string("value", default: "")
                guard !value.contains("\r"), !value.contains("\n") else { throw field.error("value", "must be one line") }
                try field.finish()
                additions.append((name, value))
            }
        }
        self.rules = rules
        self.additions = additions
    }

    public func endOfMessage(_ message: MessageView, session: SessionInfo, transaction: TransactionInfo) async throws -> StageDecision {
        var edits: [MessageEdit] = []
        var seen: [String: Int] = [:]
        var removedSoFar: [String: Int] = [:]
        for field in message.headers {
            let key = field.name.lowercased()
            seen[key, default: 0] += 1
            let value = field.unfoldedValue
            for rule in rules where rule.header.caseInsensitiveEquals(field.name) {
                guard rule.regex.matches(value) else { continue }
                switch rule.action {
                case .reject: return StageDecision(.reject(rule.reply))
                case .tempfail: return StageDecision(.tempfail(rule.reply))
                case .discard: return StageDecision(.discard)
                case .quarantine: return StageDecision(.quarantine(reason: "\(field.name) matched \(rule.pattern)"), edits: edits)
                case .remove:
                    // Occurrence numbers shift as earlier fields of the same name are removed.
                    let occurrence = seen[key]! - removedSoFar[key, default: 0]
                    edits.append(.deleteHeader(name: field.name, occurrence: occurrence))
                    removedSoFar[key, default: 0] += 1
                }
                break
            }
        }
        edits += additions.map { MessageEdit.addHeader(name: $0.name, value: $0.value) }
        return StageDecision(.continue, edits: edits)
    }
}

/// A compiled regular expression shared by sessions. `Regex` is not `Sendable` (it compiles
/// lazily into shared storage), so matches take a lock; header values are short.
final class LockedRegex: Sendable {
    private let regex: Mutex<Regex<AnyRegexOutput>>

    init(_ regex: sending Regex<AnyRegexOutput>) {
        self.regex = Mutex(regex)
    }

    func matches(_ text: String) -> Bool {
        regex.withLock { (try? $0.firstMatch(in: text)) != nil }
    }
}
