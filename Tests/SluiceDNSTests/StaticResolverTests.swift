import SluiceDNS
import SluiceStageAPI
import Testing

@Suite("StaticResolver")
struct StaticResolverTests {
    static let zone: StaticResolver = {
        var z = StaticResolver()
        z.add("example.test", .a, .a(IPAddress("192.0.2.1")!))
        z.add("example.test", .a, .a(IPAddress("192.0.2.2")!))
        z.add("example.test", .mx, .mx(preference: 10, exchange: "mx.example.test"))
        z.addText("example.test", "v=spf1 -all")
        z.add("Mixed.Example.TEST.", .aaaa, .aaaa(IPAddress("2001:db8::1")!))
        z.add("www.example.test", .cname, .cname("Host.Example.Test."))
        z.add("host.example.test", .a, .a(IPAddress("192.0.2.9")!))
        z.add("dangling.example.test", .cname, .cname("nowhere.example.test"))
        z.add("loop1.example.test", .cname, .cname("loop2.example.test"))
        z.add("loop2.example.test", .cname, .cname("loop1.example.test"))
        z.add("slowalias.example.test", .cname, .cname("slow.example.test"))
        z.addTimeout("slow.example.test")
        z.addTimeout("Slower.Example.Test.")
        return z
    }()

    @Test func answersRecordsOfTheType() async throws {
        let a = try await Self.zone.query("example.test", .a)
        #expect(a.responseCode == .noError)
        #expect(a.records == [.a(IPAddress("192.0.2.1")!), .a(IPAddress("192.0.2.2")!)])
        #expect(a.name == "example.test")
        #expect(a.type == .a)
        #expect(a.canonicalName == nil)
        #expect(!a.isNoData && !a.isNameError && a.isDefinite)

        let txt = try await Self.zone.query("example.test", .txt)
        #expect(txt.records.map(\.text) == ["v=spf1 -all"])
        let mx = try await Self.zone.query("example.test", .mx)
        #expect(mx.records == [.mx(preference: 10, exchange: "mx.example.test")])
    }

    @Test func unknownNameIsNXDOMAIN() async throws {
        let answer = try await Self.zone.query("missing.example.test", .a)
        #expect(answer.responseCode == .nameError)
        #expect(answer.isNameError)
        #expect(!answer.isNoData)
        #expect(answer.isDefinite)
        #expect(answer.records.isEmpty)
    }

    @Test func otherTypeIsNODATA() async throws {
        let answer = try await Self.zone.query("example.test", .aaaa)
        #expect(answer.responseCode == .noError)
        #expect(answer.isNoData)
        #expect(!answer.isNameError)
        #expect(answer.records.isEmpty)
        // A parent of a name with records is NXDOMAIN here (the static zone has no empty non-terminals).
        #expect(try await Self.zone.query("test", .a).isNameError)
    }

    @Test(arguments: ["mixed.example.test", "MIXED.EXAMPLE.TEST", "Mixed.Example.Test.", "mixed.example.test."])
    func namesAreCaseInsensitiveAndTheFinalDotIsOptional(_ name: String) async throws {
        let answer = try await Self.zone.query(name, .aaaa)
        #expect(answer.records == [.aaaa(IPAddress("2001:db8::1")!)])
        #expect(answer.name == name)
    }

    @Test func cnamesAreFollowed() async throws {
        let answer = try await Self.zone.query("WWW.example.test", .a)
        #expect(answer.responseCode == .noError)
        #expect(answer.records == [.a(IPAddress("192.0.2.9")!)])
        #expect(answer.canonicalName == "host.example.test")
        #expect(answer.name == "WWW.example.test")
        // NODATA at the target.
        let mx = try await Self.zone.query("www.example.test", .mx)
        #expect(mx.isNoData)
        #expect(mx.canonicalName == "host.example.test")
    }

    @Test func askingForTheCNAMEItselfDoesNotFollowIt() async throws {
        let answer = try await Self.zone.query("www.example.test", .cname)
        #expect(answer.records == [.cname("Host.Example.Test.")])
        #expect(answer.canonicalName == nil)
    }

    @Test func danglingCNAMEIsNXDOMAIN() async throws {
        #expect(try await Self.zone.query("dangling.example.test", .a).isNameError)
    }

    @Test func cnameLoopIsAServerFailure() async throws {
        let answer = try await Self.zone.query("loop1.example.test", .a)
        #expect(answer.responseCode == .serverFailure)
        #expect(!answer.isDefinite)
    }

    @Test(arguments: ["slow.example.test", "SLOW.example.test.", "slower.example.test", "slowalias.example.test"])
    func timeoutsThrow(_ name: String) async {
        await #expect(throws: DNSError.self) { try await Self.zone.query(name, .a) }
        do {
            _ = try await Self.zone.query(name, .txt)
            Issue.record("no error")
        } catch let error as DNSError {
            #expect(error.kind == .timeout)
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func synchronousAnswer() throws {
        #expect(try Self.zone.answer("host.example.test", .a).records == [.a(IPAddress("192.0.2.9")!)])
        #expect(throws: DNSError(.timeout, "slow.example.test/A: no answer (static zone)")) {
            try Self.zone.answer("slow.example.test", .a)
        }
    }

    @Test func completionQuery() async throws {
        let zone = Self.zone
        let ok = await withCheckedContinuation { c in zone.query("example.test", .a) { c.resume(returning: $0) } }
        #expect(try ok.get().records.count == 2)
        let timedOut = await withCheckedContinuation { c in zone.query("slow.example.test", .a) { c.resume(returning: $0) } }
        guard case .failure(let e) = timedOut else { Issue.record("expected a failure"); return }
        #expect(e.kind == .timeout)
    }

    @Test func emptyZone() async throws {
        #expect(try await StaticResolver().query("anything.test", .txt).isNameError)
    }
}
