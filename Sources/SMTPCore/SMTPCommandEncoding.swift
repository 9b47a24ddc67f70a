/// The client side of the grammar: commands as a client writes them, the inverse of
/// `SMTPCommandParser` (what `encoded` gives, `parse` reads back to the same command).
extension SMTPCommand {
    /// The command line without its CRLF.
    public var encoded: String {
        switch self {
        case .ehlo(let name): "EHLO \(name)"
        case .helo(let name): "HELO \(name)"
        case .mail(let path, let parameters): (["MAIL FROM:\(path)"] + parameters.encoded.map(\.description)).joined(separator: " ")
        case .rcpt(let path, let parameters): (["RCPT TO:\(path)"] + parameters.map(\.description)).joined(separator: " ")
        case .data: "DATA"
        case .bdat(let size, let last): last ? "BDAT \(size) LAST" : "BDAT \(size)"
        case .rset: "RSET"
        case .noop: "NOOP"
        case .quit: "QUIT"
        case .vrfy(let text): "VRFY \(text)"
        case .expn(let text): "EXPN \(text)"
        case .help(let topic): topic.map { "HELP \($0)" } ?? "HELP"
        case .starttls: "STARTTLS"
        case .auth(let text): "AUTH \(text)"
        case .etrn(let text): "ETRN \(text)"
        case .turn: "TURN"
        }
    }

    /// The command line with its CRLF, as sent.
    public var line: String { encoded + "\r\n" }

    /// LMTP's greeting command (RFC 2033 4.1), which a server never receives here.
    public static func lhlo(_ name: String) -> String { "LHLO \(name)" }
}

extension MailParameters {
    /// The parameters in a fixed order: SIZE, BODY, SMTPUTF8, AUTH, RET, ENVID (as xtext), then the rest.
    public var encoded: [ESMTPParameter] {
        var list: [ESMTPParameter] = []
        if let size { list.append(ESMTPParameter(keyword: "SIZE", value: "\(size)")) }
        if let body { list.append(ESMTPParameter(keyword: "BODY", value: body.rawValue)) }
        if smtputf8 { list.append(ESMTPParameter(keyword: "SMTPUTF8")) }
        if let auth { list.append(ESMTPParameter(keyword: "AUTH", value: auth)) }
        if let ret { list.append(ESMTPParameter(keyword: "RET", value: ret.rawValue)) }
        if let envelopeID { list.append(ESMTPParameter(keyword: "ENVID", value: XText.encode(envelopeID))) }
        return list + other
    }
}
