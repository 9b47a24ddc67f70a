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

    /// A domain name in presentation form without the final dot ("." for the root);
    /// dots and backslashes inside labels are escaped, other bytes kept as they are.
    static func domainName(_ bytes: [UInt8], from start: Int) -> (String, Int)? {
        var labels: [String] = []
        var i = start
        while i < bytes.count {
            let n = Int(bytes[i])
            if n == 0 { return (labels.isEmpty ? "." : labels.joined(separator: "."), i + 1) }
            guard n < 64, i + 1 + n <= bytes.count else { return nil }
            var label = ""
            for b in bytes[(i + 1)..<(i + 1 + n)] {
                if b == UInt8(ascii: ".") || b == UInt8(ascii: "\\") { label += "\\" }
                label.unicodeScalars.append(Unicode.Scalar(b))
            }
            labels.append(label)
            i += 1 + n
        }
        return nil
    }
}
