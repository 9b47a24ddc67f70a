import Testing
@testable import SluiceMilterServer

/// `--socket` texts: libmilter's forms, Postfix's forms of the same sockets, and what is refused.
@Suite("MilterSocket")
struct MilterSocketTests {
    @Test(arguments: [
        ("inet:8899@127.0.0.1", MilterSocket.inet(port: 8899, host: "127.0.0.1"), "inet:8899@127.0.0.1"),
        ("inet:8899@localhost", .inet(port: 8899, host: "localhost"), "inet:8899@localhost"),
        ("inet:8899", .inet(port: 8899, host: nil), "inet:8899"),
        ("inet6:8899@::1", .inet6(port: 8899, host: "::1"), "inet6:8899@::1"),
        ("inet6:8899@[::1]", .inet6(port: 8899, host: "::1"), "inet6:8899@::1"),
        ("inet6:8899", .inet6(port: 8899, host: nil), "inet6:8899"),
        ("unix:/run/sluice.sock", .unix(path: "/run/sluice.sock"), "unix:/run/sluice.sock"),
        ("local:/run/sluice.sock", .unix(path: "/run/sluice.sock"), "unix:/run/sluice.sock"),
        ("/run/sluice.sock", .unix(path: "/run/sluice.sock"), "unix:/run/sluice.sock"),
        ("INET:25@127.0.0.1", .inet(port: 25, host: "127.0.0.1"), "inet:25@127.0.0.1"),
        // Postfix's smtpd_milters forms.
        ("inet:127.0.0.1:8899", .inet(port: 8899, host: "127.0.0.1"), "inet:8899@127.0.0.1"),
        ("inet:[::1]:8899", .inet6(port: 8899, host: "::1"), "inet6:8899@::1"),
        ("inet:mta.example.test:10025", .inet(port: 10025, host: "mta.example.test"), "inet:10025@mta.example.test"),
        // The address decides the family: libmilter reads IPv6 only after inet6:.
        ("inet:8899@::1", .inet6(port: 8899, host: "::1"), "inet6:8899@::1"),
        ("inet6:8899@127.0.0.1", .inet(port: 8899, host: "127.0.0.1"), "inet:8899@127.0.0.1"),
    ])
    func parses(_ text: String, _ expected: MilterSocket, _ spec: String) throws {
        let socket = try MilterSocket(parsing: text)
        #expect(socket == expected)
        #expect(socket.description == spec)
    }

    @Test(arguments: [
        "", "inet:", "inet:@127.0.0.1", "inet:0@127.0.0.1", "inet:65536@127.0.0.1", "inet:port@127.0.0.1",
        "inet:8899@", "inet:-1@127.0.0.1", "inet:8899@bad host", "inet:8899@a_b", "unix:", "local:",
        "tcp:8899@127.0.0.1", "8899", "relative/path", "inet:127.0.0.1", "inet:[::1]", "inet: 8899@127.0.0.1",
        "inet:8899@127.0.0.1\0", "inet:99999999999999999999@127.0.0.1",
    ])
    func refuses(_ text: String) {
        #expect(throws: MilterSocket.SyntaxError.self) { try MilterSocket(parsing: text) }
    }

    @Test func theErrorNamesTheTextAndTheForms() {
        do {
            _ = try MilterSocket(parsing: "tcp:1@x")
            Issue.record("parsed")
        } catch {
            #expect(error.description.contains("'tcp:1@x'"))
            #expect(error.description.contains("inet:PORT@HOST"))
        }
    }
}
