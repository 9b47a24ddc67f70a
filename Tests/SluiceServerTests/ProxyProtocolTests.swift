@testable import SluiceServer
import Testing

@Suite("PROXY protocol")
struct ProxyProtocolTests {
    @Test func version1() {
        let h = Array("PROXY TCP4 203.0.113.7 192.0.2.1 5555 25\r\nEHLO".utf8)
        #expect(ProxyProtocolDecoder.parse(h) == .header(length: 42, source: ("203.0.113.7", 5555), destination: ("192.0.2.1", 25)))
        #expect(ProxyProtocolDecoder.parse(Array("PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n".utf8))
            == .header(length: 40, source: ("2001:db8::1", 1), destination: ("2001:db8::2", 2)))
        #expect(ProxyProtocolDecoder.parse(Array("PROXY UNKNOWN\r\n".utf8)) == .header(length: 15, source: nil, destination: nil))
        #expect(ProxyProtocolDecoder.parse(Array("PROXY TCP4 203.0.113.7".utf8)) == .needMore)
        #expect(ProxyProtocolDecoder.parse(Array("PRO".utf8)) == .needMore)
    }

    /// haproxy on a dual-stack socket (`bind :::25 v4v6`) sends IPv4 clients as IPv4-mapped
    /// IPv6 addresses; the session's client is the IPv4 address, whatever the letter case.
    @Test(arguments: [
        "PROXY TCP6 ::ffff:192.0.2.5 ::ffff:192.0.2.1 40000 25\r\n",
        "PROXY TCP6 ::FFFF:192.0.2.5 ::FFFF:192.0.2.1 40000 25\r\n",
        "PROXY TCP6 ::ffff:c000:205 ::FfFf:C000:201 40000 25\r\n",
        "PROXY TCP6 0:0:0:0:0:ffff:192.0.2.5 ::ffff:192.0.2.1 40000 25\r\n",
    ])
    func version1MappedAddresses(_ text: String) {
        #expect(ProxyProtocolDecoder.parse(Array(text.utf8))
            == .header(length: text.utf8.count, source: ("192.0.2.5", 40000), destination: ("192.0.2.1", 25)))
    }

    @Test func version1MixedMappedAndIPv6() {
        let text = "PROXY TCP6 ::ffff:192.0.2.5 2001:db8::1 40000 25\r\n"
        #expect(ProxyProtocolDecoder.parse(Array(text.utf8))
            == .header(length: text.utf8.count, source: ("192.0.2.5", 40000), destination: ("2001:db8::1", 25)))
    }

    @Test(arguments: [
        "PROXY TCP6 192.0.2.5 192.0.2.1 40000 25\r\n", "PROXY TCP4 ::ffff:192.0.2.5 ::ffff:192.0.2.1 40000 25\r\n",
        "PROXY tcp6 ::ffff:192.0.2.5 ::ffff:192.0.2.1 40000 25\r\n", "PROXY TCP6 ::ffff:192.0.2.500 ::1 1 2\r\n",
        "PROXY TCP4 203.0.113.7 192.0.2.1 5555\r\n", "PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n",
        "PROXY TCP4 203.0.113.7 192.0.2.1 5555 99999\r\n", "PROXY TCP4 203.0.113.7 192.0.2.1 05 25\r\n",
        "PROXY UDP4 203.0.113.7 192.0.2.1 1 2\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "EHLO x\r\n", "GET / HTTP/1.0\r\n",
    ])
    func version1Refusals(_ text: String) {
        if case .invalid = ProxyProtocolDecoder.parse(Array(text.utf8)) {} else {
            Issue.record("accepted \(text.debugDescription)")
        }
    }

    @Test func version2() {
        let sig = ProxyProtocolDecoder.v2Signature
        let v4: [UInt8] = sig + [0x21, 0x11, 0, 12, 203, 0, 113, 7, 192, 0, 2, 1, 0x15, 0xB3, 0, 25]
        #expect(ProxyProtocolDecoder.parse(v4) == .header(length: 28, source: ("203.0.113.7", 5555), destination: ("192.0.2.1", 25)))
        #expect(ProxyProtocolDecoder.parse(Array(v4.prefix(20))) == .needMore)
        let local: [UInt8] = sig + [0x20, 0x00, 0, 0]
        #expect(ProxyProtocolDecoder.parse(local) == .header(length: 16, source: nil, destination: nil))
        let withTLV: [UInt8] = sig + [0x21, 0x11, 0, 15, 203, 0, 113, 7, 192, 0, 2, 1, 0, 1, 0, 2, 0x04, 0, 0]
        if case .header(let length, _, _) = ProxyProtocolDecoder.parse(withTLV) { #expect(length == 31) } else { Issue.record("TLVs") }
        if case .invalid = ProxyProtocolDecoder.parse(sig + [0x31, 0x11, 0, 12] + [UInt8](repeating: 0, count: 12)) {} else { Issue.record("version 3") }
        if case .invalid = ProxyProtocolDecoder.parse(sig + [0x21, 0x11, 0, 4, 1, 2, 3, 4]) {} else { Issue.record("truncated") }
    }

    @Test func version2MappedAddressesAreIPv4() {
        let mapped: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]
        let v6: [UInt8] = ProxyProtocolDecoder.v2Signature + [0x21, 0x21, 0, 36] + mapped + [192, 0, 2, 5]
            + mapped + [192, 0, 2, 1] + [0x9C, 0x40, 0, 25]
        #expect(ProxyProtocolDecoder.parse(v6) == .header(length: 52, source: ("192.0.2.5", 40000), destination: ("192.0.2.1", 25)))
    }

    @Test func refusalsSayWhy() {
        #expect(ProxyProtocolDecoder.parse(Array("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8)) == .invalid("v1 protocol 'UDP4' not supported"))
        #expect(ProxyProtocolDecoder.parse(Array("PROXY TCP6 1.2.3.4 ::1 1 2\r\n".utf8)) == .invalid("v1 TCP6 header with a malformed address"))
        #expect(ProxyProtocolDecoder.parse(Array("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".utf8)) == .invalid("v1 header with 5 fields, not 6"))
    }
}
