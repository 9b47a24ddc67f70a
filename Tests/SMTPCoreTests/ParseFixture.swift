import Testing
import SMTPCore

/// One row of a command-parser table: a line and what `SMTPCommandParser` must make of it,
/// in the manner of swift-nio-imap's `ParseFixture`. A command line arrives whole from the
/// framer, so a row either parses or fails with a reply; "needs more bytes" rows belong to the
/// framer's tables (SluiceServerTests).
struct CommandFixture: Sendable, CustomTestStringConvertible {
    enum Expectation: Sendable {
        case parses(SMTPCommand)
        /// The reply's code and enhanced code, whether it closes the connection, and a piece of its text.
        case fails(code: Int, enhanced: String, closes: Bool, text: String?)
    }

    var line: [UInt8]
    var transactionUTF8: Bool
    var limits: SMTPLimits
    var expectation: Expectation
    var sourceLocation: SourceLocation

    static func ok(
        _ line: String, _ command: SMTPCommand, utf8: Bool = false, limits: SMTPLimits = SMTPLimits(),
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Self {
        Self(line: Array(line.utf8), transactionUTF8: utf8, limits: limits, expectation: .parses(command), sourceLocation: sourceLocation)
    }

    static func fail(
        _ line: String, _ code: Int, _ enhanced: String, closes: Bool = false, text: String? = nil, utf8: Bool = false,
        limits: SMTPLimits = SMTPLimits(), sourceLocation: SourceLocation = #_sourceLocation
    ) -> Self {
        fail(bytes: Array(line.utf8), code, enhanced, closes: closes, text: text, utf8: utf8, limits: limits, sourceLocation: sourceLocation)
    }

    static func fail(
        bytes: [UInt8], _ code: Int, _ enhanced: String, closes: Bool = false, text: String? = nil, utf8: Bool = false,
        limits: SMTPLimits = SMTPLimits(), sourceLocation: SourceLocation = #_sourceLocation
    ) -> Self {
        Self(
            line: bytes, transactionUTF8: utf8, limits: limits,
            expectation: .fails(code: code, enhanced: enhanced, closes: closes, text: text), sourceLocation: sourceLocation
        )
    }

    var testDescription: String {
        let shown = line.count > 60 ? Array(line.prefix(40)) : line
        var s = ""
        for b in shown {
            switch b {
            case 0x0D: s += "\\r"
            case 0x0A: s += "\\n"
            case 0x00: s += "\\0"
            case 0x20..<0x7F: s += String(UnicodeScalar(b))
            default: s += "\\x" + String(b, radix: 16)
            }
        }
        if line.count > 60 { s += "…(\(line.count) octets)" }
        return s + (transactionUTF8 ? " [utf8]" : "")
    }

    /// Runs the row and records any mismatch at the row's own source line.
    func check() {
        let parser = SMTPCommandParser(limits: limits)
        let result: Result<SMTPCommand, SMTPCommandError>
        do {
            result = .success(try parser.parse(line, transactionUTF8: transactionUTF8))
        } catch {
            result = .failure(error)
        }
        switch (expectation, result) {
        case (.parses(let expected), .success(let actual)):
            #expect(actual == expected, sourceLocation: sourceLocation)
        case (.parses, .failure(let error)):
            Issue.record("expected to parse, failed with \(error.reply)", sourceLocation: sourceLocation)
        case (.fails(let code, let enhanced, _, _), .success(let actual)):
            Issue.record("expected \(code) \(enhanced), parsed as \(actual)", sourceLocation: sourceLocation)
        case (.fails(let code, let enhanced, let closes, let text), .failure(let error)):
            #expect(error.reply.code == code, "reply: \(error.reply)", sourceLocation: sourceLocation)
            #expect(error.reply.enhancedCode?.description == enhanced, "reply: \(error.reply)", sourceLocation: sourceLocation)
            #expect(error.closesConnection == closes, "reply: \(error.reply)", sourceLocation: sourceLocation)
            if let text {
                #expect(error.reply.lines.joined().contains(text), "reply: \(error.reply)", sourceLocation: sourceLocation)
            }
        }
    }
}

// MARK: Shorthands for expected values

func mailbox(_ local: String, _ domain: String) -> Mailbox { Mailbox(localPart: local, domain: domain) }

func mailParams(size: UInt64? = nil, body: BodyType? = nil, smtputf8: Bool = false, other: [ESMTPParameter] = []) -> MailParameters {
    var p = MailParameters()
    p.size = size
    p.body = body
    p.smtputf8 = smtputf8
    p.other = other
    return p
}

func mailFrom(_ local: String, _ domain: String, _ params: MailParameters = MailParameters()) -> SMTPCommand {
    .mail(.mailbox(mailbox(local, domain)), params)
}

func rcptTo(_ local: String, _ domain: String, _ params: [ESMTPParameter] = []) -> SMTPCommand {
    .rcpt(.mailbox(mailbox(local, domain)), params)
}
