#if canImport(Glibc)
import Glibc
#endif
import SluiceStageAPI

/// The explanation of a `fail` (RFC 7208 6.2), computed here rather than by libspf2, which
/// leaves macros unexpanded and spaces escaped.
extension SPFCheck {
    /// The explanation from `record`'s `exp=` (evaluated for `domain`), or the default when
    /// there is none or anything about it is wrong (no TXT, several, DNS error, bad syntax).
    func explanation(record: SPFRecord?, domain: String) -> String {
        let values = macroValues(domain: domain)
        let fallback = (try? SPFMacroString(defaultExplanation, explanation: true))?.expand(values) ?? defaultExplanation
        guard let spec = record?.explanation else { return fallback }
        let target = SPFDomain.truncated(spec.expand(values))
        guard SPFDomain.isQueryable(target), case .success(let answer) = resolve(target, .txt),
              answer.records.count == 1, let text = answer.records[0].text,
              text.unicodeScalars.allSatisfy({ $0.isASCII }),
              let macro = try? SPFMacroString(text, explanation: true) else {
            return fallback
        }
        return macro.expand(values)
    }

    /// Macro values for this check (RFC 7208 7.3).
    func macroValues(domain: String) -> SPFMacroString.Values {
        let at = sender.lastIndex(of: "@")!
        return SPFMacroString.Values(
            sender: sender, localPart: String(sender[..<at]), senderDomain: String(sender[sender.index(after: at)...]),
            domain: domain, ip: ip, validatedName: { [self] in validatedName(domain: domain) }, helo: helo,
            receiver: receiver, timestamp: Int(time(nil))
        )
    }

    /// `%{p}`: a name of the client that maps back to it, preferring `domain` or a subdomain of
    /// it (RFC 7208 5.5, 7.3); "unknown" when there is none.
    func validatedName(domain: String) -> String {
        guard case .success(let answer) = resolve(SPFDomain.reverseName(ip), .ptr) else { return "unknown" }
        var validated: [String] = []
        for case .ptr(let name) in answer.records.prefix(10) {
            guard case .success(let forward) = resolve(name, ip.isIPv4 ? .a : .aaaa) else { continue }
            if forward.records.contains(where: { $0.address == ip }) { validated.append(name) }
        }
        let d = domain.lowercased()
        if let exact = validated.first(where: { $0.lowercased() == d }) { return exact }
        if let sub = validated.first(where: { $0.lowercased().hasSuffix("." + d) }) { return sub }
        return validated.first ?? "unknown"
    }
}

extension SPFDomain {
    /// RFC 7208 7.3: an expanded name over 253 octets loses labels from the left.
    static func truncated(_ name: String) -> String {
        var labels = name.split(separator: ".", omittingEmptySubsequences: false)
        while labels.count > 1 && labels.joined(separator: ".").utf8.count > 253 { labels.removeFirst() }
        return labels.joined(separator: ".")
    }

    /// The in-addr.arpa or ip6.arpa name of an address.
    static func reverseName(_ ip: IPAddress) -> String {
        if ip.isIPv4 { return ip.bytes.reversed().map(String.init).joined(separator: ".") + ".in-addr.arpa" }
        var nibbles: [String] = []
        for byte in ip.bytes.reversed() {
            nibbles.append(String(byte & 0xF, radix: 16))
            nibbles.append(String(byte >> 4, radix: 16))
        }
        return nibbles.joined(separator: ".") + ".ip6.arpa"
    }
}
