import Foundation
@testable import LocalStages
import SluiceStageAPI
import SluiceStageTesting
import Synchronization
import Testing

/// A wall clock the test moves by hand, so delays and expiries need no sleeping.
final class ManualClock: Sendable {
    private let seconds = Mutex<Double>(1_700_000_000)
    var now: @Sendable () -> Double { { self.seconds.withLock { $0 } } }
    func advance(_ by: Double) { seconds.withLock { $0 += by } }
}

/// A scratch directory for a test's database, removed when the test ends.
final class ScratchDirectory: Sendable {
    let path: String
    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("greylist-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

@Suite("greylist")
struct GreylistStageTests {
    let scratch: ScratchDirectory
    let clock = ManualClock()

    init() throws { scratch = try ScratchDirectory() }

    func stage(_ keys: [String: ConfigValue] = [:], database: String = "greylist.sqlite") throws -> GreylistStage {
        var values = keys
        values["database"] = .string(scratch.path + "/" + database)
        let config = ConfigTable.testing(values)
        let stage = try GreylistStage(config: config, environment: .testing(), now: clock.now)
        try config.finish()
        return stage
    }

    /// MAIL FROM `sender`, RCPT TO `recipient` from `client` in a fresh session.
    func attempt(_ stage: GreylistStage, client: String = "192.0.2.10", from sender: String = "a@example.org",
                 to recipient: String = "user@example.test") async throws -> StageVerdict {
        var h = StageHarness(stage: stage, clientAddress: client)
        #expect(try await h.mailFrom(sender) == .continue)
        return try await h.rcptTo(recipient)
    }

    /// The reply text of a 451 4.7.1, or nil (recording an issue) for any other verdict.
    func greylisted(_ verdict: StageVerdict, sourceLocation: SourceLocation = #_sourceLocation) -> String? {
        guard case .tempfail(let reply) = verdict, reply.code == 451, reply.enhancedCode?.description == "4.7.1" else {
            Issue.record("expected 451 4.7.1, got \(verdict)", sourceLocation: sourceLocation)
            return nil
        }
        return reply.lines.first
    }

    @Test func firstAttemptIsGreylistedAndEarlyRetriesAreToldTheTimeLeft() async throws {
        let s = try stage()
        #expect(greylisted(try await attempt(s)) == "Greylisted: please retry in 300 seconds")
        clock.advance(100)
        #expect(greylisted(try await attempt(s)) == "Greylisted: please retry in 200 seconds")
        clock.advance(199.5)
        #expect(greylisted(try await attempt(s)) == "Greylisted: please retry in 1 seconds", "rounded up, never 0")
    }

    @Test func aRetryAfterTheDelayPassesAndKeepsPassing() async throws {
        let s = try stage(["delay_s": .int(60)])
        _ = greylisted(try await attempt(s))
        clock.advance(60)
        #expect(try await attempt(s) == .continue)
        clock.advance(3600 * 24 * 10)
        #expect(try await attempt(s) == .continue, "a passed triplet lives expiry_s (35 days)")
        #expect(greylisted(try await attempt(s, to: "other@example.test")) != nil, "another recipient is another triplet")
    }

    @Test func aRetryAfterTheRetryWindowStartsOver() async throws {
        let s = try stage(["delay_s": .int(60), "retry_window_s": .int(3600)])
        _ = greylisted(try await attempt(s))
        clock.advance(3601)
        #expect(greylisted(try await attempt(s)) == "Greylisted: please retry in 60 seconds")
        clock.advance(60)
        #expect(try await attempt(s) == .continue)
    }

    @Test func theClientNetworkIsTheSlash24() async throws {
        let s = try stage()
        _ = greylisted(try await attempt(s, client: "192.0.2.10"))
        clock.advance(300)
        #expect(try await attempt(s, client: "192.0.2.77") == .continue, "same /24, another host")
        #expect(greylisted(try await attempt(s, client: "192.0.3.10")) != nil, "another /24")
        #expect(greylisted(try await attempt(s, client: "::ffff:192.0.4.1")) != nil)
        clock.advance(300)
        #expect(try await attempt(s, client: "192.0.4.200") == .continue, "an IPv4-mapped address counts as IPv4")
    }

    @Test func theIPv6NetworkIsTheSlash64AndPrefixesAreConfigurable() async throws {
        let s = try stage()
        _ = greylisted(try await attempt(s, client: "2001:db8:1:2::10"))
        clock.advance(300)
        #expect(try await attempt(s, client: "2001:db8:1:2:ffff:ffff:ffff:1") == .continue)
        #expect(greylisted(try await attempt(s, client: "2001:db8:1:3::10")) != nil)

        let narrow = try stage(["ipv4_prefix": .int(32), "ipv6_prefix": .int(128)], database: "narrow.sqlite")
        _ = greylisted(try await attempt(narrow, client: "192.0.2.10"))
        clock.advance(300)
        #expect(greylisted(try await attempt(narrow, client: "192.0.2.11")) != nil, "/32: each host is its own network")
        #expect(try await attempt(narrow, client: "192.0.2.10") == .continue)
    }

    @Test func networksAreWrittenAsCIDR() {
        #expect(GreylistTriplet.network(of: "192.0.2.200", ipv4Prefix: 24, ipv6Prefix: 64) == "192.0.2.0/24")
        #expect(GreylistTriplet.network(of: "192.0.2.200", ipv4Prefix: 20, ipv6Prefix: 64) == "192.0.0.0/20")
        #expect(GreylistTriplet.network(of: "2001:db8:1:2:3:4:5:6", ipv4Prefix: 24, ipv6Prefix: 64) == "2001:db8:1:2::/64")
        #expect(GreylistTriplet.network(of: "2001:db8:1:2:3:4:5:6", ipv4Prefix: 24, ipv6Prefix: 36) == "2001:db8::/36")
    }

    @Test func theNullSenderIsItsOwnSenderAndAddressesAreCaseInsensitive() async throws {
        let s = try stage()
        _ = greylisted(try await attempt(s, from: ""))
        _ = greylisted(try await attempt(s, from: "A@Example.ORG", to: "User@EXAMPLE.test"))
        clock.advance(300)
        #expect(try await attempt(s, from: "") == .continue, "the null sender's triplet")
        #expect(try await attempt(s, from: "a@example.org", to: "user@example.test") == .continue, "lowercased")
        #expect(greylisted(try await attempt(s, from: "b@example.org")) != nil)
    }

    @Test func passedTripletsExpireUnlessUsed() async throws {
        let s = try stage(["delay_s": .int(60), "expiry_s": .int(1000), "retry_window_s": .int(500)])
        _ = greylisted(try await attempt(s))
        clock.advance(60)
        #expect(try await attempt(s) == .continue)
        clock.advance(900)
        #expect(try await attempt(s) == .continue, "used before expiry: renewed")
        clock.advance(900)
        #expect(try await attempt(s) == .continue, "still within expiry_s of the last pass")
        clock.advance(1001)
        #expect(greylisted(try await attempt(s)) == "Greylisted: please retry in 60 seconds", "expired: a new triplet")
    }

    @Test func aClientNetworkIsAllowlistedAfterNMessagesPassed() async throws {
        let s = try stage(["auto_allowlist_after": .int(2), "delay_s": .int(60)])
        var h = StageHarness(stage: s, clientAddress: "198.51.100.7")
        _ = try await h.mailFrom("a@example.org")
        _ = greylisted(try await h.rcptTo("u1@example.test"))
        _ = greylisted(try await h.rcptTo("u2@example.test"))
        clock.advance(60)
        // One message with two passing recipients counts once.
        _ = try await h.mailFrom("a@example.org")
        #expect(try await h.rcptTo("u1@example.test") == .continue)
        #expect(try await h.rcptTo("u2@example.test") == .continue)
        #expect(greylisted(try await attempt(s, client: "198.51.100.8", to: "u3@example.test")) != nil, "one message so far")
        #expect(try await attempt(s, client: "198.51.100.9", to: "u1@example.test") == .continue, "the second message")
        #expect(try await attempt(s, client: "198.51.100.10", from: "new@example.org", to: "new@example.test") == .continue,
                "allowlisted: a new triplet from the network passes at once")
        #expect(greylisted(try await attempt(s, client: "198.51.101.10", to: "new@example.test")) != nil, "another network")
        #expect(try await s.store.rowCounts().clients == 1)
    }

    @Test func autoAllowlistZeroNeverAllowlists() async throws {
        let s = try stage(["auto_allowlist_after": .int(0), "delay_s": .int(1)])
        for n in 0..<4 {
            _ = greylisted(try await attempt(s, to: "u\(n)@example.test"))
            clock.advance(1)
            #expect(try await attempt(s, to: "u\(n)@example.test") == .continue)
        }
        #expect(greylisted(try await attempt(s, to: "fresh@example.test")) != nil)
        #expect(try await s.store.rowCounts().clients == 0)
    }

    @Test func allowedClientsAreNeverGreylistedNorRecorded() async throws {
        let s = try stage(["allow_clients": .array([.string("10.0.0.0/8"), .string("2001:db8::1")])])
        #expect(try await attempt(s, client: "10.20.30.40") == .continue)
        #expect(try await attempt(s, client: "2001:db8::1") == .continue)
        #expect(greylisted(try await attempt(s, client: "2001:db8::2")) != nil)
        #expect(try await s.store.rowCounts().triplets == 1)
    }

    @Test func authenticatedAndTrustedSessionsSkipUnlessTold() async throws {
        let s = try stage()
        var user = StageHarness(stage: s)
        user.update { $0.authenticatedUser = "alice" }
        _ = try await user.mailFrom("alice@example.org")
        #expect(try await user.rcptTo("bob@example.test") == .continue)
        var trusted = StageHarness(stage: s, trusted: true)
        _ = try await trusted.mailFrom("alice@example.org")
        #expect(try await trusted.rcptTo("bob@example.test") == .continue)
        #expect(try await s.store.rowCounts().triplets == 0)

        let strict = try stage(["skip_authenticated": .bool(false)], database: "strict.sqlite")
        var again = StageHarness(stage: strict)
        again.update { $0.authenticatedUser = "alice" }
        _ = try await again.mailFrom("alice@example.org")
        #expect(greylisted(try await again.rcptTo("bob@example.test")) != nil)
    }

    @Test func theTextCanBeReplaced() async throws {
        let s = try stage(["text": .string("Come back in %s s for %r, see https://example.test/grey")])
        #expect(greylisted(try await attempt(s, to: "x@Example.TEST")) == "Come back in 300 s for example.test, see https://example.test/grey")
    }

    @Test func stateSurvivesReopeningTheDatabase() async throws {
        let first = try stage(["delay_s": .int(60)])
        _ = greylisted(try await attempt(first))
        clock.advance(60)
        let restarted = try stage(["delay_s": .int(60)])
        #expect(try await attempt(restarted) == .continue, "the triplet was read back from the file")
    }

    @Test func expiredRowsArePurgedOnAWrite() async throws {
        let s = try stage(["delay_s": .int(10), "retry_window_s": .int(100), "expiry_s": .int(1000),
                           "purge_interval_s": .int(500), "auto_allowlist_after": .int(3)])
        _ = greylisted(try await attempt(s, to: "never-retried@example.test"))
        _ = greylisted(try await attempt(s, to: "passed@example.test"))
        clock.advance(10)
        #expect(try await attempt(s, to: "passed@example.test") == .continue)
        #expect(try await s.store.rowCounts() == (2, 1))
        clock.advance(200)
        _ = greylisted(try await attempt(s, client: "203.0.113.1", to: "later@example.test"))
        #expect(try await s.store.rowCounts() == (3, 1), "the next purge is due 500 s after the first")
        clock.advance(400)
        _ = greylisted(try await attempt(s, client: "203.0.113.1", to: "later2@example.test"))
        #expect(try await s.store.rowCounts() == (2, 1), "the never-retried triplet and later's are gone; passed lives on")
        clock.advance(1000)
        _ = greylisted(try await attempt(s, client: "203.0.113.1", to: "later3@example.test"))
        #expect(try await s.store.rowCounts() == (1, 0), "everything but the row just written expired")
    }

    @Test func aRelativeDatabaseIsNextToTheConfigFile() async throws {
        let config = ConfigTable.testing(["database": .string("grey.sqlite")])
        var environment = StageEnvironment.testing()
        environment.configDirectory = scratch.path
        let s = try GreylistStage(config: config, environment: environment, now: clock.now)
        _ = greylisted(try await attempt(s))
        #expect(FileManager.default.fileExists(atPath: scratch.path + "/grey.sqlite"))
    }

    @Test(arguments: [
        ("ipv4_prefix", ConfigValue.int(33), "between 1 and 32"),
        ("ipv6_prefix", .int(0), "between 1 and 128"),
        ("delay_s", .int(-1), "between 0 and 604800"),
        ("retry_window_s", .int(300), "longer than delay_s"),
        ("auto_allowlist_after", .int(-2), "between 0"),
        ("allow_clients", .array([.string("192.0.2.0/33")]), "not an address or CIDR"),
        ("text", .string("two\r\nlines"), "printable ASCII"),
        ("delay_s", .string("300"), "expected an integer"),
    ])
    func configErrorsNameTheKey(_ row: (key: String, value: ConfigValue, message: String)) throws {
        let error = #expect(throws: ConfigError.self) { try stage([row.key: row.value]) }
        #expect(error?.key == "stage.\(row.key)")
        #expect(error?.message.contains(row.message) == true, "\(String(describing: error))")
    }

    @Test func aDatabaseThatCannotOpenIsAConfigErrorNamingThePath() throws {
        let missing = scratch.path + "/no/such/dir/greylist.sqlite"
        let error = #expect(throws: ConfigError.self) {
            try GreylistStage(config: .testing(["database": .string(missing)]), environment: .testing(), now: clock.now)
        }
        #expect(error?.key == "stage.database")
        #expect(error?.message.contains(missing) == true, "\(String(describing: error))")

        let garbage = scratch.path + "/garbage.sqlite"
        try Data(repeating: 0x41, count: 4096).write(to: URL(fileURLWithPath: garbage))
        let notSQLite = #expect(throws: ConfigError.self) {
            try GreylistStage(config: .testing(["database": .string(garbage)]), environment: .testing(), now: clock.now)
        }
        #expect(notSQLite?.message.contains(garbage) == true, "\(String(describing: notSQLite))")
    }

    @Test func theStageIsRegistered() {
        #expect(LocalStages.all.contains { $0.name == "greylist" })
    }

    /// Two gateways (or `sluice run` and `sluice milter`) starting at the same moment on one new
    /// database file: both open it, neither fails on a table the other just made.
    @Test func concurrentOpensOfANewFileAllSucceed() throws {
        let policy = GreylistStore.Policy(delay: 300, retryWindow: 86400, expiry: 86400 * 36, autoAllowlistAfter: 5, purgeInterval: 3600)
        for round in 0..<8 {
            let path = scratch.path + "/race-\(round).sqlite"
            let openers = 4
            let failures = Mutex<[String]>([])
            let ready = DispatchGroup()
            let start = DispatchSemaphore(value: 0)
            let done = DispatchGroup()
            for _ in 0..<openers {
                ready.enter()
                done.enter()
                Thread.detachNewThread {
                    ready.leave()
                    start.wait()
                    do { _ = try GreylistStore(path: path, policy: policy) } catch {
                        failures.withLock { $0.append("\(error)") }
                    }
                    done.leave()
                }
            }
            ready.wait()
            for _ in 0..<openers { start.signal() }
            done.wait()
            #expect(failures.withLock { $0 } == [], "round \(round)")
        }
    }
}
