/// Character classes of RFC 5321 section 4.1.2 and RFC 5322 section 3.2.3.
enum SMTPGrammar {
    static func isAlpha(_ b: UInt8) -> Bool { (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) }
    static func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }
    static func isLetDig(_ b: UInt8) -> Bool { isAlpha(b) || isDigit(b) }

    /// atext = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "/" / "=" / "?" / "^" / "_" / "`" / "{" / "|" / "}" / "~"
    static func isAtext(_ b: UInt8) -> Bool {
        if isLetDig(b) { return true }
        switch b {
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
             UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "/"),
             UInt8(ascii: "="), UInt8(ascii: "?"), UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"),
             UInt8(ascii: "{"), UInt8(ascii: "|"), UInt8(ascii: "}"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// qtextSMTP = %d32-33 / %d35-91 / %d93-126
    static func isQtextSMTP(_ b: UInt8) -> Bool {
        (b >= 32 && b <= 33) || (b >= 35 && b <= 91) || (b >= 93 && b <= 126)
    }

    /// esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
    static func isKeywordChar(_ b: UInt8) -> Bool { isLetDig(b) || b == UInt8(ascii: "-") }

    /// esmtp-value = 1*(%d33-60 / %d62-126), extended with UTF8-non-ascii by RFC 6531.
    static func isValueChar(_ b: UInt8) -> Bool { (b >= 33 && b <= 60) || (b >= 62 && b <= 126) || b >= 0x80 }

    static func upper(_ b: UInt8) -> UInt8 { (b >= 0x61 && b <= 0x7A) ? b - 0x20 : b }
}
