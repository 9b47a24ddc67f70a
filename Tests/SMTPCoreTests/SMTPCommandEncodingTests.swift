import Testing
import SMTPCore

/// `SMTPCommand.encoded`, the client side of the grammar: what it writes is canonical, and the
/// parser reads it back to the same command.
@Suite("SMTPCommand encoding")
struct SMTPCommandEncodingTests {
    static let mailbox = Mailbox(localPart: "user", domain: "example.test")

    static var dsn: MailParameters {
        var p = MailParameters()
        p.size = 12345
        p.body = .eightBitMIME
        p.ret = .headers
        p.envelopeID = "QQ 314+x"
        return p
    }

    static var international: MailParameters {
        var p = MailParameters()
        p.smtputf8 = true
        p.other = [ESMTPParameter(keyword: "MT-PRIORITY", value: "3")]
        return p
    }

    /// Each command and the one line a client writes for it.
    static let canonical: [(SMTPCommand, String)] = [
        (.ehlo("mx.example.test"), "EHLO mx.example.test"),
        (.helo("[192.0.2.1]"), "HELO [192.0.2.1]"),
        (.mail(.null, MailParameters()), "MAIL FROM:<>"),
        (.mail(.mailbox(mailbox), dsn), "MAIL FROM:<user@example.test> SIZE=12345 BODY=8BITMIME RET=HDRS ENVID=QQ+20314+2Bx"),
        (.mail(.mailbox(Mailbox(localPart: "jörg", domain: "bücher.test")), international), "MAIL FROM:<jörg@bücher.test> SMTPUTF8 MT-PRIORITY=3"),
        (.mail(.mailbox(Mailbox(localPart: "a b", domain: "example.test")), MailParameters()), "MAIL FROM:<\"a b\"@example.test>"),
        (.rcpt(.mailbox(mailbox), []), "RCPT TO:<user@example.test>"),
        (.rcpt(.postmaster, []), "RCPT TO:<Postmaster>"),
        (.rcpt(.mailbox(mailbox), [ESMTPParameter(keyword: "NOTIFY", value: "SUCCESS,FAILURE"), ESMTPParameter(keyword: "ORCPT", value: "rfc822;user+2B1@example.test")]),
         "RCPT TO:<user@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;user+2B1@example.test"),
        (.data, "DATA"),
        (.bdat(size: 0, last: true), "BDAT 0 LAST"),
        (.bdat(size: 65536, last: false), "BDAT 65536"),
        (.rset, "RSET"),
        (.noop, "NOOP"),
        (.quit, "QUIT"),
        (.vrfy("user"), "VRFY user"),
        (.expn("list"), "EXPN list"),
        (.help(nil), "HELP"),
        (.help("MAIL"), "HELP MAIL"),
        (.starttls, "STARTTLS"),
        (.auth("PLAIN AHVzZXIAcGFzcw=="), "AUTH PLAIN AHVzZXIAcGFzcw=="),
        (.etrn("example.test"), "ETRN example.test"),
        (.turn, "TURN"),
    ]

    @Test(arguments: canonical.indices)
    func writesTheCanonicalLine(_ i: Int) throws {
        let (command, line) = Self.canonical[i]
        #expect(command.encoded == line)
        #expect(command.line == line + "\r\n")
        let utf8: Bool = if case .mail(_, let p) = command { p.smtputf8 } else { false }
        #expect(try SMTPCommandParser().parse(Array(line.utf8), transactionUTF8: utf8) == command)
    }

    /// Every line the parser tables accept, parsed, encoded and parsed again, is the same command.
    @Test func everyParsedCommandRoundTrips() throws {
        let tables = SMTPCommandParserTests.verbs + SMTPCommandParserTests.bdat + SMTPCommandParserTests.paths
            + SMTPCommandParserTests.limits + SMTPCommandParserTests.smtputf8 + SMTPCommandParserTests.parameters
        var checked = 0
        for row in tables {
            guard case .parses(let command) = row.expectation else { continue }
            let parser = SMTPCommandParser(limits: row.limits)
            let again = try parser.parse(Array(command.encoded.utf8), transactionUTF8: row.transactionUTF8)
            #expect(again == command, "\(command.encoded)", sourceLocation: row.sourceLocation)
            checked += 1
        }
        #expect(checked > 50)
    }

    @Test func lhlo() {
        #expect(SMTPCommand.lhlo("mx.example.test") == "LHLO mx.example.test")
    }
}
