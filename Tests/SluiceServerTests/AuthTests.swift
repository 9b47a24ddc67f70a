import SMTPCore
@testable import SluiceServer
import SluiceStageAPI
import Testing
import Logging
import Foundation

/// AUTH in the session state machine (RFC 4954), the users file and the sender login map.
@Suite("AUTH")
struct AuthTests {
    static let tls = TLSInfo(version: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256", bits: 128)
    static let plainAlice = SASL.encodeBase64([0] + Array("alice".utf8) + [0] + Array("pw".utf8))

    func submission(tls: Bool = true, requireAuth: Bool = true) -> Session {
        var s = Session(policy: .init(startTLS: true, auth: true, requireAuth: requireAuth))
        _ = s.machine.connected()
        if tls {
            _ = s.send("EHLO client.test")
            _ = s.send("STARTTLS")
            _ = s.machine.tlsEstablished(Self.tls)
        }
        return s
    }

    @Test func offeredOnlyInsideTLS() {
        var plain = submission(tls: false)
        let ehlo = replies(plain.sendAction("EHLO client.test")).first?.lines ?? []
        #expect(!ehlo.contains("AUTH PLAIN LOGIN"))
        #expect(plain.send("AUTH PLAIN \(Self.plainAlice)") == "538 5.7.11")
        var s = submission()
        #expect(replies(s.sendAction("EHLO client.test")).first?.lines.contains("AUTH PLAIN LOGIN") == true)
    }

    @Test func mailNeedsAuthOnSubmission() {
        var s = submission()
        _ = s.send("EHLO client.test")
        #expect(s.send("MAIL FROM:<alice@example.test>") == "530 5.7.0")
    }

    @Test func plainWithInitialResponse() {
        var s = submission()
        _ = s.send("EHLO client.test")
        #expect(s.send("AUTH PLAIN \(Self.plainAlice)") == "authenticate PLAIN alice:pw")
        #expect(s.send("NOOP") == "none", "nothing else is answered while the check runs")
        #expect(describe(s.machine.authFinished(.success)) == "235 2.7.0")
        #expect(s.machine.session.authenticatedUser == "alice")
        #expect(s.machine.session.trustedClient)
        #expect(s.send("AUTH PLAIN \(Self.plainAlice)") == "503 5.5.1")
        #expect(s.send("MAIL FROM:<alice@example.test>") == "250 2.1.0")
        #expect(s.machine.protocolName == "ESMTPSA")
    }

    @Test func plainWithAChallenge() {
        var s = submission()
        _ = s.send("EHLO client.test")
        let challenge = replies(s.sendAction("AUTH plain")).first
        #expect(challenge?.code == 334 && challenge?.lines == [""])
        #expect(s.send(Self.plainAlice) == "authenticate PLAIN alice:pw")
        #expect(describe(s.machine.authFinished(.failure)) == "535 5.7.8")
        #expect(s.machine.session.authenticatedUser == nil)
    }

    @Test func login() {
        var s = submission()
        _ = s.send("EHLO client.test")
        #expect(replies(s.sendAction("AUTH LOGIN")).first?.lines == ["VXNlcm5hbWU6"])
        #expect(replies(s.sendAction(SASL.encodeBase64(Array("bob".utf8)))).first?.lines == ["UGFzc3dvcmQ6"])
        #expect(s.send(SASL.encodeBase64(Array("secret".utf8))) == "authenticate LOGIN bob:secret")
        var t = submission()
        _ = t.send("EHLO client.test")
        #expect(replies(t.sendAction("AUTH LOGIN \(SASL.encodeBase64(Array("bob".utf8)))")).first?.lines == ["UGFzc3dvcmQ6"])
    }

    @Test func errors() {
        var s = submission()
        #expect(s.send("AUTH PLAIN \(Self.plainAlice)") == "503 5.5.1", "EHLO first (after STARTTLS again)")
        _ = s.send("EHLO client.test")
        #expect(s.send("AUTH CRAM-MD5") == "504 5.5.4")
        _ = s.send("AUTH PLAIN")
        #expect(s.send("not base64!") == "501 5.5.2")
        _ = s.send("AUTH LOGIN")
        #expect(s.send("*") == "501 5.0.0")
        let other = SASL.encodeBase64(Array("mallory".utf8) + [0] + Array("alice".utf8) + [0] + Array("pw".utf8))
        #expect(s.send("AUTH PLAIN \(other)") == "535 5.7.8")
        _ = s.send("AUTH PLAIN \(Self.plainAlice)")
        #expect(describe(s.machine.authFinished(.tooManyFailures)) == "421 4.7.0 close")
    }

    @Test func notOfferedOnPlainSMTP() {
        var s = Session(policy: .init(startTLS: true))
        _ = s.machine.connected()
        _ = s.send("EHLO client.test")
        #expect(s.send("AUTH PLAIN \(Self.plainAlice)") == "502 5.5.1")
    }

    @Test func senderLoginMap() throws {
        let map = SenderLoginMap(text: """
        # owners
        alice@Example.TEST alice
        shared@example.test alice, bob
        @example.org   bob
        """)
        func path(_ s: String) throws -> ReversePath {
            let at = try #require(s.lastIndex(of: "@"))
            return .mailbox(Mailbox(localPart: String(s[..<at]), domain: String(s[s.index(after: at)...])))
        }
        #expect(map.allows(user: "alice", sender: try path("alice@example.test")))
        #expect(!map.allows(user: "bob", sender: try path("alice@example.test")))
        #expect(map.allows(user: "bob", sender: try path("shared@EXAMPLE.test")))
        #expect(map.allows(user: "bob", sender: try path("anyone@example.org")))
        #expect(!map.allows(user: "alice", sender: try path("anyone@example.org")))
        #expect(!map.allows(user: "alice", sender: try path("stranger@example.net")))
        #expect(map.allows(user: "alice", sender: .null))
    }

    @Test func usersFileWithCryptHashes() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-auth-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let yes = try #require(PasswdFile.hash("pw1"))
        let bcrypt = try #require(PasswdFile.hash("pw2", scheme: "$2b$"))
        let sha = try #require(PasswdFile.hash("pw3", scheme: "$6$"))
        #expect(yes.hasPrefix("$y$") && bcrypt.hasPrefix("$2b$") && sha.hasPrefix("$6$"))
        let path = dir + "/users"
        try "# users\nalice:\(yes)\nbob:\(bcrypt):extra:fields\ncarol:\(sha)\nplain:secret\n".write(toFile: path, atomically: true, encoding: .utf8)
        let users = try PasswdFile(path: path, logger: Logger(label: "test"))
        #expect(users.verify(user: "alice", password: "pw1"))
        #expect(!users.verify(user: "alice", password: "pw2"))
        #expect(users.verify(user: "bob", password: "pw2"))
        #expect(users.verify(user: "carol", password: "pw3"))
        #expect(!users.verify(user: "plain", password: "secret"), "plaintext is never accepted")
        #expect(!users.verify(user: "nobody", password: "pw1"))
    }
}
