import Logging
import SMTPCore
import SluiceDNS
import SluiceStageAPI
@testable import SluiceStages
import Testing

@Suite("SPFStage")
struct SPFStageTests {
    static func environment(_ resolver: any DNSResolver = spfZone) -> StageEnvironment {
        StageEnvironment(hostname: "mx.example.test", configDirectory: "/etc/sluice", logger: Logger(label: "spf-test"), resolver: resolver)
    }

    static func stage(_ values: [String: ConfigValue] = [:]) throws -> SPFStage {
        let config = table(values.merging(["threads": .int(2)]) { a, _ in a })
        let stage = try SPFStage(config: config, environment: environment())
        try config.finish()
        return stage
    }

    func from(_ address: String) -> TransactionInfo { transaction(.mailbox(mb(address))) }

    /// Runs MAIL FROM; returns the verdict, the recorded results and the trace fields to put on
    /// top of the message (top first).
    func run(_ stage: SPFStage, client: String = "192.0.2.1", helo: String? = "helo.test", sender: ReversePath,
             sessionState: StageState = StageState()) async throws -> (StageVerdict, [AuthenticationResult], [HeaderField]) {
        let s = session(client: client, helo: helo, state: sessionState)
        let t = transaction(sender)
        let verdict = try await stage.mailFrom(session: s, transaction: t)
        return (verdict, t.results.all, t.results.prepended)
    }

    /// "550 5.7.23" for a reject or tempfail, nil otherwise.
    static func code(_ verdict: StageVerdict) -> String? {
        switch verdict {
        case .reject(let r), .tempfail(let r): "\(r.code) \(r.enhancedCode.map { "\($0)" } ?? "")"
        default: nil
        }
    }

    static func text(_ verdict: StageVerdict) -> String {
        switch verdict {
        case .reject(let r), .tempfail(let r): r.lines.joined(separator: "\n")
        default: ""
        }
    }

    @Test func factoryAndPhases() throws {
        #expect(SPFStage.factory.name == "spf")
        let stage = try Self.stage()
        #expect(stage.phases == [.mailFrom])
        #expect(stage.capabilities == .addsHeaders)
        #expect(stage.actions == [.pass: .tag, .fail: .reject, .softfail: .tag, .neutral: .tag, .none: .tag,
                                  .permerror: .tag, .temperror: .tag])
        #expect(!stage.checkHELO)
        #expect(stage.skipClients.isEmpty)
        _ = try SPFStage.factory.makeStage(config: table(["threads": .int(1)]), environment: Self.environment())
    }

    @Test func failRejectsWith5723AndTheExplanation() async throws {
        let (verdict, results, edits) = try await run(Self.stage(), client: "198.51.100.1", sender: .mailbox(mb("user@exp.test")))
        #expect(Self.code(verdict) == "550 5.7.23")
        #expect(Self.text(verdict) == "SPF fail: user@exp.test is not allowed from 198.51.100.1 (198.51.100.1); see exp.test/user/exp.test")
        #expect(results.map(\.resinfo) == ["spf=fail smtp.mailfrom=user@exp.test"])
        #expect(edits.count == 1)
    }

    @Test func failWithTheDefaultExplanation() async throws {
        let (verdict, _, _) = try await run(Self.stage(), sender: .mailbox(mb("user@fail.test")))
        #expect(verdict == .reject(550, "5.7.23", "SPF fail: fail.test does not authorize 192.0.2.1 to send its mail (SPF)"))
        let custom = try Self.stage(["default_explanation": .string("Go away, %{c}")])
        let (v2, _, _) = try await run(custom, sender: .mailbox(mb("user@fail.test")))
        #expect(v2 == .reject(550, "5.7.23", "SPF fail: Go away, 192.0.2.1"))
    }

    @Test func permerrorRejectWith5724() async throws {
        let stage = try Self.stage(["permerror": .string("reject")])
        let (verdict, results, _) = try await run(stage, sender: .mailbox(mb("user@syntax.test")))
        #expect(Self.code(verdict) == "550 5.7.24")
        #expect(Self.text(verdict).hasPrefix("SPF permerror: mx.example.test: permanent error checking domain of user@syntax.test"))
        #expect(results.map(\.result) == ["permerror"])
    }

    @Test func temperrorTempfailWith4724() async throws {
        let stage = try Self.stage(["temperror": .string("tempfail")])
        let (verdict, results, _) = try await run(stage, sender: .mailbox(mb("user@timeout.test")))
        #expect(Self.code(verdict) == "451 4.7.24")
        #expect(Self.text(verdict).hasPrefix("SPF temperror: mx.example.test: temporary error checking domain of user@timeout.test"))
        #expect(results.map(\.result) == ["temperror"])
    }

    @Test func softfailRejectUses5723() async throws {
        let stage = try Self.stage(["softfail": .string("reject"), "neutral": .string("tempfail")])
        let (v1, _, _) = try await run(stage, sender: .mailbox(mb("user@softfail.test")))
        #expect(v1 == .reject(550, "5.7.23",
                              "SPF softfail: mx.example.test: domain of user@softfail.test does not designate 192.0.2.1 as permitted sender (softfail)"))
        let (v2, _, _) = try await run(stage, sender: .mailbox(mb("user@neutral.test")))
        #expect(Self.code(v2) == "451 4.7.24")
    }

    @Test func tagContinuesRecordsAndAddsReceivedSPF() async throws {
        let stage = try Self.stage(["fail": .string("tag")])
        let (verdict, results, edits) = try await run(stage, client: "198.51.100.1", sender: .mailbox(mb("user@pass.test")))
        #expect(verdict == .continue)
        #expect(results == [AuthenticationResult(method: "spf", result: "fail", properties: [.init("smtp.mailfrom", "user@pass.test")])])
        #expect(edits.count == 1)
        guard let field = edits.first else { Issue.record("expected a Received-SPF field"); return }
        let value = field.unfoldedValue
        #expect(field.name == "Received-SPF")
        #expect(value.hasPrefix("fail (mx.example.test: domain of user@pass.test does not designate 198.51.100.1 as permitted sender)"))
        for pair in ["client-ip=198.51.100.1", "envelope-from=user@pass.test", "helo=helo.test", "receiver=mx.example.test", "identity=mailfrom"] {
            #expect(value.contains(pair), "\(pair)")
        }
    }

    @Test func passContinues() async throws {
        let (verdict, results, edits) = try await run(Self.stage(), sender: .mailbox(mb("user@pass.test")))
        #expect(verdict == .continue)
        #expect(results.map(\.resinfo) == ["spf=pass smtp.mailfrom=user@pass.test"])
        guard let field = edits.first, field.name == "Received-SPF" else { Issue.record("\(edits)"); return }
        let value = field.unfoldedValue
        #expect(value.hasPrefix("pass "))
    }

    @Test func defaultsTagErrors() async throws {
        let stage = try Self.stage()
        #expect(try await run(stage, sender: .mailbox(mb("user@syntax.test"))).0 == .continue)
        #expect(try await run(stage, sender: .mailbox(mb("user@timeout.test"))).0 == .continue)
        #expect(try await run(stage, sender: .mailbox(mb("user@norecord.test"))).0 == .continue)
    }

    @Test func nullSenderIsCheckedAsHELO() async throws {
        let (verdict, results, edits) = try await run(Self.stage(), client: "192.0.2.9", helo: "helo.test", sender: .null)
        #expect(verdict == .reject(550, "5.7.23", "SPF fail: helo.test does not authorize 192.0.2.9 to send its mail (SPF)"))
        #expect(results.map(\.resinfo) == ["spf=fail smtp.helo=helo.test"])
        guard let field = edits.first, field.name == "Received-SPF" else { Issue.record("\(edits)"); return }
        let value = field.unfoldedValue
        #expect(value.contains("identity=helo"))
        #expect(value.contains("envelope-from=postmaster@helo.test"))
    }

    @Test func heloCheckComesFirstAndIsCachedForTheSession() async throws {
        let stage = try Self.stage(["helo": .bool(true), "fail": .string("tag")])
        #expect(stage.checkHELO)
        let state = StageState()
        let (verdict, results, edits) = try await run(stage, helo: "helo.test", sender: .mailbox(mb("user@fail.test")), sessionState: state)
        #expect(verdict == .continue)
        #expect(results.map(\.resinfo) == ["spf=pass smtp.helo=helo.test", "spf=fail smtp.mailfrom=user@fail.test"])
        #expect(edits.count == 2)
        // The fields read in check order from the top.
        #expect(edits.first?.value.contains("identity=helo") == true)
        #expect(edits.last?.value.contains("identity=mailfrom") == true)
        // The null sender's check is the HELO check: one result, no second check.
        let (_, nullResults, nullEdits) = try await run(stage, helo: "helo.test", sender: .null, sessionState: state)
        #expect(nullResults.map(\.resinfo) == ["spf=pass smtp.helo=helo.test"])
        #expect(nullEdits.count == 1)
    }

    @Test func heloFailEndsTheCheck() async throws {
        let stage = try Self.stage(["helo": .bool(true)])
        let (verdict, results, _) = try await run(stage, client: "192.0.2.9", helo: "helo.test", sender: .mailbox(mb("user@pass.test")))
        #expect(Self.code(verdict) == "550 5.7.23")
        #expect(results.map(\.resinfo) == ["spf=fail smtp.helo=helo.test"])
    }

    @Test func skippedAndUnparsableClientsAreNotChecked() async throws {
        let stage = try Self.stage(["skip_clients": strings("198.51.100.0/24", "2001:db8::/32")])
        for client in ["198.51.100.1", "::ffff:198.51.100.1", "2001:db8::5", "not-an-address"] {
            let (verdict, results, edits) = try await run(stage, client: client, sender: .mailbox(mb("user@fail.test")))
            #expect(verdict == .continue, "\(client)")
            #expect(results.isEmpty)
            #expect(edits.isEmpty)
        }
        let (verdict, _, _) = try await run(stage, client: "192.0.2.1", sender: .mailbox(mb("user@fail.test")))
        #expect(Self.code(verdict) == "550 5.7.23")
    }

    // MARK: Configuration

    @Test func temperrorRejectIsAConfigError() {
        #expect(throws: ConfigError.self) { try Self.stage(["temperror": .string("reject")]) }
        do {
            _ = try Self.stage(["temperror": .string("reject")])
        } catch let e as ConfigError {
            #expect(e.key == "stage[1].temperror")
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test func unknownKeyIsRejectedByFinish() throws {
        let config = table(["fial": .string("reject")])
        _ = try SPFStage(config: config, environment: Self.environment())
        #expect(throws: ConfigError.self) { try config.finish() }
        do {
            try config.finish()
        } catch let e as ConfigError {
            #expect(e.key == "stage[1].fial")
            #expect(e.message == "unknown key")
        } catch {
            Issue.record("\(error)")
        }
    }

    static let invalid: [[String: ConfigValue]] = [
        ["fail": .string("drop")],
        ["pass": .int(1)],
        ["helo": .string("yes")],
        ["skip_clients": strings("192.0.2.0/33")],
        ["skip_clients": strings("example.test")],
        ["max_void_lookups": .int(101)],
        ["max_dns_terms": .int(0)],
        ["max_time_ms": .int(50)],
        ["threads": .int(0)],
        ["default_explanation": .string("%{x}")],
        ["default_explanation": .string("50%")],
    ]

    @Test(arguments: invalid)
    func invalidConfig(_ values: [String: ConfigValue]) {
        #expect(throws: ConfigError.self) { try SPFStage(config: table(values), environment: Self.environment()) }
    }

    @Test func allKeysAreRead() throws {
        let config = table([
            "pass": .string("tag"), "fail": .string("tempfail"), "softfail": .string("reject"), "neutral": .string("tag"),
            "none": .string("reject"), "permerror": .string("reject"), "temperror": .string("tempfail"), "helo": .bool(true),
            "skip_clients": strings("10.0.0.0/8"), "max_void_lookups": .int(3), "max_dns_terms": .int(20),
            "max_time_ms": .int(5000), "threads": .int(1), "default_explanation": .string("no %{c}"),
        ])
        let stage = try SPFStage(config: config, environment: Self.environment())
        try config.finish()
        #expect(stage.actions[.fail] == .tempfail)
        #expect(stage.actions[.none] == .reject)
        #expect(stage.skipClients == [CIDR("10.0.0.0/8")!])
    }
}
