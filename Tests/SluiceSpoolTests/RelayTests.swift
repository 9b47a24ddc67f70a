import Foundation
import SMTPCore
@testable import SluiceDelivery
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

@Suite("DeliveryReport")
struct DeliveryReportTests {
    static func envelope(_ id: String, smtputf8: Bool = false, envid: String? = nil) -> SpoolEnvelope {
        SpoolEnvelope(
            id: id, sender: .mailbox(Mailbox(localPart: "s", domain: "client.test")), senderParameters: [],
            recipients: [], client: .init(address: "127.0.0.1", port: 1, helo: "x"), protocolName: "ESMTP",
            receivedAt: 0, size: 10, body: nil, smtputf8: smtputf8, quarantine: nil, trace: [], envelopeID: envid
        )
    }

    static func rcpt(_ local: String, _ parameters: [ESMTPParameter] = []) -> SpoolEnvelope.SpooledRecipient {
        SpoolEnvelope.SpooledRecipient(address: Mailbox(localPart: local, domain: "relay.test"), parameters: parameters, destination: "smtp://h:25")
    }

    static func text(_ report: DeliveryReport) -> String { String(decoding: report.render(), as: UTF8.self) }

    @Test func reportHasTheRFC3464Parts() {
        let report = DeliveryReport(
            id: "B1", hostname: "mx.example.test", original: Self.envelope("ORIG1"), sender: Mailbox(localPart: "s", domain: "client.test"),
            entries: [.init(recipient: Self.rcpt("bad"), reply: SMTPReply(550, "5.1.1", "no such user"), action: .failed)],
            returned: .headers(Array("Subject: hi\r\n".utf8))
        )
        let text = Self.text(report)
        #expect(text.contains("Subject: Undelivered Mail Returned to Sender\r\n"))
        #expect(text.contains("Content-Type: multipart/report; report-type=delivery-status;"))
        #expect(text.contains("Final-Recipient: rfc822; bad@relay.test\r\n"))
        #expect(text.contains("Action: failed\r\nStatus: 5.1.1\r\n"))
        #expect(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"))
        #expect(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n"))
        #expect(text.contains("--B1/mx.example.test--\r\n"))
        #expect(!text.contains("Original-Envelope-Id") && !text.contains("Original-Recipient"))
        #expect(!text.contains("\n\n") && !text.replacingOccurrences(of: "\r\n", with: "").contains("\n"))
    }

    @Test func delayedReportSaysSo() {
        let report = DeliveryReport(
            id: "B2", hostname: "mx.example.test", original: Self.envelope("ORIG2"), sender: Mailbox(localPart: "s", domain: "client.test"),
            entries: [.init(recipient: Self.rcpt("slow"), reply: SMTPReply(451, "4.2.0", "later"), action: .delayed)],
            returned: .headers([])
        )
        let text = Self.text(report)
        #expect(text.contains("Subject: Delayed Mail (still being retried)\r\n"))
        #expect(text.contains("Action: delayed\r\nStatus: 4.2.0\r\n"))
    }

    @Test func successReportCarriesEnvidAndOriginalRecipient() {
        let orcpt = ESMTPParameter(keyword: "ORCPT", value: "rfc822;first+2Blast@relay.test")
        let report = DeliveryReport(
            id: "B3", hostname: "mx.example.test", original: Self.envelope("ORIG3", envid: "QQ 314"),
            sender: Mailbox(localPart: "s", domain: "client.test"),
            entries: [.init(recipient: Self.rcpt("ok", [ESMTPParameter(keyword: "NOTIFY", value: "SUCCESS"), orcpt]),
                            reply: SMTPReply(250, "2.0.0", "delivered to maildir"), action: .delivered),
                      .init(recipient: Self.rcpt("on"), reply: SMTPReply(250, nil, "queued"), action: .relayed)],
            returned: .headers([])
        )
        let text = Self.text(report)
        #expect(text.contains("Subject: Successful Mail Delivery Report\r\n"))
        #expect(text.contains("Original-Envelope-Id: QQ 314\r\n"))
        #expect(text.contains("Original-Recipient: rfc822;first+last@relay.test\r\nFinal-Recipient: rfc822; ok@relay.test\r\nAction: delivered\r\nStatus: 2.0.0\r\n"))
        #expect(text.contains("Final-Recipient: rfc822; on@relay.test\r\nAction: relayed\r\nStatus: 2.0.0\r\n"))
    }

    @Test func internationalReportUsesTheGlobalTypes() {
        let report = DeliveryReport(
            id: "B4", hostname: "mx.example.test", original: Self.envelope("ORIG4", smtputf8: true),
            sender: Mailbox(localPart: "s", domain: "client.test"),
            entries: [.init(recipient: SpoolEnvelope.SpooledRecipient(address: Mailbox(localPart: "jörg", domain: "relay.test"), parameters: [], destination: "mx"),
                            reply: SMTPReply(550, "5.1.1", "no"), action: .failed)],
            returned: .message(Array("Subject: grüße\r\n\r\nbody\r\n".utf8))
        )
        let text = Self.text(report)
        #expect(report.international)
        #expect(text.contains("report-type=global-delivery-status;"))
        #expect(text.contains("Content-Type: text/plain; charset=utf-8\r\n"))
        #expect(text.contains("Content-Type: message/global-delivery-status\r\n"))
        #expect(text.contains("Final-Recipient: utf-8; jörg@relay.test\r\n"))
        #expect(text.contains("Content-Type: message/global\r\n\r\nSubject: grüße\r\n\r\nbody\r\n\r\n--B4/mx.example.test--\r\n"))
    }

    @Test func wholeMessageWithoutAFinalNewlineStillEndsItsPart() {
        let report = DeliveryReport(
            id: "B5", hostname: "h", original: Self.envelope("ORIG5"), sender: Mailbox(localPart: "s", domain: "client.test"),
            entries: [.init(recipient: Self.rcpt("bad"), reply: SMTPReply(550, nil, "no"), action: .failed)],
            returned: .message(Array("Subject: x\r\n\r\nno newline".utf8))
        )
        let text = Self.text(report)
        #expect(text.contains("Content-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\nno newline\r\n\r\n--B5/h--\r\n"))
        #expect(text.contains("Status: 5.0.0\r\n"))
    }
}
