import SMTPCore
import Testing
@testable import SluiceServer

@Suite("Received header and connection limits")
struct ReceivedHeaderTests {
    /// 2026-11-29 08:30:53 UTC
    let time = 1_795_941_053

    func header(client: String, recipient: String?) -> String {
        String(decoding: ReceivedHeader.make(
            heloName: "client.test", clientAddress: client, serverHostname: "mx.example.test", protocolName: "ESMTP",
            queueID: "ABC123", singleRecipient: recipient, time: time
        ), as: UTF8.self)
    }

    @Test func ipv4Client() {
        let h = header(client: "192.0.2.1", recipient: nil)
        #expect(h.hasPrefix("Received: from client.test (unknown [192.0.2.1])\r\n\tby mx.example.test (Sluice) with ESMTP id ABC123; "))
        #expect(h.hasSuffix("\r\n"))
        #expect(!h.contains("for <"))
    }

    @Test func ipv6ClientIsWrittenAsAnAddressLiteral() {
        #expect(header(client: "2001:db8::1", recipient: nil).contains("(unknown [IPv6:2001:db8::1])"))
    }

    @Test func singleRecipientIsNamed() {
        #expect(header(client: "192.0.2.1", recipient: "user@example.test").contains("\r\n\tfor <user@example.test>; "))
    }

    @Test func everyLineEndsInCRLFAndContinuationsAreFolded() {
        let bytes = Array(header(client: "192.0.2.1", recipient: "user@example.test").utf8)
        #expect(bytes.suffix(2) == [0x0D, 0x0A])
        for (i, b) in bytes.enumerated() {
            if b == 0x0D { #expect(i + 1 < bytes.count && bytes[i + 1] == 0x0A, "bare CR at \(i)") }
            if b == 0x0A {
                #expect(i > 0 && bytes[i - 1] == 0x0D, "bare LF at \(i)")
                if i + 1 < bytes.count { #expect(bytes[i + 1] == UInt8(ascii: "\t"), "continuation line at \(i + 1) is not folded") }
            }
        }
    }

    @Test func dateIsRFC5322() {
        let date = RFC5322Date.format(time)
        // e.g. "Sun, 29 Nov 2026 08:30:53 +0000" in whatever zone the host uses
        let parts = date.split(separator: " ")
        #expect(parts.count == 6, "\(date)")
        #expect(parts.first?.hasSuffix(",") == true)
        #expect(parts.last.map { ($0.first == "+" || $0.first == "-") && $0.count == 5 } == true)
    }

    @Test func connectionTracker() {
        let tracker = ConnectionTracker(maxTotal: 3, maxPerAddress: 2)
        #expect(tracker.open("192.0.2.1"))
        #expect(tracker.open("192.0.2.1"))
        #expect(!tracker.open("192.0.2.1"), "per-address limit")
        #expect(tracker.open("192.0.2.2"))
        #expect(!tracker.open("192.0.2.3"), "total limit")
        #expect(tracker.count == 3)
        tracker.close("192.0.2.1")
        #expect(tracker.count == 2)
        #expect(tracker.open("192.0.2.3"))
    }
}
