import SluiceStageAPI
@testable import SluiceDNS
import Testing

/// Wire-format rdata as libunbound hands it over (uncompressed, RFC 1035 3.3).
@Suite("RDataDecoder")
struct RDataDecoderTests {
    /// A name in wire form: length-prefixed labels and the root.
    static func wire(_ labels: [String]) -> [UInt8] {
        var out: [UInt8] = []
        for label in labels {
            out.append(UInt8(label.utf8.count))
            out += Array(label.utf8)
        }
        return out + [0]
    }

    static func wire(_ name: String) -> [UInt8] {
        wire(name.split(separator: ".").map(String.init))
    }

    @Test func a() {
        #expect(RDataDecoder.record(.a, [192, 0, 2, 1]) == .a(IPAddress("192.0.2.1")!))
    }

    @Test func aaaa() {
        let bytes: [UInt8] = [0x20, 0x01, 0x0D, 0xB8] + Array(repeating: 0, count: 11) + [1]
        #expect(RDataDecoder.record(.aaaa, bytes) == .aaaa(IPAddress("2001:db8::1")!))
    }

    @Test func aaaaMappedAddressStaysAsSent() {
        // The record holds 16 bytes; the decoder must not turn it into an A record.
        let bytes: [UInt8] = Array(repeating: 0, count: 10) + [0xFF, 0xFF, 192, 0, 2, 1]
        let record = RDataDecoder.record(.aaaa, bytes)
        #expect(record == .aaaa(IPAddress(bytes: bytes)!))
    }

    @Test func mx() {
        let rdata: [UInt8] = [0x01, 0x02] + Self.wire("mail.example.com")
        #expect(RDataDecoder.record(.mx, rdata) == .mx(preference: 258, exchange: "mail.example.com"))
    }

    @Test func nullMX() {
        #expect(RDataDecoder.record(.mx, [0, 0, 0]) == .mx(preference: 0, exchange: "."))
    }

    @Test func txtWithSeveralStringsAndAnEmptyOne() {
        let rdata: [UInt8] = [3] + Array("abc".utf8) + [0] + [2] + Array("de".utf8)
        let record = RDataDecoder.record(.txt, rdata)
        #expect(record == .txt([Array("abc".utf8), [], Array("de".utf8)]))
        #expect(record?.text == "abcde")
    }

    @Test func txtOfAFull255OctetString() {
        let s = [UInt8](repeating: UInt8(ascii: "x"), count: 255)
        #expect(RDataDecoder.record(.txt, [255] + s) == .txt([s]))
    }

    @Test func txtKeepsNonASCIIBytes() {
        let rdata: [UInt8] = [3, 0xC3, 0xA9, 0x00]
        #expect(RDataDecoder.record(.txt, rdata) == .txt([[0xC3, 0xA9, 0x00]]))
    }

    @Test func nameLabelsAreUTF8WithUnprintableBytesEscaped() {
        // "é" then a space and a NUL, then "test": UTF-8 kept, the rest as \DDD.
        let rdata: [UInt8] = [4, 0xC3, 0xA9, 0x20, 0x00, 4] + Array("test".utf8) + [0]
        #expect(RDataDecoder.record(.ptr, rdata) == .ptr("é\\032\\000.test"))
        // A byte that is not valid UTF-8 is escaped too.
        #expect(RDataDecoder.record(.ptr, [1, 0xFF, 0]) == .ptr("\\255"))
    }

    @Test func ptr() {
        #expect(RDataDecoder.record(.ptr, Self.wire("host.example.com")) == .ptr("host.example.com"))
    }

    @Test func cname() {
        #expect(RDataDecoder.record(.cname, Self.wire("target.example.com")) == .cname("target.example.com"))
    }

    @Test func rootName() {
        #expect(RDataDecoder.record(.ptr, [0]) == .ptr("."))
    }

    @Test func escapedDotsAndBackslashesInLabels() {
        #expect(RDataDecoder.record(.ptr, Self.wire(["a.b", "example", "com"])) == .ptr("a\\.b.example.com"))
        #expect(RDataDecoder.record(.ptr, Self.wire(["a\\b", "example", "com"])) == .ptr("a\\\\b.example.com"))
        #expect(RDataDecoder.record(.mx, [0, 5] + Self.wire(["x.y", "test"])) == .mx(preference: 5, exchange: "x\\.y.test"))
    }

    @Test func domainNameReturnsTheEndOffset() throws {
        let bytes: [UInt8] = [9, 9] + Self.wire("a.bc") + [7]
        let (name, end) = try #require(RDataDecoder.domainName(bytes, from: 2))
        #expect(name == "a.bc")
        #expect(end == bytes.count - 1)
    }

    @Test func otherTypesKeepTheirRData() {
        let type = DNSRecordType(rawValue: 99)
        #expect(RDataDecoder.record(type, [1, 2, 3]) == .other(type: type, rdata: [1, 2, 3]))
        #expect(RDataDecoder.record(.tlsa, [3, 1, 1, 0xAB]) == .other(type: .tlsa, rdata: [3, 1, 1, 0xAB]))
    }

    struct Malformed: Sendable, CustomTestStringConvertible {
        var type: DNSRecordType
        var rdata: [UInt8]
        var why: String
        init(_ type: DNSRecordType, _ rdata: [UInt8], _ why: String) {
            self.type = type
            self.rdata = rdata
            self.why = why
        }
        var testDescription: String { "\(type): \(why)" }
    }

    static let malformed: [Malformed] = {
        let mail: [UInt8] = Array("mail".utf8)
        let abc: [UInt8] = Array("abc".utf8)
        let long: [UInt8] = [64] + [UInt8](repeating: UInt8(ascii: "a"), count: 64) + [0]
        var rows: [Malformed] = []
        rows.append(Malformed(.a, [192, 0, 2], "A of 3 octets"))
        rows.append(Malformed(.a, [192, 0, 2, 1, 5], "A of 5 octets"))
        rows.append(Malformed(.a, [], "empty A"))
        rows.append(Malformed(.aaaa, [192, 0, 2, 1], "AAAA of 4 octets"))
        rows.append(Malformed(.aaaa, [UInt8](repeating: 0, count: 15), "AAAA of 15 octets"))
        rows.append(Malformed(.aaaa, [UInt8](repeating: 0, count: 17), "AAAA of 17 octets"))
        rows.append(Malformed(.mx, [0, 10], "MX without exchange"))
        rows.append(Malformed(.mx, [0], "MX of 1 octet"))
        rows.append(Malformed(.mx, [0, 10, 4] + mail, "MX name without the root label"))
        rows.append(Malformed(.mx, [0, 10, 9] + mail + [0], "MX label past the end"))
        rows.append(Malformed(.mx, [0, 10, 0xC0, 0x0C], "MX with a compression pointer"))
        rows.append(Malformed(.txt, [4] + abc, "TXT string past the end"))
        rows.append(Malformed(.txt, [3] + abc + [1], "TXT second string missing"))
        rows.append(Malformed(.ptr, [], "empty PTR"))
        rows.append(Malformed(.ptr, long, "PTR label over 63 octets"))
        rows.append(Malformed(.ptr, [3] + Array("www".utf8), "PTR without the root label"))
        rows.append(Malformed(.cname, [0xC0, 0x0C], "CNAME compression pointer"))
        return rows
    }()

    @Test(arguments: malformed)
    func malformedRDataIsNil(_ row: Malformed) {
        #expect(RDataDecoder.record(row.type, row.rdata) == nil)
    }
}
