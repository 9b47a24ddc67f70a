import SluiceStageAPI
import Testing

@Suite("IPAddress and CIDR")
struct CIDRTests {
    @Test(arguments: [
        ("192.0.2.1", [192, 0, 2, 1] as [UInt8], "192.0.2.1"),
        ("0.0.0.0", [0, 0, 0, 0], "0.0.0.0"),
        ("::ffff:192.0.2.1", [192, 0, 2, 1], "192.0.2.1"),
        ("[2001:db8::1]", [0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], "2001:db8::1"),
        ("2001:DB8::1", [0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], "2001:db8::1"),
        ("::1", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], "::1"),
    ])
    func addresses(_ text: String, _ bytes: [UInt8], _ description: String) throws {
        let address = try #require(IPAddress(text))
        #expect(address.bytes == bytes)
        #expect(address.isIPv4 == (bytes.count == 4))
        #expect(address.description == description)
    }

    @Test(arguments: ["", "192.0.2", "192.0.2.256", "192.0.2.1.1", "example.test", "2001:db8::1::2", "[192.0.2.1]", "fe80::1%eth0", " 192.0.2.1"])
    func notAddresses(_ text: String) {
        #expect(IPAddress(text) == nil)
    }

    @Test(arguments: [
        ("192.0.2.0/24", "192.0.2.0", true),
        ("192.0.2.0/24", "192.0.2.255", true),
        ("192.0.2.0/24", "192.0.3.0", false),
        ("192.0.2.128/25", "192.0.2.200", true),
        ("192.0.2.128/25", "192.0.2.100", false),
        ("192.0.2.7/24", "192.0.2.99", true),
        ("10.0.0.0/8", "10.255.255.255", true),
        ("10.0.0.0/8", "11.0.0.0", false),
        ("172.16.0.0/12", "172.31.1.1", true),
        ("172.16.0.0/12", "172.32.1.1", false),
        ("192.0.2.1", "192.0.2.1", true),
        ("192.0.2.1", "192.0.2.2", false),
        ("192.0.2.1/32", "192.0.2.1", true),
        ("0.0.0.0/0", "203.0.113.9", true),
        ("0.0.0.0/0", "2001:db8::1", false),
        ("0.0.0.0/0", "::ffff:203.0.113.9", true),
        ("192.0.2.0/24", "::ffff:192.0.2.5", true),
        ("2001:db8::/32", "2001:db8:ffff::1", true),
        ("2001:db8::/32", "2001:db9::1", false),
        ("2001:db8::/32", "192.0.2.1", false),
        ("2001:db8::/127", "2001:db8::1", true),
        ("2001:db8::/127", "2001:db8::2", false),
        ("::/0", "2001:db8::1", true),
        ("::/0", "192.0.2.1", false),
        ("::1", "::1", true),
        // An IPv4-mapped network keeps its meaning once mapped to IPv4.
        ("::ffff:192.0.2.0/120", "192.0.2.5", true),
        ("::ffff:192.0.2.0/120", "192.0.3.5", false),
        ("::ffff:0.0.0.0/96", "198.51.100.1", true),
        ("[2001:db8::]/32", "2001:db8::1", true),
    ])
    func containment(_ cidr: String, _ address: String, _ inside: Bool) throws {
        let network = try #require(CIDR(cidr))
        #expect(network.contains(address) == inside)
    }

    @Test func prefixLengths() throws {
        #expect(try #require(CIDR("192.0.2.0/24")).prefixLength == 24)
        #expect(try #require(CIDR("192.0.2.1")).prefixLength == 32)
        #expect(try #require(CIDR("2001:db8::")).prefixLength == 128)
        #expect(try #require(CIDR("::ffff:192.0.2.0/120")).prefixLength == 24)
        #expect(try #require(CIDR("192.0.2.0/24")).description == "192.0.2.0/24")
    }

    @Test(arguments: ["192.0.2.0/33", "192.0.2.0/-1", "192.0.2.0/+8", "192.0.2.0/ 8", "192.0.2.0/", "192.0.2.0/8/8", "2001:db8::/129", "/24", "x/24", ""])
    func notNetworks(_ text: String) {
        #expect(CIDR(text) == nil)
    }

    @Test func unparseableAddressIsNeverContained() throws {
        #expect(!(try #require(CIDR("0.0.0.0/0"))).contains("unknown"))
    }
}
