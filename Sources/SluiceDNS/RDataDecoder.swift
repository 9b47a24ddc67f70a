import SluiceStageAPI

/// Decodes the uncompressed wire-format rdata libunbound returns (RFC 1035 3.3).
enum RDataDecoder {
    static func record(_ type: DNSRecordType, _ rdata: [UInt8]) -> DNSRecord? {
        switch type {
        case .a:
            return rdata.count == 4 ? IPAddress(bytes: rdata).map(DNSRecord.a) : nil
        case .aaaa:
            return rdata.count == 16 ? IPAddress(bytes: rdata).map(DNSRecord.aaaa) : nil
        case .mx:
            guard rdata.count >= 3, let (name, _) = domainName(rdata, from: 2) else { return nil }
            return .mx(preference: Int(rdata[0]) << 8 | Int(rdata[1]), exchange: name)
        case .txt:
            var strings: [[UInt8]] = []
            var i = 0
            while i < rdata.count {
                let n = Int(rdata[i])
                guard i + 1 + n <= rdata.count else { return nil }
                strings.append(Array(rdata[(i + 1)..<(i + 1 + n)]))
                i += 1 + n
            }
            return .txt(strings)
        case .ptr:
            return domainName(rdata, from: 0).map { .ptr($0.0) }
        case .cname:
            return domainName(rdata, from: 0).map { .cname($0.0) }
        default:
            return .other(type: type, rdata: rdata)
        }
    }

    /// A domain name in presentation form without the final dot ("." for the root). Labels are
    /// read as UTF-8 where valid; dots, backslashes, spaces and bytes that are not printable
    /// are escaped as in master files (`\.`, `\DDD`, RFC 1035 5.1).
    static func domainName(_ bytes: [UInt8], from start: Int) -> (String, Int)? {
        var labels: [String] = []
        var i = start
        while i < bytes.count {
            let n = Int(bytes[i])
            if n == 0 { return (labels.isEmpty ? "." : labels.joined(separator: "."), i + 1) }
            guard n < 64, i + 1 + n <= bytes.count else { return nil }
            labels.append(label(bytes[(i + 1)..<(i + 1 + n)]))
            i += 1 + n
        }
        return nil
    }

    private static func label(_ raw: ArraySlice<UInt8>) -> String {
        var out = ""
        var rest = raw[...]
        while let b = rest.first {
            if b >= 0x80 {
                // A multi-byte UTF-8 sequence stays a character; an invalid one is escaped.
                let length = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1
                let seq = rest.prefix(length)
                if length > 1, seq.count == length, let text = String(validating: seq, as: UTF8.self) {
                    out += text
                    rest = rest.dropFirst(length)
                    continue
                }
            }
            rest = rest.dropFirst()
            switch b {
            case UInt8(ascii: "."), UInt8(ascii: "\\"): out += "\\" + String(UnicodeScalar(b))
            case 0x21...0x7E: out.unicodeScalars.append(UnicodeScalar(b))
            default:
                let d = String(b)
                out += "\\" + String(repeating: "0", count: 3 - d.count) + d
            }
        }
        return out
    }
}
