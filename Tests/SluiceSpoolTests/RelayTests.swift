import Foundation
import SMTPCore
@testable import SluiceSpool
import Testing

@Suite("OutboundCanonicalizer")
struct OutboundCanonicalizerTests {
    func run(_ chunks: [String]) -> String {
        var c = OutboundCanonicalizer()
        var out: [UInt8] = []
        for chunk in chunks { c.process(Array(chunk.utf8), into: &out) }
        c.finish(into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    @Test(arguments: [
        ("a\r\nb\r\n", "a\r\nb\r\n.\r\n"),
        ("a\r\n.b\r\n..c\r\n", "a\r\n..b\r\n...c\r\n.\r\n"),
        (".\r\n", "..\r\n.\r\n"),
        ("no end", "no end\r\n.\r\n"),
        ("bare\nlf\rcr\r\n", "bare\r\nlf\r\ncr\r\n.\r\n"),
        ("\n.\n", "\r\n..\r\n.\r\n"),
        ("", ".\r\n"),
        ("ends in cr\r", "ends in cr\r\n.\r\n"),
    ])
    func canonical(_ input: String, _ expected: String) {
        #expect(run([input]) == expected)
        // Byte by byte gives the same.
        #expect(run(input.map { String($0) }.flatMap { $0 == "\r\n" ? ["\r", "\n"] : [$0] }) == expected)
    }

    @Test func crlfSplitAcrossChunksIsOneLineEnd() {
        #expect(run(["a\r", "\n.b\r", "\n"]) == "a\r\n..b\r\n.\r\n")
    }

    @Test func noBareLineEndsEverLeave() {
        let out = run(["x\ry\nz\r\r\n\n.\r.\n"])
        let bytes = Array(out.utf8)
        for (i, b) in bytes.enumerated() {
            if b == 0x0A { #expect(i > 0 && bytes[i - 1] == 0x0D) }
            if b == 0x0D { #expect(i + 1 < bytes.count && bytes[i + 1] == 0x0A) }
        }
    }
}

@Suite("Destination")
struct DestinationTests {
    @Test(arguments: [
        ("maildir:/srv/mail", "maildir:/srv/mail"),
        ("maildir:mail", "maildir:/base/mail"),
        ("smtp://10.1.2.3:2525", "smtp://10.1.2.3:2525"),
        ("smtp://mx.example.test", "smtp://mx.example.test:25"),
        ("smtp://[::1]:2525", "smtp://::1:2525"),
        ("lmtp://127.0.0.1:24", "lmtp://127.0.0.1:24"),
        ("lmtp://host", "lmtp://host:24"),
        ("lmtp:unix:/run/dovecot/lmtp", "lmtp:unix:/run/dovecot/lmtp"),
        ("mx", "mx"),
    ])
    func parses(_ text: String, _ expected: String) {
        #expect(Destination(parsing: text, baseDirectory: "/base")?.description == expected)
    }

    @Test(arguments: ["", "maildir:", "smtp://", "smtp://host:0", "smtp://host:x", "smtp://[::1", "lmtp:unix:", "http://x", "mx:", "MX"])
    func refuses(_ text: String) {
        #expect(Destination(parsing: text, baseDirectory: "/base") == nil)
    }
}

@Suite("QueuePolicy")
struct QueuePolicyTests {
    @Test func backoffDoublesUpToTheCap() {
        var p = QueuePolicy()
        p.minBackoff = .seconds(300)
        p.maxBackoff = .seconds(3600)
        #expect((1...6).map { p.backoff(attempt: $0) } == [300, 600, 1200, 2400, 3600, 3600].map { Duration.seconds($0) })
    }
}

@Suite("DeliveryState")
struct DeliveryStateTests {
    @Test func appendAndLoadRoundTrip() async throws {
        try await withSpool { s in
        #expect(try DeliveryState.load(s.spool.layout, "ABC").isEmpty)
        try DeliveryState.append(s.spool.layout, "ABC", [(0, .delivered)])
        try DeliveryState.append(s.spool.layout, "ABC", [(2, .failed(SMTPReply(550, "5.1.1", "no such user")))])
        let state = try DeliveryState.load(s.spool.layout, "ABC")
        #expect(state[0] == .delivered)
        #expect(state[2] == .failed(SMTPReply(550, "5.1.1", "no such user")))
        #expect(state[1] == nil)
        try DeliveryState.remove(s.spool.layout, "ABC")
        #expect(try DeliveryState.load(s.spool.layout, "ABC").isEmpty)
        }
    }
}

@Suite("BounceWriter")
struct BounceReportTests {
    @Test func reportHasTheRFC3464Parts() {
        let envelope = SpoolEnvelope(
            id: "ORIG1", sender: .mailbox(Mailbox(localPart: "s", domain: "client.test")), senderParameters: [],
            recipients: [], client: .init(address: "127.0.0.1", port: 1, helo: "x"), protocolName: "ESMTP",
            receivedAt: 0, size: 10, body: nil, smtputf8: false, quarantine: nil, trace: []
        )
        let rcpt = SpoolEnvelope.SpooledRecipient(address: Mailbox(localPart: "bad", domain: "relay.test"), parameters: [], destination: "smtp://h:25")
        let text = BounceWriter.report(
            id: "B1", original: envelope, failures: [(rcpt, SMTPReply(550, "5.1.1", "no such user"))],
            headers: "Subject: hi\r\n", hostname: "mx.example.test", to: Mailbox(localPart: "s", domain: "client.test")
        )
        #expect(text.contains("Content-Type: multipart/report; report-type=delivery-status;"))
        #expect(text.contains("Final-Recipient: rfc822; bad@relay.test\r\n"))
        #expect(text.contains("Action: failed\r\nStatus: 5.1.1\r\n"))
        #expect(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"))
        #expect(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n"))
        #expect(text.contains("--B1/mx.example.test--\r\n"))
        #expect(!text.contains("\n\n") && !text.replacingOccurrences(of: "\r\n", with: "").contains("\n"))
    }

    @Test func delayedReportSaysSo() {
        let envelope = SpoolEnvelope(
            id: "ORIG2", sender: .mailbox(Mailbox(localPart: "s", domain: "client.test")), senderParameters: [],
            recipients: [], client: .init(address: "127.0.0.1", port: 1, helo: "x"), protocolName: "ESMTP",
            receivedAt: 0, size: 10, body: nil, smtputf8: false, quarantine: nil, trace: []
        )
        let rcpt = SpoolEnvelope.SpooledRecipient(address: Mailbox(localPart: "slow", domain: "relay.test"), parameters: [], destination: "smtp://h:25")
        let text = BounceWriter.report(
            id: "B2", original: envelope, failures: [(rcpt, SMTPReply(451, "4.2.0", "later"))],
            headers: "", hostname: "mx.example.test", to: Mailbox(localPart: "s", domain: "client.test"), kind: .delayed
        )
        #expect(text.contains("Subject: Delayed Mail (still being retried)\r\n"))
        #expect(text.contains("Action: delayed\r\nStatus: 4.2.0\r\n"))
    }
}
