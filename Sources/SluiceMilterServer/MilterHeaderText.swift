import SluiceStageAPI

/// Header values between the milter protocol and `HeaderField`.
///
/// A `HeaderField` keeps the raw value after the colon: its leading space and CRLF folding. The
/// MTA strips the one space after the colon unless SMFIP_HDR_LEADSPC was negotiated, and then
/// puts one back in front of a value it is given; folded lines reach a milter, and go back to
/// the MTA, with a bare LF (the MTA adds the CR: libmilter's `smfi_addheader` documentation).
enum MilterHeaderText {
    /// The field the MTA sent to `xxfi_header`.
    static func field(name: String, value: String, leadingSpace: Bool) -> HeaderField {
        let raw = crlfFolding(value)
        return leadingSpace ? HeaderField(name: name, value: raw) : .make(name: name, value: raw)
    }

    /// The value to give `smfi_addheader`, `smfi_insheader` or `smfi_chgheader` for `field`.
    static func value(of field: HeaderField, leadingSpace: Bool) -> String {
        var v = lfFolding(field.value)
        if !leadingSpace && v.hasPrefix(" ") { v.removeFirst() }
        return v
    }

    /// Every bare LF becomes CRLF; a CRLF stays.
    static func crlfFolding(_ text: String) -> String {
        guard text.utf8.contains(0x0A) else { return text }
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count + 8)
        var previous: UInt8 = 0
        for b in text.utf8 {
            if b == 0x0A && previous != 0x0D { out.append(0x0D) }
            out.append(b)
            previous = b
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Every CRLF becomes LF.
    static func lfFolding(_ text: String) -> String {
        guard text.utf8.contains(0x0D) else { return text }
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        let bytes = Array(text.utf8)
        for (i, b) in bytes.enumerated() where !(b == 0x0D && i + 1 < bytes.count && bytes[i + 1] == 0x0A) {
            out.append(b)
        }
        return String(decoding: out, as: UTF8.self)
    }
}
