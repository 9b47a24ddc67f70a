import Testing
import SMTPCore

@Suite("SMTPReply")
struct SMTPReplyTests {
    private func wire(_ reply: SMTPReply) -> String { String(decoding: reply.encoded, as: UTF8.self) }

    @Test func singleLineWithEnhancedCode() {
        #expect(wire(SMTPReply(250, "2.1.0", "Ok")) == "250 2.1.0 Ok\r\n")
    }

    @Test func singleLineWithoutEnhancedCode() {
        #expect(wire(SMTPReply(220, nil, "mx.example.test ESMTP Sluice")) == "220 mx.example.test ESMTP Sluice\r\n")
    }

    @Test func multiLineCarriesTheEnhancedCodeOnEveryLine() {
        let reply = SMTPReply(550, EnhancedStatusCode(5, 7, 1), ["first", "second", "third"])
        #expect(wire(reply) == "550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n")
    }

    @Test func multiLineWithoutEnhancedCode() {
        let reply = SMTPReply(250, nil, ["mx.example.test", "PIPELINING", "CHUNKING"])
        #expect(wire(reply) == "250-mx.example.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    }

    @Test func emptyTextWithEnhancedCodeHasNoTrailingSpace() {
        #expect(wire(SMTPReply(250, "2.0.0", "")) == "250 2.0.0\r\n")
    }

    @Test func encodeAppends() {
        var out = Array("x".utf8)
        SMTPReply(221, "2.0.0", "Bye").encode(into: &out)
        #expect(String(decoding: out, as: UTF8.self) == "x221 2.0.0 Bye\r\n")
    }

    @Test func emptyLineListBecomesOneEmptyLine() {
        #expect(SMTPReply(250, nil, [String]()).lines == [""])
    }

    @Test func invalidEnhancedCodeTextIsDropped() {
        #expect(SMTPReply(550, "x.y.z", "text").enhancedCode == nil)
        #expect(SMTPReply(550, "5.7.1", "text").enhancedCode == EnhancedStatusCode(5, 7, 1))
    }

    @Test func classification() {
        #expect(SMTPReply(250, "2.0.0", "").isPositive)
        #expect(SMTPReply(354, nil, "").isPositive)
        #expect(SMTPReply(451, "4.3.0", "").isTransientFailure)
        #expect(!SMTPReply(451, "4.3.0", "").isPermanentFailure)
        #expect(SMTPReply(554, "5.7.1", "").isPermanentFailure)
        #expect(!SMTPReply(554, "5.7.1", "").isPositive)
    }

    @Test func descriptionIsOneLine() {
        #expect(SMTPReply(550, EnhancedStatusCode(5, 7, 1), ["a", "b"]).description == "550 5.7.1 a / b")
        #expect(SMTPReply(250, nil, "Ok").description == "250 Ok")
    }

    // MARK: SMTPReply(parsing:) — operator-written replies in pipeline.conf

    struct ParsingRow: Sendable, CustomTestStringConvertible {
        var text: String
        /// nil: must not parse.
        var expected: SMTPReply?
        var testDescription: String { "\"\(text)\"" }
    }

    static let parsingRows: [ParsingRow] = [
        ParsingRow(text: "554 5.7.1 Access denied", expected: SMTPReply(554, "5.7.1", "Access denied")),
        ParsingRow(text: "451 4.7.1 Try again later", expected: SMTPReply(451, "4.7.1", "Try again later")),
        ParsingRow(text: "550 Go away", expected: SMTPReply(550, nil, "Go away")),
        ParsingRow(text: "554 5.7.1", expected: SMTPReply(554, EnhancedStatusCode(5, 7, 1), "")),
        ParsingRow(text: "554", expected: SMTPReply(554, nil, "")),
        ParsingRow(text: "250 2.0.0 Ok", expected: SMTPReply(250, "2.0.0", "Ok")),
        ParsingRow(text: "554 5.7.1 two  spaces kept", expected: SMTPReply(554, "5.7.1", "two  spaces kept")),
        ParsingRow(text: "554 5.7 not an enhanced code", expected: SMTPReply(554, nil, "5.7 not an enhanced code")),
        ParsingRow(text: "554 4.7.1 class mismatch", expected: nil),
        ParsingRow(text: "451 5.7.1 class mismatch", expected: nil),
        ParsingRow(text: "abc", expected: nil),
        ParsingRow(text: "", expected: nil),
        ParsingRow(text: "99 short", expected: nil),
        ParsingRow(text: "5541 long", expected: nil),
        ParsingRow(text: "600 out of range", expected: nil),
        ParsingRow(text: "199 out of range", expected: nil),
        ParsingRow(text: "554-5.7.1 continuation", expected: nil),
        ParsingRow(text: "554 5.7.1 bell\u{07}", expected: nil),
        ParsingRow(text: "554 5.7.1 line\r\nbreak", expected: nil),
    ]

    @Test(arguments: parsingRows) func parsing(_ row: ParsingRow) {
        #expect(SMTPReply(parsing: row.text) == row.expected)
    }
}

@Suite("EnhancedStatusCode")
struct EnhancedStatusCodeTests {
    static let valid: [(String, EnhancedStatusCode)] = [
        ("2.0.0", EnhancedStatusCode(2, 0, 0)),
        ("4.4.2", EnhancedStatusCode(4, 4, 2)),
        ("5.7.1", EnhancedStatusCode(5, 7, 1)),
        ("5.999.999", EnhancedStatusCode(5, 999, 999)),
        ("5.1.10", EnhancedStatusCode(5, 1, 10)),
    ]

    @Test(arguments: valid) func parses(_ text: String, _ code: EnhancedStatusCode) {
        #expect(EnhancedStatusCode(text) == code)
        #expect(code.description == text)
    }

    @Test(arguments: [
        "", "5", "5.7", "5.7.1.1", "3.0.0", "1.0.0", "6.0.0", "0.0.0", "5..1", "5.7.", ".7.1",
        "5.1000.1", "5.1.1000", "5.a.1", "x.y.z", " 5.7.1", "5.7.1 ", "+5.7.1", "5.-7.1", "55.7.1",
    ])
    func rejects(_ text: String) {
        #expect(EnhancedStatusCode(text) == nil)
    }
}

@Suite("Mailbox and paths")
struct MailboxTests {
    @Test(arguments: [
        ("user", "user"),
        ("first.last", "first.last"),
        ("a+tag", "a+tag"),
        ("pelé", "pelé"),
        ("a b", #""a b""#),
        (#"a"b"#, #""a\"b""#),
        (#"a\b"#, #""a\\b""#),
        (".a", #"".a""#),
        ("a.", #""a.""#),
        ("a..b", #""a..b""#),
        ("user@other", #""user@other""#),
        ("", #""""#),
    ])
    func localPartQuoting(_ local: String, _ written: String) {
        #expect(Mailbox(localPart: local, domain: "example.test").localPartText == written)
        #expect(Mailbox(localPart: local, domain: "example.test").description == "\(written)@example.test")
    }

    /// What the path parser reads back is the mailbox that was written.
    @Test(arguments: ["user", "a b", #"a"b"#, #"a\b"#, ".a", "a..b", "user@other", "pelé", "x%y!z"])
    func writtenMailboxParsesBack(_ local: String) throws {
        let m = Mailbox(localPart: local, domain: "example.test")
        let command = try SMTPCommandParser().parse(Array("RCPT TO:<\(m)>".utf8), transactionUTF8: true)
        #expect(command == .rcpt(.mailbox(m), []))
    }

    @Test func normalizedDomainIsLowercase() {
        #expect(Mailbox(localPart: "User", domain: "Example.TEST").normalizedDomain == "example.test")
    }

    @Test func requiresSMTPUTF8() {
        #expect(!Mailbox(localPart: "user", domain: "example.test").requiresSMTPUTF8)
        #expect(Mailbox(localPart: "pelé", domain: "example.test").requiresSMTPUTF8)
        #expect(Mailbox(localPart: "user", domain: "bücher.example").requiresSMTPUTF8)
    }

    @Test func pathDescriptions() {
        let m = Mailbox(localPart: "user", domain: "example.test")
        #expect(ReversePath.null.description == "<>")
        #expect(ReversePath.mailbox(m).description == "<user@example.test>")
        #expect(ReversePath.mailbox(m).mailbox == m)
        #expect(ReversePath.null.mailbox == nil)
        #expect(ForwardPath.postmaster.description == "<Postmaster>")
        #expect(ForwardPath.mailbox(m).description == "<user@example.test>")
    }
}
