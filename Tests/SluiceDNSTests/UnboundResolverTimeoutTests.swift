#if canImport(Glibc)
import Glibc
#endif
import SluiceDNS
import SluiceStageAPI
import Testing

/// The resolver's own per-query timeout, with no server at all: the forwarder is a loopback
/// port nobody listens on. (Answers from a real server are covered by the integration tests.)
@Suite("UnboundResolver timeout", .timeLimit(.minutes(1)))
struct UnboundResolverTimeoutTests {
    /// A UDP port on 127.0.0.1 that was free a moment ago.
    static func unusedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        try #require(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(bound == 0)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        try #require(named == 0)
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    @Test func queryToASilentForwarderTimesOut() async throws {
        let port = try Self.unusedPort()
        let server = try #require(DNSConfiguration.Server("127.0.0.1:\(port)"))
        let resolver = try UnboundResolver(configuration: DNSConfiguration(servers: [server], timeout: .milliseconds(300)))
        let clock = ContinuousClock()
        let start = clock.now
        do {
            let answer = try await resolver.query("nothing-here.example.test", .a)
            Issue.record("expected a timeout, got \(answer.responseCode) \(answer.records)")
        } catch let error as DNSError {
            #expect(error.kind == .timeout, "\(error)")
        }
        let elapsed = clock.now - start
        #expect(elapsed >= .milliseconds(250))
        #expect(elapsed < .seconds(2))
    }

    @Test func severalQueriesTimeOutTogether() async throws {
        let port = try Self.unusedPort()
        let server = try #require(DNSConfiguration.Server("127.0.0.1:\(port)"))
        let resolver = try UnboundResolver(configuration: DNSConfiguration(servers: [server], timeout: .milliseconds(300)))
        let clock = ContinuousClock()
        let start = clock.now
        let kinds = await withTaskGroup(of: DNSError.Kind?.self) { group in
            for i in 0..<5 {
                group.addTask {
                    do {
                        _ = try await resolver.query("n\(i).example.test", .txt)
                        return nil
                    } catch let error as DNSError {
                        return error.kind
                    } catch {
                        return nil
                    }
                }
            }
            var all: [DNSError.Kind?] = []
            for await k in group { all.append(k) }
            return all
        }
        #expect(kinds == Array(repeating: .timeout, count: 5))
        #expect(clock.now - start < .seconds(2))
    }
}
