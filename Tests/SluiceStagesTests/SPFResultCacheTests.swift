import SluiceDNS
import SluiceStageAPI
@testable import SluiceStages
import Synchronization
import Testing

/// A zone that counts the queries it answers and gives every answer one TTL.
private final class CountingZone: DNSResolver {
    let zone: StaticResolver
    let ttl: Int
    let count = Mutex(0)
    init(_ zone: StaticResolver, ttl: Int) { self.zone = zone; self.ttl = ttl }

    func query(_ name: String, _ type: DNSRecordType) async throws -> DNSAnswer {
        count.withLock { $0 += 1 }
        var answer = try zone.answer(name, type)
        answer.ttl = ttl
        return answer
    }
}

@Suite("SPF result cache")
struct SPFResultCacheTests {
    private func evaluator(_ zone: CountingZone, cacheSize: Int = 100) -> SPFEvaluator {
        SPFEvaluator(resolver: zone, receiver: "receiver.test", threads: 1, cacheSize: cacheSize)
    }

    @Test func aRepeatedCheckAsksNoDNS() async {
        let zone = CountingZone(spfZone, ttl: 300)
        let e = evaluator(zone)
        let first = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@include.test", helo: "h.test")
        let asked = zone.count.withLock { $0 }
        #expect(first.result == .pass)
        #expect(asked >= 2)
        let second = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@include.test", helo: "h.test")
        #expect(second.result == .pass)
        #expect(second.queries == first.queries)
        #expect(zone.count.withLock { $0 } == asked)
    }

    @Test func theKeyIsClientSenderAndHELO() async {
        let zone = CountingZone(spfZone, ttl: 300)
        let e = evaluator(zone)
        _ = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@pass.test", helo: "h.test")
        let asked = zone.count.withLock { $0 }
        // Another client gets its own result: the fail is not the cached pass.
        #expect(await e.check(ip: IPAddress("198.51.100.1")!, sender: "user@pass.test", helo: "h.test").result == .fail)
        #expect(zone.count.withLock { $0 } > asked)
        let again = zone.count.withLock { $0 }
        _ = await e.check(ip: IPAddress("192.0.2.1")!, sender: "other@pass.test", helo: "h.test")
        _ = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@pass.test", helo: "other.test")
        #expect(zone.count.withLock { $0 } == again + 2)
    }

    @Test func answersWithoutTTLAreNotKept() async {
        let zone = CountingZone(spfZone, ttl: 0)
        let e = evaluator(zone)
        _ = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@pass.test", helo: "h.test")
        _ = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@pass.test", helo: "h.test")
        #expect(zone.count.withLock { $0 } == 2)
    }

    @Test func aSizeOfZeroKeepsNothing() async {
        let zone = CountingZone(spfZone, ttl: 300)
        let e = evaluator(zone, cacheSize: 0)
        _ = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@pass.test", helo: "h.test")
        _ = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@pass.test", helo: "h.test")
        #expect(zone.count.withLock { $0 } == 2)
    }

    @Test func temporaryErrorsAreNotKept() async {
        let zone = CountingZone(spfZone, ttl: 300)
        let limits = SPFEvaluator.Limits()
        let e = SPFEvaluator(resolver: zone, receiver: "receiver.test", limits: limits, threads: 1, cacheSize: 100)
        let first = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@includetimeout.test", helo: "h.test")
        #expect(first.result == .temperror)
        let asked = zone.count.withLock { $0 }
        _ = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@includetimeout.test", helo: "h.test")
        #expect(zone.count.withLock { $0 } == 2 * asked)
    }

    @Test func entriesExpireWithTheShortestTTL() async throws {
        let zone = CountingZone(spfZone, ttl: 1)
        let e = evaluator(zone)
        _ = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@pass.test", helo: "h.test")
        _ = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@pass.test", helo: "h.test")
        #expect(zone.count.withLock { $0 } == 1)
        try await Task.sleep(for: .milliseconds(1100))
        _ = await e.check(ip: IPAddress("192.0.2.1")!, sender: "user@pass.test", helo: "h.test")
        #expect(zone.count.withLock { $0 } == 2)
    }
}
