import SluiceStageAPI
@testable import SluiceDNS
import Testing

/// `[dns] servers` entries: "address[:port]", IPv6 in brackets when a port follows.
@Suite("DNSConfiguration")
struct DNSConfigurationTests {
    @Test(arguments: [
        ("192.0.2.1", "192.0.2.1", 53, "192.0.2.1:53"),
        ("192.0.2.1:5353", "192.0.2.1", 5353, "192.0.2.1:5353"),
        ("127.0.0.1:1", "127.0.0.1", 1, "127.0.0.1:1"),
        ("127.0.0.1:65535", "127.0.0.1", 65535, "127.0.0.1:65535"),
        ("[2001:db8::1]:5353", "2001:db8::1", 5353, "[2001:db8::1]:5353"),
        ("[2001:db8::1]", "2001:db8::1", 53, "[2001:db8::1]:53"),
        ("2001:db8::1", "2001:db8::1", 53, "[2001:db8::1]:53"),
        ("::1", "::1", 53, "[::1]:53"),
        ("[::1]:15353", "::1", 15353, "[::1]:15353"),
    ])
    func parses(_ text: String, _ address: String, _ port: Int, _ description: String) throws {
        let server = try #require(DNSConfiguration.Server(text))
        #expect(server.address == IPAddress(address))
        #expect(server.port == port)
        #expect(server.description == description)
    }

    @Test(arguments: [
        "", "host", "host:53", "example.test:53", "1.2.3.4:0", "1.2.3.4:99999", "1.2.3.4:65536", "1.2.3.4:-1",
        "1.2.3.4:", "1.2.3.4:x", "[::1", "[::1]:", "[::1]x", "[::1]:0", "[::1]:70000", "[]:53", "1.2.3", "256.1.1.1",
        "2001:db8::g", " 192.0.2.1", "1.2.3.4:+53", "[1.2.3.4]:53",
    ])
    func rejects(_ text: String) {
        #expect(DNSConfiguration.Server(text) == nil)
    }

    @Test func unboundForwarderSyntax() throws {
        #expect(try #require(DNSConfiguration.Server("192.0.2.1:5353")).unboundForm == "192.0.2.1@5353")
        #expect(try #require(DNSConfiguration.Server("[2001:db8::1]:5353")).unboundForm == "2001:db8::1@5353")
        #expect(try #require(DNSConfiguration.Server("2001:db8::1")).unboundForm == "2001:db8::1@53")
    }

    @Test func defaults() {
        let c = DNSConfiguration()
        #expect(c.servers.isEmpty)
        #expect(c.timeout == .milliseconds(3000))
    }
}
