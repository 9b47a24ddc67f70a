/// Turns one command line (without its CRLF) into an `SMTPCommand`, or the reply that refuses it.
///
/// The framer has already enforced the line-length limit; this parser checks everything inside the line.
public struct SMTPCommandParser: Sendable {
    public var limits: SMTPLimits

    public init(limits: SMTPLimits = SMTPLimits()) {
        self.limits = limits
    }

    /// - Parameters:
    ///   - line: the command line without CRLF.
    ///   - transactionUTF8: whether the current transaction's MAIL had SMTPUTF8; governs RCPT addresses.
    public func parse(_ line: [UInt8], transactionUTF8: Bool = false) throws(SMTPCommandError) -> SMTPCommand {
        // Only CRLF ends a line (RFC 5321 2.3.8); a CR or LF inside is a bare line ending.
        if line.contains(0) { throw .syntax("5.5.2", "Error: NUL character in command") }
        if line.contains(0x0A) || line.contains(0x0D) {
            throw SMTPCommandError(reply: SMTPReply(500, "5.5.2", "Error: bare CR or LF in command"))
        }
        let space = line.firstIndex(of: UInt8(ascii: " ")) ?? line.endIndex
        let verb = String(decoding: line[..<space].map(SMTPGrammar.upper), as: UTF8.self)
        var argStart = space
        while argStart < line.endIndex, line[argStart] == UInt8(ascii: " ") { argStart += 1 }
        var argEnd = line.endIndex
        while argEnd > argStart, line[argEnd - 1] == UInt8(ascii: " ") || line[argEnd - 1] == UInt8(ascii: "\t") { argEnd -= 1 }
        let arg = line[argStart..<argEnd]
        let argText = String(decoding: arg, as: UTF8.self)

        func noArgument(_ command: SMTPCommand) throws(SMTPCommandError) -> SMTPCommand {
            guard arg.isEmpty else { throw .syntax("5.5.4", "Syntax: \(verb) takes no argument") }
            return command
        }
        func requiredArgument() throws(SMTPCommandError) -> String {
            guard !arg.isEmpty else { throw .syntax("5.5.4", "Syntax: \(verb) needs an argument") }
            return argText
        }

        switch verb {
        case "EHLO", "HELO":
            // Postfix-like leniency: any one printable token names the client.
            guard !arg.isEmpty, let name = argText.split(separator: " ").first,
                  String(validating: arg, as: UTF8.self) != nil,
                  arg.allSatisfy({ $0 >= 0x20 && $0 != 0x7F })
            else { throw .syntax("5.5.4", "Syntax: \(verb) hostname") }
            return verb == "EHLO" ? .ehlo(String(name)) : .helo(String(name))
        case "MAIL":
            return try mail(Array(line[space...]))
        case "RCPT":
            return try rcpt(Array(line[space...]), utf8: transactionUTF8)
        case "DATA": return try noArgument(.data)
        case "RSET": return try noArgument(.rset)
        case "QUIT": return try noArgument(.quit)
        case "STARTTLS": return try noArgument(.starttls)
        case "TURN": return try noArgument(.turn)
        case "NOOP": return .noop
        case "HELP": return .help(arg.isEmpty ? nil : argText)
        case "VRFY": return .vrfy(try requiredArgument())
        case "EXPN": return .expn(try requiredArgument())
        case "AUTH": return .auth(try requiredArgument())
        case "ETRN": return .etrn(try requiredArgument())
        case "BDAT":
            return try bdat(arg)
        default:
            throw SMTPCommandError(reply: SMTPReply(500, "5.5.2", "Error: command not recognized"))
        }
    }

    /// bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ]; end-marker = "LAST" (RFC 3030 section 3).
    /// A size we cannot read loses the framing, so the connection must close.
    private func bdat(_ arg: ArraySlice<UInt8>) throws(SMTPCommandError) -> SMTPCommand {
        let parts = arg.split(separator: UInt8(ascii: " "))
        let fatal = SMTPCommandError(reply: SMTPReply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]"), closesConnection: true)
        guard parts.count == 1 || parts.count == 2, let sizeBytes = parts.first,
              sizeBytes.count <= 19, sizeBytes.allSatisfy(SMTPGrammar.isDigit),
              let size = UInt64(String(decoding: sizeBytes, as: UTF8.self))
        else { throw fatal }
        var last = false
        if parts.count == 2 {
            guard parts[1].map(SMTPGrammar.upper) == Array("LAST".utf8) else { throw fatal }
            last = true
        }
        return .bdat(size: size, last: last)
    }

    /// mail = "MAIL FROM:" Reverse-path [SP Mail-parameters]
    private func mail(_ rest: [UInt8]) throws(SMTPCommandError) -> SMTPCommand {
        guard let start = afterKeyword(rest, "FROM:") else { throw .syntax("5.5.4", "Syntax: MAIL FROM:<address>") }
        var parser = PathParser(bytes: rest, index: start, limits: limits, utf8: true)
        let path: ReversePath
        do { path = try parser.reversePath() } catch { throw Self.pathError(error, sender: true) }
        let params = try ParameterParser.mailParameters(try parameters(rest, from: parser.index))
        if parser.sawNonASCII && !params.smtputf8 { throw Self.pathError(.requiresSMTPUTF8, sender: true) }
        return .mail(path, params)
    }

    /// rcpt = "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path ) [SP Rcpt-parameters]
    private func rcpt(_ rest: [UInt8], utf8: Bool) throws(SMTPCommandError) -> SMTPCommand {
        guard let start = afterKeyword(rest, "TO:") else { throw .syntax("5.5.4", "Syntax: RCPT TO:<address>") }
        var parser = PathParser(bytes: rest, index: start, limits: limits, utf8: utf8)
        let path: ForwardPath
        do { path = try parser.forwardPath() } catch { throw Self.pathError(error, sender: false) }
        return .rcpt(path, try parameters(rest, from: parser.index))
    }

    /// Finds `keyword` (case-insensitive) after the verb's space and skips spaces after it,
    /// as Postfix does when not in strict RFC 821 mode.
    private func afterKeyword(_ rest: [UInt8], _ keyword: String) -> Int? {
        let k = Array(keyword.utf8)
        var i = 0
        while i < rest.count, rest[i] == UInt8(ascii: " ") { i += 1 }
        guard i > 0, i + k.count <= rest.count,
              zip(rest[i..<i + k.count], k).allSatisfy({ SMTPGrammar.upper($0) == $1 }) else { return nil }
        i += k.count
        while i < rest.count, rest[i] == UInt8(ascii: " ") { i += 1 }
        return i < rest.count ? i : nil
    }

    private func parameters(_ rest: [UInt8], from index: Int) throws(SMTPCommandError) -> [ESMTPParameter] {
        guard index < rest.count else { return [] }
        guard rest[index] == UInt8(ascii: " ") else { throw .syntax("5.5.4", "Syntax error after address") }
        return try ParameterParser.parse(rest[index...])
    }

    static func pathError(_ error: PathError, sender: Bool) -> SMTPCommandError {
        let e = sender ? "5.1.7" : "5.1.3"
        let what = sender ? "sender" : "recipient"
        switch error {
        case .syntax(let why): return .syntax(e, "Bad \(what) address syntax: \(why)")
        case .localPartTooLong: return .syntax(e, "Bad \(what) address: local part too long")
        case .domainTooLong: return .syntax(e, "Bad \(what) address: domain too long")
        case .pathTooLong: return .syntax(e, "Bad \(what) address: path too long")
        case .requiresSMTPUTF8:
            return SMTPCommandError(reply: SMTPReply(553, "5.6.7", "Non-ASCII \(what) address requires SMTPUTF8"))
        }
    }
}
