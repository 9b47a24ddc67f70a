/// Makes message content safe to send after DATA: every line end becomes CRLF (a bare CR or
/// LF included, so the next hop never sees one), a leading dot is doubled (RFC 5321 4.5.2), and
/// `finish` closes the last line and appends the `.` line. Works across chunk boundaries.
public struct OutboundCanonicalizer: Sendable {
    private var atLineStart = true
    private var pendingCR = false

    public init() {}

    public mutating func process(_ input: some Sequence<UInt8>, into out: inout [UInt8]) {
        for b in input {
            if pendingCR {
                pendingCR = false
                out.append(0x0D)
                out.append(0x0A)
                atLineStart = true
                if b == 0x0A { continue }
            }
            if b == 0x0D {
                pendingCR = true
                continue
            }
            if b == 0x0A {
                out.append(0x0D)
                out.append(0x0A)
                atLineStart = true
                continue
            }
            if atLineStart && b == UInt8(ascii: ".") { out.append(b) }
            out.append(b)
            atLineStart = false
        }
    }

    /// Ends the last line and adds the end-of-data line `.`.
    public mutating func finish(into out: inout [UInt8]) {
        if pendingCR {
            pendingCR = false
            atLineStart = false
        }
        if !atLineStart { out += [0x0D, 0x0A] }
        out += Array(".\r\n".utf8)
        atLineStart = true
    }
}
