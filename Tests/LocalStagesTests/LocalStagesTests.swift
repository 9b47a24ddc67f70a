import LocalStages
import SluiceDNS
import SluiceStageAPI
import SluiceStageTesting
import Testing

@Suite("dnsbl")
struct DNSBLStageTests {
    func zone() -> StaticResolver {
        var z = StaticResolver()
        z.add("10.2.0.192.bl.example", .a, .a(IPAddress("127.0.0.2")!))
        z.addText("10.2.0.192.bl.example", "listed for spamming, see https://bl.example/192.0.2.10")
        z.add("10.2.0.192.weak.example", .a, .a(IPAddress("127.0.0.4")!))
        z.add("11.2.0.192.weak.example", .a, .a(IPAddress("127.0.0.4")!))
        z.add("11.2.0.192.wl.example", .a, .a(IPAddress("127.0.0.2")!))
        return z
    }

    @Test func queryNames() {
        #expect(DNSBLStage.queryName(IPAddress("192.0.2.10")!, zone: "bl.example") == "10.2.0.192.bl.example")
        #expect(DNSBLStage.queryName(IPAddress("2001:db8::1")!, zone: "bl.example")
            == "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example")
    }

    @Test func listedClientIsRefusedAtRcptWithTheListing() async throws {
        let stage = try DNSBLStage(config: .testing(["zones": .array([.string("bl.example")]), "reply": .string("blocked: %z (%t)")]),
                                   environment: .testing(resolver: zone()))
        var h = StageHarness(stage: stage, clientAddress: "192.0.2.10")
        _ = try await h.mailFrom("a@example.org")
        guard case .reject(let reply) = try await h.rcptTo("u@example.test") else { Issue.record("not refused"); return }
        #expect(reply.code == 554 && reply.enhancedCode?.description == "5.7.1")
        #expect(reply.lines.first == "blocked: bl.example (listed for spamming, see https://bl.example/192.0.2.10)")
        var clean = StageHarness(stage: stage, clientAddress: "192.0.2.99")
        _ = try await clean.mailFrom("a@example.org")
        #expect(try await clean.rcptTo("u@example.test") == .continue)
    }

    @Test func weightsThresholdAndAllowLists() async throws {
        let config = ConfigTable.testing([
            "zones": .array([.table(["zone": .string("weak.example"), "weight": .int(1)]), .table(["zone": .string("bl.example"), "weight": .int(2)])]),
            "allow_zones": .array([.string("wl.example")]), "threshold": .int(2), "check_at": .string("connect"),
        ])
        let stage = try DNSBLStage(config: config, environment: .testing(resolver: zone()))
        var both = StageHarness(stage: stage, clientAddress: "192.0.2.10")
        if case .reject = try await both.connect() {} else { Issue.record("weight 3 >= 2 must block") }
        var allowed = StageHarness(stage: stage, clientAddress: "192.0.2.11")
        #expect(try await allowed.connect() == .continue, "listed on weak.example only (1 < 2) and allow-listed")
    }

    @Test func answersOutside127AreNotListings() async throws {
        var z = StaticResolver()
        z.add("10.2.0.192.bl.example", .a, .a(IPAddress("192.0.2.1")!))
        let stage = try DNSBLStage(config: .testing(["zones": .array([.string("bl.example")]), "check_at": .string("connect")]),
                                   environment: .testing(resolver: z))
        var h = StageHarness(stage: stage, clientAddress: "192.0.2.10")
        #expect(try await h.connect() == .continue)
    }
}

@Suite("rate-limit")
struct RateLimitStageTests {
    @Test func messagesAndRecipientsPerClient() async throws {
        let stage = try RateLimitStage(config: .testing(["client_messages": .int(2), "client_recipients": .int(3)]))
        var h = StageHarness(stage: stage, clientAddress: "192.0.2.20")
        #expect(try await h.mailFrom("a@example.org") == .continue)
        #expect(try await h.rcptTo("u1@example.test") == .continue)
        #expect(try await h.rcptTo("u2@example.test") == .continue)
        #expect(try await h.mailFrom("a@example.org") == .continue)
        #expect(try await h.rcptTo("u3@example.test") == .continue)
        guard case .tempfail(let r) = try await h.rcptTo("u4@example.test") else { Issue.record("4th recipient allowed"); return }
        #expect(r.code == 451 && r.lines.first?.contains("client_recipients") == true)
        guard case .tempfail(let m) = try await h.mailFrom("a@example.org") else { Issue.record("3rd message allowed"); return }
        #expect(m.lines.first?.contains("client_messages = 2") == true)
        var other = StageHarness(stage: stage, clientAddress: "192.0.2.21")
        #expect(try await other.mailFrom("a@example.org") == .continue, "limits are per client")
    }

    @Test func perUserAndExempt() async throws {
        let stage = try RateLimitStage(config: .testing(["user_messages": .int(1), "exempt": .array([.string("10.0.0.0/8")])]))
        var h = StageHarness(stage: stage, clientAddress: "192.0.2.30")
        h.update { $0.authenticatedUser = "alice" }
        #expect(try await h.mailFrom("alice@example.org") == .continue)
        if case .tempfail = try await h.mailFrom("alice@example.org") {} else { Issue.record("user limit") }
        var exempt = StageHarness(stage: stage, clientAddress: "10.1.2.3")
        exempt.update { $0.authenticatedUser = "alice" }
        #expect(try await exempt.mailFrom("alice@example.org") == .continue)
    }

    @Test func noLimitIsAConfigError() {
        #expect(throws: (any Error).self) { try RateLimitStage(config: .testing([:])) }
    }
}

@Suite("LocalStages registry")
struct LocalStagesRegistryTests {
    @Test func theBuildToolPluginRegistersEveryStage() {
        let names = Set(LocalStages.all.map(\.name))
        #expect(names.isSuperset(of: ["dnsbl", "rate-limit"]))
    }
}
