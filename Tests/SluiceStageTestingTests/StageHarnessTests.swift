import SMTPCore
import SluiceDNS
import SluiceStageAPI
import SluiceStageTesting
import SluiceStages
import Testing

/// The testing module drives real stages end to end, as a stage author would use it.
@Suite("StageHarness")
struct StageHarnessTests {
    @Test func headerChecksRejectAndAdd() async throws {
        let config = ConfigTable.testing([
            "rules": .array([.table(["header": .string("Subject"), "match": .string("(?i)viagra"), "action": .string("reject")])]),
            "add": .array([.table(["name": .string("X-Scanned"), "value": .string("yes")])]),
        ])
        let stage = try HeaderChecksStage(config: config)
        var h = StageHarness(stage: stage)
        #expect(try await h.connect() == .continue)
        #expect(try await h.helo("client.example.org") == .continue)
        #expect(try await h.mailFrom("sender@example.org") == .continue)
        #expect(try await h.rcptTo("user@example.test") == .continue)
        let ok = try await h.message("Subject: lunch\nFrom: a@example.org\n\nSee you.\n")
        #expect(ok.decision.verdict == .continue)
        #expect(ok.header("X-Scanned") == ["yes"])
        #expect(ok.text.hasSuffix("\r\n\r\nSee you.\r\n"))
        let spam = try await h.message("Subject: cheap VIAGRA\n\nbuy\n", to: ["user@example.test"])
        if case .reject(let reply) = spam.decision.verdict { #expect(reply.code == 550) } else { Issue.record("not rejected") }
    }

    @Test func spfWithAStaticZone() async throws {
        var zone = StaticResolver()
        zone.addText("example.org", "v=spf1 ip4:192.0.2.10 -all")
        let stage = try SPFStage(config: .testing(["fail": .string("reject")]), environment: .testing(resolver: zone))
        var h = StageHarness(stage: stage, clientAddress: "192.0.2.10", heloName: "mail.example.org")
        #expect(try await h.mailFrom("sender@example.org") == .continue)
        let out = try await h.message("Subject: x\n\nbody\n", to: ["user@example.test"])
        #expect(out.results.map(\.resinfo) == ["spf=pass smtp.mailfrom=sender@example.org"])
        #expect(out.header("Received-SPF").first?.hasPrefix("pass") == true)

        var other = StageHarness(stage: stage, clientAddress: "203.0.113.9", heloName: "x.example.net")
        if case .reject(let reply) = try await other.mailFrom("sender@example.org") {
            #expect(reply.enhancedCode?.description == "5.7.23")
        } else {
            Issue.record("SPF fail not rejected")
        }
    }
}
