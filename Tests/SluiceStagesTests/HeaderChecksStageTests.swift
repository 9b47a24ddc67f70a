import SMTPCore
import SluiceStageAPI
import SluiceStageTesting
@testable import SluiceStages
import Testing

/// `header-checks` through `StageHarness`: rules on header fields (reject, tempfail, discard,
/// quarantine, remove), the fields it adds, and the configuration errors.
@Suite("HeaderChecksStage")
struct HeaderChecksStageTests {
    static func rule(_ header: String, _ match: String, _ action: String? = nil, reply: String? = nil) -> ConfigValue {
        var t: [String: ConfigValue] = ["header": .string(header), "match": .string(match)]
        if let action { t["action"] = .string(action) }
        if let reply { t["reply"] = .string(reply) }
        return .table(t)
    }

    static func stage(_ rules: [ConfigValue], add: [(String, String)] = []) throws -> HeaderChecksStage {
        var values: [String: ConfigValue] = ["rules": .array(rules)]
        if !add.isEmpty {
            values["add"] = .array(add.map { .table(["name": .string($0.0), "value": .string($0.1)]) })
        }
        return try HeaderChecksStage(config: .testing(values))
    }

    static func run(_ stage: HeaderChecksStage, _ message: String) async throws -> StageHarness.MessageOutcome {
        var h = StageHarness(stage: stage)
        _ = try await h.mailFrom("sender@example.org")
        return try await h.message(message, to: ["user@example.test"])
    }

    // MARK: Verdicts

    @Test func rejectWithTheDefaultReply() async throws {
        let stage = try Self.stage([Self.rule("Subject", "viagra", "reject")])
        let out = try await Self.run(stage, "From: a@example.org\nSubject: cheap viagra\n\nbody\n")
        #expect(out.decision.verdict == .reject(550, "5.7.1", "Message content rejected"))
        #expect(out.decision.edits.isEmpty)
    }

    @Test func rejectIsTheDefaultAction() async throws {
        let stage = try Self.stage([Self.rule("Subject", "viagra")])
        let out = try await Self.run(stage, "Subject: viagra\n\nbody\n")
        #expect(out.decision.verdict == .reject(550, "5.7.1", "Message content rejected"))
    }

    @Test func rejectWithAConfiguredReply() async throws {
        let stage = try Self.stage([Self.rule("X-Mailer", "^BadMailer", "reject", reply: "554 5.7.0 We do not take mail from BadMailer")])
        let out = try await Self.run(stage, "X-Mailer: BadMailer 2.0\nSubject: x\n\nbody\n")
        #expect(out.decision.verdict == .reject(554, "5.7.0", "We do not take mail from BadMailer"))
    }

    @Test func tempfailWithTheDefaultReply() async throws {
        let stage = try Self.stage([Self.rule("Subject", "later", "tempfail")])
        let out = try await Self.run(stage, "Subject: try later\n\nbody\n")
        #expect(out.decision.verdict == .tempfail(451, "4.7.1", "Message content deferred"))
    }

    @Test func tempfailWithAConfiguredReply() async throws {
        let stage = try Self.stage([Self.rule("Subject", "later", "tempfail", reply: "452 4.3.1 Come back tomorrow")])
        let out = try await Self.run(stage, "Subject: try later\n\nbody\n")
        #expect(out.decision.verdict == .tempfail(SMTPReply(452, "4.3.1", "Come back tomorrow")))
    }

    @Test func discard() async throws {
        let stage = try Self.stage([Self.rule("Precedence", "^junk$", "discard")], add: [("X-Checked", "yes")])
        let out = try await Self.run(stage, "Precedence: junk\nSubject: x\n\nbody\n")
        #expect(out.decision.verdict == .discard)
        #expect(out.decision.edits.isEmpty)
        #expect(out.header("X-Checked") == [])
    }

    @Test func quarantineNamesTheFieldAsWrittenAndThePattern() async throws {
        let stage = try Self.stage([Self.rule("subject", #"^\[SPAM\]"#, "quarantine")])
        let out = try await Self.run(stage, "SUBJECT: [SPAM] hello\n\nbody\n")
        #expect(out.decision.verdict == .quarantine(reason: #"SUBJECT matched ^\[SPAM\]"#))
    }

    @Test func noMatchContinuesAndAddsTheFields() async throws {
        let stage = try Self.stage([Self.rule("Subject", "viagra")], add: [("X-Scanned", "yes"), ("X-Scanner", "sluice header-checks")])
        let out = try await Self.run(stage, "Subject: lunch\nFrom: a@example.org\n\nSee you.\n")
        #expect(out.decision.verdict == .continue)
        #expect(out.decision.edits == [.addHeader(name: "X-Scanned", value: "yes"), .addHeader(name: "X-Scanner", value: "sluice header-checks")])
        #expect(out.headers.map(\.name) == ["Subject", "From", "X-Scanned", "X-Scanner"])
        #expect(out.text == "Subject: lunch\r\nFrom: a@example.org\r\nX-Scanned: yes\r\nX-Scanner: sluice header-checks\r\n\r\nSee you.\r\n")
    }

    @Test func aRuleOnlyLooksAtItsOwnHeader() async throws {
        let stage = try Self.stage([Self.rule("Subject", "viagra")])
        let out = try await Self.run(stage, "Subject: hello\nX-Subject: viagra\nComments: viagra\n\nviagra in the body\n")
        #expect(out.decision.verdict == .continue)
    }

    @Test func aMessageWithoutTheHeaderPasses() async throws {
        let stage = try Self.stage([Self.rule("Subject", ".*")])
        let out = try await Self.run(stage, "From: a@example.org\n\nbody\n")
        #expect(out.decision.verdict == .continue)
    }

    // MARK: Case, folding, order

    @Test func fieldNamesAreCaseInsensitiveButPatternsAreNot() async throws {
        let plain = try Self.stage([Self.rule("sUbJeCt", "viagra")])
        #expect(try await Self.run(plain, "SUBJECT: viagra\n\nb\n").decision.verdict == .reject(550, "5.7.1", "Message content rejected"))
        #expect(try await Self.run(plain, "subject: VIAGRA\n\nb\n").decision.verdict == .continue)
        let folded = try Self.stage([Self.rule("Subject", "(?i)viagra")])
        #expect(try await Self.run(folded, "subject: ViAgRa\n\nb\n").decision.verdict == .reject(550, "5.7.1", "Message content rejected"))
    }

    @Test func aFoldedFieldIsMatchedUnfolded() async throws {
        // The line break goes, the white space of the continuation stays (RFC 5322 2.2.3).
        let stage = try Self.stage([Self.rule("Subject", "^cheap viagra now$")])
        let out = try await Self.run(stage, "Subject: cheap\n viagra\n now\n\nbody\n")
        #expect(out.decision.verdict == .reject(550, "5.7.1", "Message content rejected"))
        let tab = try Self.stage([Self.rule("Subject", #"^cheap\tviagra$"#)])
        #expect(try await Self.run(tab, "Subject: cheap\n\tviagra\n\nbody\n").decision.verdict == .reject(550, "5.7.1", "Message content rejected"))
    }

    @Test func aPatternIsSearchedNotAnchored() async throws {
        let stage = try Self.stage([Self.rule("Subject", "via")])
        #expect(try await Self.run(stage, "Subject: sent via post\n\nb\n").decision.verdict == .reject(550, "5.7.1", "Message content rejected"))
    }

    @Test func theFirstMatchingRuleForAFieldWins() async throws {
        let stage = try Self.stage([
            Self.rule("Subject", "offer", "discard"),
            Self.rule("Subject", "offer", "reject"),
        ])
        #expect(try await Self.run(stage, "Subject: special offer\n\nb\n").decision.verdict == .discard)
    }

    @Test func fieldsAreCheckedInMessageOrderSoTheEarliestMatchingFieldDecides() async throws {
        // The rule order does not outrank the order of the fields: From comes first in the
        // message, so its (second) rule decides.
        let stage = try Self.stage([
            Self.rule("Subject", "offer", "reject"),
            Self.rule("From", "spammer", "discard"),
        ])
        #expect(try await Self.run(stage, "From: spammer@example.net\nSubject: offer\n\nb\n").decision.verdict == .discard)
        #expect(try await Self.run(stage, "Subject: offer\nFrom: spammer@example.net\n\nb\n").decision.verdict
            == .reject(550, "5.7.1", "Message content rejected"))
    }

    @Test func everyOccurrenceOfAFieldIsChecked() async throws {
        let stage = try Self.stage([Self.rule("Received", "from evil", "reject")])
        let out = try await Self.run(stage, "Received: from good\nReceived: from evil\nSubject: x\n\nb\n")
        #expect(out.decision.verdict == .reject(550, "5.7.1", "Message content rejected"))
    }

    // MARK: remove

    @Test func removeDeletesEveryMatchingOccurrence() async throws {
        let stage = try Self.stage([Self.rule("Received", "internal", "remove")], add: [("X-Cleaned", "1")])
        #expect(stage.capabilities == [.changesHeaders, .addsHeaders])
        let out = try await Self.run(stage, """
            Received: from internal-1
            Received: from edge
            received: from internal-2
            Received: from internal-3
            Subject: x

            body

            """)
        #expect(out.decision.verdict == .continue)
        #expect(out.decision.edits == [
            .deleteHeader(name: "Received", occurrence: 1),
            .deleteHeader(name: "received", occurrence: 2),
            .deleteHeader(name: "Received", occurrence: 2),
            .addHeader(name: "X-Cleaned", value: "1"),
        ])
        #expect(out.header("Received") == ["from edge"])
        #expect(out.headers.map(\.name) == ["Received", "Subject", "X-Cleaned"])
    }

    @Test func aRemovedFieldIsNotCheckedByLaterRules() async throws {
        let stage = try Self.stage([
            Self.rule("X-Internal", ".", "remove"),
            Self.rule("X-Internal", ".", "reject"),
        ])
        let out = try await Self.run(stage, "X-Internal: secret\nSubject: x\n\nb\n")
        #expect(out.decision.verdict == .continue)
        #expect(out.header("X-Internal") == [])
    }

    @Test func aLaterVerdictDropsTheRemovalsButQuarantineKeepsThem() async throws {
        let reject = try Self.stage([Self.rule("X-Internal", ".", "remove"), Self.rule("Subject", "bad", "reject")], add: [("X-A", "b")])
        let rejected = try await Self.run(reject, "X-Internal: 1\nSubject: bad\n\nb\n")
        #expect(rejected.decision == StageDecision(.reject(550, "5.7.1", "Message content rejected")))

        let quarantine = try Self.stage([Self.rule("X-Internal", ".", "remove"), Self.rule("Subject", "bad", "quarantine")], add: [("X-A", "b")])
        let held = try await Self.run(quarantine, "X-Internal: 1\nSubject: bad\n\nb\n")
        #expect(held.decision.verdict == .quarantine(reason: "Subject matched bad"))
        // The removal made before the match is kept; the added fields are not.
        #expect(held.decision.edits == [.deleteHeader(name: "X-Internal", occurrence: 1)])
    }

    @Test func capabilitiesFollowTheConfiguration() throws {
        #expect(try Self.stage([Self.rule("Subject", "x", "reject")]).capabilities == [])
        #expect(try Self.stage([], add: [("X-A", "1")]).capabilities == [.addsHeaders])
        #expect(try HeaderChecksStage(config: .testing([:])).capabilities == [])
        #expect(try Self.stage([Self.rule("Subject", "x", "reject")]).phases == [.endOfMessage])
    }

    // MARK: Configuration errors

    struct BadConfig: Sendable, CustomStringConvertible {
        var name: String
        var values: [String: ConfigValue]
        var key: String
        var message: String
        var description: String { name }
    }

    static let badConfigs: [BadConfig] = [
        BadConfig(name: "unbalanced regex", values: ["rules": .array([rule("Subject", "(viagra", "reject")])],
                  key: "stage.rules[1].match", message: "not a regular expression"),
        BadConfig(name: "bad regex in the second rule", values: ["rules": .array([rule("Subject", "ok"), rule("From", "[a-", "reject")])],
                  key: "stage.rules[2].match", message: "not a regular expression"),
        BadConfig(name: "missing header", values: ["rules": .array([.table(["match": .string("x")])])],
                  key: "stage.rules[1].header", message: "missing"),
        BadConfig(name: "empty header", values: ["rules": .array([rule("", "x")])],
                  key: "stage.rules[1].header", message: "missing"),
        BadConfig(name: "missing match", values: ["rules": .array([.table(["header": .string("Subject")])])],
                  key: "stage.rules[1].match", message: "missing"),
        BadConfig(name: "unknown action", values: ["rules": .array([rule("Subject", "x", "bounce")])],
                  key: "stage.rules[1].action",
                  message: #"must be one of "reject", "tempfail", "discard", "quarantine", "remove""#),
        BadConfig(name: "2xx reply", values: ["rules": .array([rule("Subject", "x", "reject", reply: "250 2.0.0 OK")])],
                  key: "stage.rules[1].reply", message: "'250 2.0.0 OK' is not a 4xx/5xx reply"),
        BadConfig(name: "reply of words", values: ["rules": .array([rule("Subject", "x", "reject", reply: "go away")])],
                  key: "stage.rules[1].reply", message: "'go away' is not a 4xx/5xx reply"),
        BadConfig(name: "enhanced code of another class", values: ["rules": .array([rule("Subject", "x", "reject", reply: "550 4.7.1 x")])],
                  key: "stage.rules[1].reply", message: "'550 4.7.1 x' is not a 4xx/5xx reply"),
        BadConfig(name: "unknown rule key", values: ["rules": .array([.table(["header": .string("Subject"), "match": .string("x"), "acton": .string("discard")])])],
                  key: "stage.rules[1].acton", message: "unknown key"),
        BadConfig(name: "rules not an array", values: ["rules": .string("Subject: x")],
                  key: "stage.rules", message: "expected an array of tables"),
        BadConfig(name: "rule not a table", values: ["rules": .array([.string("Subject")])],
                  key: "stage.rules", message: "rule 1 is not a table"),
        BadConfig(name: "match not a string", values: ["rules": .array([.table(["header": .string("Subject"), "match": .int(3)])])],
                  key: "stage.rules[1].match", message: "expected a string, found integer"),
        BadConfig(name: "added name with a colon", values: ["add": .array([.table(["name": .string("X-A:"), "value": .string("1")])])],
                  key: "stage.add[1].name", message: "missing or not a header field name"),
        BadConfig(name: "added name with a space", values: ["add": .array([.table(["name": .string("X A"), "value": .string("1")])])],
                  key: "stage.add[1].name", message: "missing or not a header field name"),
        BadConfig(name: "added value on two lines", values: ["add": .array([.table(["name": .string("X-A"), "value": .string("1\r\nBcc: x@y")])])],
                  key: "stage.add[1].value", message: "must be one line"),
        BadConfig(name: "add not an array", values: ["add": .table(["name": .string("X-A")])],
                  key: "stage.add", message: "expected an array of { name, value } tables"),
    ]

    @Test(arguments: badConfigs)
    func configurationErrors(_ bad: BadConfig) throws {
        let error = #expect(throws: ConfigError.self) { try HeaderChecksStage(config: .testing(bad.values)) }
        #expect(error?.key == bad.key)
        #expect(error?.message.hasPrefix(bad.message) == true, "\(error?.message ?? "no error")")
    }
}
