import SluiceStageAPI

/// One DKIM-Signature field as Sluice reads it itself (RFC 6376 3.2 tag-list, 3.5 tags), so that
/// a signature libopendkim drops while parsing still becomes a result of its own, with the
/// `d=`, `s=` and `a=` it was written with.
///
/// `problem` names why a verifier must not use the signature (RFC 6376 6.1.1: PERMFAIL); such a
/// signature is reported as `permerror` without asking libopendkim.
struct DKIMSignatureField: Sendable, Hashable {
    /// The tags, names as written, values with folding white space removed; empty when the
    /// tag-list could not be read.
    var tags: [String: String]
    /// Why the signature cannot be verified; nil when it is well formed.
    var problem: String?

    var domain: String { tags["d"] ?? "" }
    var selector: String { tags["s"] ?? "" }
    /// `a=` as written (`rsa-md5` stays `rsa-md5`).
    var algorithm: String { tags["a"] ?? "" }
    var signature: String { tags["b"] ?? "" }

    /// The algorithms libopendkim verifies; rsa-sha1 is then reported as `policy` (RFC 8301).
    static let algorithms: Set<String> = ["rsa-sha256", "rsa-sha1", "ed25519-sha256"]
    /// Tags every signature must have (RFC 6376 6.1.1).
    static let required = ["v", "a", "b", "bh", "d", "h", "s"]

    /// Reads the field's value (the text after the colon). `messageHasFrom`: the message carries
    /// a From field (RFC 5322 3.6 requires one; a signature cannot cover a message without it).
    init(value: String, messageHasFrom: Bool) {
        guard let tags = Self.tagList(value) else {
            self.tags = [:]
            problem = "malformed tag-list"
            return
        }
        self.tags = tags
        problem = Self.check(tags, messageHasFrom: messageHasFrom)
    }

    private static func check(_ tags: [String: String], messageHasFrom: Bool) -> String? {
        guard let version = tags["v"] else { return "no v= tag" }
        guard version == "1" else { return "unsupported version v=\(version.prefix(20))" }
        if let missing = required.first(where: { tags[$0] == nil }) { return "required tag \(missing)= missing" }
        let algorithm = tags["a"]!
        guard algorithms.contains(algorithm.lowercased()) else { return "unsupported algorithm a=\(algorithm.prefix(40))" }
        guard isBase64(tags["b"]!), !tags["b"]!.isEmpty else { return "malformed b= value" }
        guard isBase64(tags["bh"]!), !tags["bh"]!.isEmpty else { return "malformed bh= value" }
        let domain = tags["d"]!.lowercased()
        guard !domain.isEmpty, !tags["s"]!.isEmpty else { return "empty d= or s=" }
        let signed = tags["h"]!.split(separator: ":", omittingEmptySubsequences: false).map { $0.lowercased() }
        guard signed.contains("from") else { return "h= does not include From" }
        if let c = tags["c"] {
            let parts = c.lowercased().split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count <= 2, parts.allSatisfy({ $0 == "simple" || $0 == "relaxed" }) else {
                return "unknown canonicalization c=\(c.prefix(40))"
            }
        }
        if let q = tags["q"], !q.lowercased().split(separator: ":").contains("dns/txt") {
            return "unsupported query method q=\(q.prefix(40))"
        }
        if let l = tags["l"], l.isEmpty || l.count > 76 || !l.allSatisfy(\.isASCIIDigit) { return "malformed l= value" }
        for tag in ["t", "x"] {
            if let v = tags[tag], v.isEmpty || v.count > 12 || !v.allSatisfy(\.isASCIIDigit) { return "malformed \(tag)= value" }
        }
        if let t = tags["t"].flatMap({ Int($0) }), let x = tags["x"].flatMap({ Int($0) }), x < t {
            return "x= is earlier than t="
        }
        if let i = tags["i"] {
            // The identity's domain must be d= or a subdomain of it.
            guard let at = i.lastIndex(of: "@") else { return "malformed i= value" }
            let identity = i[i.index(after: at)...].lowercased()
            guard identity == domain || identity.hasSuffix("." + domain) else { return "i= domain is not within d=" }
        }
        guard messageHasFrom else { return "the message has no From field" }
        return nil
    }

    /// RFC 6376 3.2: `tag-spec *( ";" tag-spec ) [ ";" ]`, with folding white space around names,
    /// "=" and values. Nil on a syntax error or a tag named twice (the whole list is then invalid).
    static func tagList(_ text: String) -> [String: String]? {
        var tags: [String: String] = [:]
        let specs = text.split(separator: ";", omittingEmptySubsequences: false)
        for (n, spec) in specs.enumerated() {
            let trimmed = spec.filter { !isFWS($0) }
            if trimmed.isEmpty {
                // Only the last spec may be empty (the trailing ";").
                guard n == specs.count - 1 else { return nil }
                continue
            }
            guard let eq = spec.firstIndex(of: "=") else { return nil }
            let name = spec[..<eq].trimmingFWS()
            // tag-name = ALPHA *ALNUMPUNC
            guard let first = name.unicodeScalars.first, first.isASCIIAlpha,
                  name.unicodeScalars.allSatisfy({ $0.isASCIIAlpha || ("0"..."9").contains($0) || $0 == "_" })
            else { return nil }
            let raw = spec[spec.index(after: eq)...].trimmingFWS()
            // tag-value: VALCHAR (0x21-0x3A / 0x3C-0x7E) runs with FWS between them; UTF-8 as well
            // (RFC 8616 3.2: an internationalized `i=`).
            guard raw.unicodeScalars.allSatisfy({ isFWS(Character($0)) || ((0x21...0x7E).contains($0.value) && $0 != ";") || $0.value > 0x7F }) else {
                return nil
            }
            let value = String(raw.filter { !isFWS($0) })
            guard tags.updateValue(value, forKey: name) == nil else { return nil }
        }
        return tags
    }

    private static func isFWS(_ c: Character) -> Bool {
        c == " " || c == "\t" || c == "\r" || c == "\n" || c == "\r\n"
    }

    private static func isBase64(_ s: String) -> Bool {
        s.unicodeScalars.allSatisfy { $0.isASCIIAlpha || ("0"..."9").contains($0) || $0 == "+" || $0 == "/" || $0 == "=" }
    }
}

private extension Substring {
    func trimmingFWS() -> String {
        let fws: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" || $0 == "\r\n" }
        return String(drop(while: fws).reversed().drop(while: fws).reversed())
    }
}

private extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}

private extension Unicode.Scalar {
    var isASCIIAlpha: Bool { ("a"..."z").contains(self) || ("A"..."Z").contains(self) }
}
