import SMTPCore
@testable import SluiceServer
import SluiceStageAPI
import Testing

/// STARTTLS in the session state machine (RFC 3207); the handler part (dropping pipelined
/// plaintext, the TLS handshake) is covered by the integration tests with real TLS clients.
@Suite("STARTTLS")
struct StartTLSTests {
    static let tls = TLSInfo(version: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256", bits: 128)

    func session(startTLS: Bool = true) -> Session {
        var s = Session(policy: .init(startTLS: startTLS))
        _ = s.machine.connected()
        return s
    }

    @Test func ehloOffersStartTLSOnlyWhenConfiguredAndNotActive() {
        var s = session()
        #expect(replies(s.sendAction("EHLO client.test")).first?.lines.contains("STARTTLS") == true)
        var plain = session(startTLS: false)
        #expect(replies(plain.sendAction("EHLO client.test")).first?.lines.contains("STARTTLS") == false)
        #expect(plain.send("STARTTLS") == "502 5.5.1")
    }

    @Test func startTLSResetsTheSession() {
        var s = session()
        _ = s.send("EHLO client.test")
        #expect(s.send("STARTTLS") == "starttls 220")
        #expect(s.send("MAIL FROM:<a@client.test>") == "none", "nothing is answered until the handshake is done")
        #expect(s.machine.tlsEstablished(Self.tls) == .none)
        #expect(s.machine.session.heloName == nil)
        #expect(s.send("MAIL FROM:<a@client.test>") == "503 5.5.1", "EHLO is required again")
        let ehlo = replies(s.sendAction("EHLO client.test")).first?.lines ?? []
        #expect(!ehlo.contains("STARTTLS"))
        #expect(s.send("MAIL FROM:<a@client.test>") == "250 2.1.0")
        #expect(s.machine.protocolName == "ESMTPS")
        #expect(s.machine.session.tls == Self.tls)
    }

    @Test func secondStartTLSIsRefused() {
        var s = session()
        _ = s.send("EHLO client.test")
        _ = s.send("STARTTLS")
        _ = s.machine.tlsEstablished(Self.tls)
        _ = s.send("EHLO client.test")
        #expect(s.send("STARTTLS") == "554 5.5.1")
    }

    @Test func startTLSWithAnArgumentOrInATransaction() {
        var s = session()
        _ = s.send("EHLO client.test")
        #expect(s.send("STARTTLS now") == "501 5.5.4")
        _ = s.send("MAIL FROM:<a@client.test>")
        #expect(s.send("STARTTLS") == "503 5.5.1")
    }

    @Test func implicitTLSKeepsTheSession() {
        var s = Session(policy: .init(startTLS: false, implicitTLS: true))
        _ = s.machine.connected()
        _ = s.machine.tlsEstablished(Self.tls)
        #expect(s.send("EHLO client.test").hasPrefix("250"))
        #expect(s.machine.protocolName == "ESMTPS")
        #expect(s.send("STARTTLS") == "554 5.5.1")
    }

    @Test func cipherSuiteFromAServerHello() {
        // Record header, ServerHello header, version, 32 random bytes, a 32-byte session id, suite 0x1302.
        var hello: [UInt8] = [22, 3, 3, 0, 90, 2, 0, 0, 86, 3, 3]
        hello += [UInt8](repeating: 7, count: 32)
        hello += [32] + [UInt8](repeating: 1, count: 32)
        hello += [0x13, 0x02, 0]
        #expect(ServerHelloSniffer.cipherSuite(inServerHello: hello) == 0x1302)
        #expect(ServerHelloSniffer.describe(0x1302) == ("TLS_AES_256_GCM_SHA384", 256))
        #expect(ServerHelloSniffer.cipherSuite(inServerHello: Array(hello.prefix(40))) == nil)
        #expect(ServerHelloSniffer.cipherSuite(inServerHello: [23] + hello.dropFirst()) == nil, "not a handshake record")
    }
}
