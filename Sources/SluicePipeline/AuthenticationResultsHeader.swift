import SluiceStageAPI

/// The one Authentication-Results field (RFC 8601) the gateway adds, built from the results
/// stages recorded, and the removal of incoming fields that claim to be ours (RFC 8601 5).
public enum AuthenticationResultsHeader {
    public static let name = "Authentication-Results"

    /// The authserv-id of a field value (RFC 8601 2.2): the first token or quoted-string after
    /// any CFWS; comments nest and may contain quoted pairs.
    static func authservID(of value: String) -> String {
        var s = Substring(value)
        while let c = s.first {
            if c == " " || c == "\t" {
                s = s.dropFirst()
            } else if c == "(" {
                var depth = 0
                while let d = s.first {
                    s = s.dropFirst()
                    if d == "\\" {
                        s = s.dropFirst()
                    } else if d == "(" {
                        depth += 1
                    } else if d == ")" {
                        depth -= 1
                        if depth == 0 { break }
                    }
                }
            } else {
                break
            }
        }
        if s.first == "\"" {
            var out = ""
            s = s.dropFirst()
            while let c = s.popFirst(), c != "\"" {
                if c == "\\", let next = s.popFirst() { out.append(next) } else { out.append(c) }
            }
            return out
        }
        return String(s.prefix { $0 != ";" && $0 != " " && $0 != "\t" && $0 != "(" })
    }

    /// The edits that delete every Authentication-Results field whose authserv-id is `hostname`.
    public static func removeSpoofed(from headers: [HeaderField], hostname: String) -> [MessageEdit] {
        var occurrence = 0
        var edits: [MessageEdit] = []
        for field in headers where field.name.caseInsensitiveEquals(name) {
            occurrence += 1
            if authservID(of: field.unfoldedValue).caseInsensitiveEquals(hostname) {
                // Each deletion shifts the later ones down by one.
                edits.append(.deleteHeader(name: name, occurrence: occurrence - edits.count))
            }
        }
        return edits
    }

    /// The field value for `results`, one resinfo per folded line; nil when there is none.
    public static func value(hostname: String, results: [AuthenticationResult]) -> String? {
        guard !results.isEmpty else { return nil }
        return " \(hostname);" + results.map { "\r\n\t\($0.resinfo)" }.joined(separator: ";")
    }
}
