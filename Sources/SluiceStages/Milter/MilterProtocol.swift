/// The milter protocol (Sendmail's libmilter, version 6; constants as in mfdef.h), MTA side:
/// 4-octet length, one command octet, data.
enum Milter {
    static let version: UInt32 = 6

    enum Command: UInt8 {
        case abort = 0x41       // A
        case body = 0x42        // B
        case connect = 0x43     // C
        case macro = 0x44       // D
        case endOfBody = 0x45   // E
        case helo = 0x48        // H
        case quitNewConnection = 0x4B // K
        case header = 0x4C      // L
        case mail = 0x4D        // M
        case endOfHeaders = 0x4E // N
        case optionNegotiation = 0x4F // O
        case quit = 0x51        // Q
        case rcpt = 0x52        // R
        case data = 0x54        // T
        case unknown = 0x55     // U
    }

    enum Reply: UInt8 {
        case addRecipient = 0x2B        // +
        case deleteRecipient = 0x2D     // -
        case addRecipientWithArgs = 0x32 // 2
        case shutdown = 0x34            // 4
        case accept = 0x61              // a
        case replaceBody = 0x62         // b
        case `continue` = 0x63          // c
        case discard = 0x64             // d
        case changeFrom = 0x65          // e
        case connectionFailure = 0x66   // f
        case addHeader = 0x68           // h
        case insertHeader = 0x69        // i
        case setSymbolList = 0x6C       // l
        case changeHeader = 0x6D        // m
        case progress = 0x70            // p
        case quarantine = 0x71          // q
        case reject = 0x72              // r
        case skip = 0x73                // s
        case tempfail = 0x74            // t
        case replyCode = 0x79           // y
        case optionNegotiation = 0x4F   // O
    }

    /// SMFIF_*: what the milter may change.
    struct Actions: OptionSet, Sendable {
        let rawValue: UInt32
        static let addHeaders = Actions(rawValue: 0x01)
        static let changeBody = Actions(rawValue: 0x02)
        static let addRecipients = Actions(rawValue: 0x04)
        static let deleteRecipients = Actions(rawValue: 0x08)
        static let changeHeaders = Actions(rawValue: 0x10)
        static let quarantine = Actions(rawValue: 0x20)
        static let changeFrom = Actions(rawValue: 0x40)
        static let addRecipientsWithArgs = Actions(rawValue: 0x80)
        static let setSymbolList = Actions(rawValue: 0x100)
        static let all: Actions = [.addHeaders, .changeBody, .addRecipients, .deleteRecipients, .changeHeaders, .quarantine,
                                   .changeFrom, .addRecipientsWithArgs, .setSymbolList]
    }

    /// SMFIP_*: which events the milter does not want, or answers without a reply.
    struct ProtocolFlags: OptionSet, Sendable {
        let rawValue: UInt32
        static let noConnect = ProtocolFlags(rawValue: 0x1)
        static let noHelo = ProtocolFlags(rawValue: 0x2)
        static let noMail = ProtocolFlags(rawValue: 0x4)
        static let noRcpt = ProtocolFlags(rawValue: 0x8)
        static let noBody = ProtocolFlags(rawValue: 0x10)
        static let noHeaders = ProtocolFlags(rawValue: 0x20)
        static let noEOH = ProtocolFlags(rawValue: 0x40)
        static let noReplyHeader = ProtocolFlags(rawValue: 0x80)
        static let noUnknown = ProtocolFlags(rawValue: 0x100)
        static let noData = ProtocolFlags(rawValue: 0x200)
        static let skip = ProtocolFlags(rawValue: 0x400)
        static let rcptRejected = ProtocolFlags(rawValue: 0x800)
        static let noReplyConnect = ProtocolFlags(rawValue: 0x1000)
        static let noReplyHelo = ProtocolFlags(rawValue: 0x2000)
        static let noReplyMail = ProtocolFlags(rawValue: 0x4000)
        static let noReplyRcpt = ProtocolFlags(rawValue: 0x8000)
        static let noReplyData = ProtocolFlags(rawValue: 0x10000)
        static let noReplyUnknown = ProtocolFlags(rawValue: 0x20000)
        static let noReplyEOH = ProtocolFlags(rawValue: 0x40000)
        static let noReplyBody = ProtocolFlags(rawValue: 0x80000)
        static let headerLeadingSpace = ProtocolFlags(rawValue: 0x100000)
        /// What Sluice can do (everything but RCPT_REJ, which it does not send).
        static let offered = ProtocolFlags(rawValue: 0x1FFFFF & ~0x800)
    }

    /// SMFIM_*: the protocol stages macros belong to.
    enum MacroStage: UInt32, CaseIterable {
        case connect = 0, helo = 1, mail = 2, rcpt = 3, data = 4, endOfMessage = 5, endOfHeaders = 6

        var command: Command {
            switch self {
            case .connect: .connect
            case .helo: .helo
            case .mail: .mail
            case .rcpt: .rcpt
            case .data: .data
            case .endOfMessage: .endOfBody
            case .endOfHeaders: .endOfHeaders
            }
        }

        /// Postfix's defaults (milter_connect_macros, ..., milter_end_of_data_macros).
        var defaultMacros: [String] {
            switch self {
            case .connect: ["j", "{daemon_name}", "{daemon_addr}", "v", "_"]
            case .helo: ["{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"]
            case .mail: ["i", "{auth_type}", "{auth_authen}", "{auth_ssf}", "{auth_author}", "{mail_mailer}", "{mail_host}", "{mail_addr}"]
            case .rcpt: ["{rcpt_mailer}", "{rcpt_host}", "{rcpt_addr}"]
            case .data: ["i"]
            case .endOfHeaders: []
            case .endOfMessage: ["i"]
            }
        }
    }

    /// The largest frame accepted from a milter.
    static let maxFrame = 1 << 20
    /// Body chunks sent to a milter (MILTER_CHUNK_SIZE).
    static let chunkSize = 65535

    static func frame(_ command: UInt8, _ data: [UInt8] = []) -> [UInt8] {
        let length = UInt32(data.count + 1)
        return [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), command] + data
    }

    static func uint32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }

    static func readUInt32(_ b: ArraySlice<UInt8>) -> UInt32? {
        guard b.count >= 4 else { return nil }
        let i = b.startIndex
        return UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
    }

    /// NUL-terminated strings.
    static func cStrings(_ strings: [String]) -> [UInt8] {
        strings.flatMap { Array($0.utf8.filter { $0 != 0 }) + [0] }
    }

    /// Splits NUL-terminated fields.
    static func fields(_ data: ArraySlice<UInt8>) -> [String] {
        data.split(separator: 0, omittingEmptySubsequences: false).dropLast(data.last == 0 ? 1 : 0)
            .map { String(decoding: $0, as: UTF8.self) }
    }
}
