/// SASL for SMTP AUTH (RFC 4954): base64 responses, and the PLAIN (RFC 4616) and LOGIN
/// mechanisms' messages.
public enum SASL {
    /// The mechanisms Sluice offers.
    public enum Mechanism: String, Sendable, CaseIterable {
        case plain = "PLAIN"
        case login = "LOGIN"
    }

    /// A response that is not what the mechanism allows.
    public struct Malformed: Error, Hashable, Sendable {}

    /// A decoded PLAIN message: `[authzid] NUL authcid NUL passwd`.
    public struct PlainCredentials: Hashable, Sendable {
        public var authorizationID: String
        public var user: String
        public var password: String

        public init(authorizationID: String, user: String, password: String) {
            self.authorizationID = authorizationID
            self.user = user
            self.password = password
        }
    }

    /// RFC 4616 2: exactly two NULs, a non-empty user and password, UTF-8, at most 255 octets each.
    public static func parsePlain(_ message: [UInt8]) throws(Malformed) -> PlainCredentials {
        let parts = message.split(separator: 0, maxSplits: 3, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[1].isEmpty, !parts[2].isEmpty, parts.allSatisfy({ $0.count <= 255 }),
              let authz = String(validating: parts[0], as: UTF8.self),
              let user = String(validating: parts[1], as: UTF8.self),
              let password = String(validating: parts[2], as: UTF8.self)
        else { throw Malformed() }
        return PlainCredentials(authorizationID: authz, user: user, password: password)
    }

    /// Strict base64 (RFC 4648 4): the standard alphabet, padding required, nothing else.
    /// "=" alone is the empty response (RFC 4954 4).
    public static func decodeBase64(_ text: [UInt8]) throws(Malformed) -> [UInt8] {
        if text == [UInt8(ascii: "=")] { return [] }
        guard text.count % 4 == 0 else { throw Malformed() }
        var out: [UInt8] = []
        out.reserveCapacity(text.count / 4 * 3)
        var i = 0
        while i < text.count {
            var quad = [UInt32](repeating: 0, count: 4)
            var padding = 0
            for j in 0..<4 {
                let c = text[i + j]
                if c == UInt8(ascii: "=") {
                    // Padding only at the end, and only in the last two places.
                    guard i + 4 == text.count, j >= 2 else { throw Malformed() }
                    padding += 1
                    continue
                }
                guard padding == 0, let v = value(c) else { throw Malformed() }
                quad[j] = v
            }
            let n = quad[0] << 18 | quad[1] << 12 | quad[2] << 6 | quad[3]
            out.append(UInt8(n >> 16 & 0xFF))
            if padding < 2 { out.append(UInt8(n >> 8 & 0xFF)) }
            if padding < 1 { out.append(UInt8(n & 0xFF)) }
            i += 4
        }
        return out
    }

    public static func encodeBase64(_ bytes: [UInt8]) -> String {
        let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            let b0 = UInt32(bytes[i])
            let b1 = i + 1 < bytes.count ? UInt32(bytes[i + 1]) : 0
            let b2 = i + 2 < bytes.count ? UInt32(bytes[i + 2]) : 0
            let n = b0 << 16 | b1 << 8 | b2
            out.append(table[Int(n >> 18 & 63)])
            out.append(table[Int(n >> 12 & 63)])
            out.append(i + 1 < bytes.count ? table[Int(n >> 6 & 63)] : UInt8(ascii: "="))
            out.append(i + 2 < bytes.count ? table[Int(n & 63)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func value(_ c: UInt8) -> UInt32? {
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): UInt32(c - UInt8(ascii: "A"))
        case UInt8(ascii: "a")...UInt8(ascii: "z"): UInt32(c - UInt8(ascii: "a") + 26)
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(c - UInt8(ascii: "0") + 52)
        case UInt8(ascii: "+"): 62
        case UInt8(ascii: "/"): 63
        default: nil
        }
    }
}
