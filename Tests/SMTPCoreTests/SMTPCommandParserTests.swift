import Testing
import SMTPCore

/// `SMTPCommandParser` over tables of lines, grouped by what they exercise.
@Suite("SMTPCommandParser")
struct SMTPCommandParserTests {
    // MARK: Verbs (RFC 5321 4.1.1 and the extensions Sluice speaks)

    static let verbs: [CommandFixture] = [
        .ok("EHLO client.test", .ehlo("client.test")),
        .ok("ehlo Client.Test", .ehlo("Client.Test")),
        .ok("EhLo client.test", .ehlo("client.test")),
        .ok("HELO client.test", .helo("client.test")),
        .ok("EHLO [192.0.2.1]", .ehlo("[192.0.2.1]")),
        .ok("EHLO client.test trailing words", .ehlo("client.test")),
        .ok("EHLO   client.test  ", .ehlo("client.test")),
        .fail("EHLO", 501, "5.5.4"),
        .fail("HELO ", 501, "5.5.4"),
        .fail("EHLO bad\u{7F}name", 501, "5.5.4"),
        .fail("EHLO a\u{01}b", 501, "5.5.4"),

        .ok("DATA", .data),
        .ok("data", .data),
        .ok("DATA ", .data),
        .fail("DATA\t", 500, "5.5.2"),  // only SP separates the verb
        .fail("DATA now", 501, "5.5.4"),
        .ok("RSET", .rset),
        .fail("RSET everything", 501, "5.5.4"),
        .ok("QUIT", .quit),
        .fail("QUIT now", 501, "5.5.4"),
        .ok("STARTTLS", .starttls),
        .fail("STARTTLS x", 501, "5.5.4"),
        .ok("TURN", .turn),
        .fail("TURN x", 501, "5.5.4"),
        .ok("NOOP", .noop),
        .ok("NOOP anything at all", .noop),
        .ok("HELP", .help(nil)),
        .ok("HELP MAIL", .help("MAIL")),
        .ok("VRFY postmaster", .vrfy("postmaster")),
        .fail("VRFY", 501, "5.5.4"),
        .ok("EXPN staff", .expn("staff")),
        .fail("EXPN", 501, "5.5.4"),
        .ok("AUTH PLAIN", .auth("PLAIN")),
        .fail("AUTH", 501, "5.5.4"),
        .ok("ETRN example.test", .etrn("example.test")),
        .fail("ETRN", 501, "5.5.4"),

        .fail("FOO", 500, "5.5.2"),
        .fail("", 500, "5.5.2"),
        .fail(" NOOP", 500, "5.5.2"),
        .fail("MAILFROM:<a@example.test>", 500, "5.5.2"),
        .fail("NOOPX", 500, "5.5.2"),
    ]

    @Test(arguments: verbs) func verb(_ row: CommandFixture) { row.check() }

    // MARK: BDAT (RFC 3030 section 3): a size we cannot read loses the framing

    static let bdat: [CommandFixture] = [
        .ok("BDAT 0", .bdat(size: 0, last: false)),
        .ok("BDAT 0 LAST", .bdat(size: 0, last: true)),
        .ok("BDAT 10 LAST", .bdat(size: 10, last: true)),
        .ok("bdat 10 last", .bdat(size: 10, last: true)),
        .ok("BDAT 1048576", .bdat(size: 1_048_576, last: false)),
        .ok("BDAT 9999999999999999999", .bdat(size: 9_999_999_999_999_999_999, last: false)),
        .ok("BDAT  10  LAST", .bdat(size: 10, last: true)),
        .fail("BDAT", 501, "5.5.4", closes: true),
        .fail("BDAT x", 501, "5.5.4", closes: true),
        .fail("BDAT 10 FOO", 501, "5.5.4", closes: true),
        .fail("BDAT 10 LAST extra", 501, "5.5.4", closes: true),
        .fail("BDAT -1", 501, "5.5.4", closes: true),
        .fail("BDAT +1", 501, "5.5.4", closes: true),
        .fail("BDAT 1x", 501, "5.5.4", closes: true),
        .fail("BDAT 12345678901234567890", 501, "5.5.4", closes: true),
        .fail("BDAT LAST", 501, "5.5.4", closes: true),
    ]

    @Test(arguments: bdat) func bdatSyntax(_ row: CommandFixture) { row.check() }

    // MARK: Line hygiene: only CRLF ends a line, NUL is never allowed

    static let lineHygiene: [CommandFixture] = [
        .fail("NOOP\0", 501, "5.5.2"),
        .fail("MAIL FROM:<a\0@example.test>", 501, "5.5.2"),
        .fail("\0", 501, "5.5.2"),
        .fail("NOOP\nQUIT", 500, "5.5.2"),
        .fail("NOOP\rQUIT", 500, "5.5.2"),
        .fail("DATA\n", 500, "5.5.2"),
        .fail("RSET\r", 500, "5.5.2"),
        .fail("MAIL FROM:<a@example.test>\nRCPT TO:<b@example.test>", 500, "5.5.2"),
        .fail("\r\n", 500, "5.5.2"),
    ]

    @Test(arguments: lineHygiene) func bareLineEndsAndNUL(_ row: CommandFixture) { row.check() }

    // MARK: MAIL and RCPT paths (RFC 5321 4.1.2)

    static let paths: [CommandFixture] = [
        .ok("MAIL FROM:<sender@example.test>", mailFrom("sender", "example.test")),
        .ok("mail from:<sender@example.test>", mailFrom("sender", "example.test")),
        .ok("MAIL FROM:<>", .mail(.null, MailParameters())),
        .ok("MAIL FROM:<> SIZE=10", .mail(.null, mailParams(size: 10))),
        .ok("MAIL FROM: <sender@example.test>", mailFrom("sender", "example.test")),
        .ok("MAIL FROM:   <sender@example.test>", mailFrom("sender", "example.test")),
        .ok("MAIL  FROM:<sender@example.test>", mailFrom("sender", "example.test")),
        .ok("MAIL FROM:<sender@example.test> ", mailFrom("sender", "example.test")),
        .ok("MAIL FROM:sender@example.test", mailFrom("sender", "example.test")),
        .ok("MAIL FROM:sender@example.test SIZE=100", mailFrom("sender", "example.test", mailParams(size: 100))),
        .ok("RCPT TO:user@example.test", rcptTo("user", "example.test")),
        .ok("RCPT TO: <user@example.test>", rcptTo("user", "example.test")),
        .ok("MAIL FROM:<a.b-c+d@sub-1.example.test>", mailFrom("a.b-c+d", "sub-1.example.test")),
        .ok("MAIL FROM:<Sender@EXAMPLE.test>", mailFrom("Sender", "EXAMPLE.test")),

        // Quoted local parts: quoting is removed, escapes resolved.
        .ok(#"MAIL FROM:<"a b"@example.test>"#, mailFrom("a b", "example.test")),
        .ok(#"MAIL FROM:<"a\"b"@example.test>"#, mailFrom(#"a"b"#, "example.test")),
        .ok(#"MAIL FROM:<"a\\b"@example.test>"#, mailFrom(#"a\b"#, "example.test")),
        .ok(#"RCPT TO:<"user@other.test"@example.test>"#, rcptTo("user@other.test", "example.test")),
        .ok(#"RCPT TO:<"a..b"@example.test>"#, rcptTo("a..b", "example.test")),
        .fail(#"RCPT TO:<"a b@example.test>"#, 501, "5.1.3"),
        .fail("RCPT TO:<\"a\tb\"@example.test>", 501, "5.1.3"),
        .fail("RCPT TO:<\"a\\\u{01}b\"@example.test>", 501, "5.1.3"),

        // Address literals (RFC 5321 4.1.3).
        .ok("RCPT TO:<user@[192.0.2.1]>", rcptTo("user", "[192.0.2.1]")),
        .ok("RCPT TO:<user@[IPv6:2001:db8::1]>", rcptTo("user", "[IPv6:2001:db8::1]")),
        .ok("RCPT TO:<user@[ipv6:2001:DB8::1]>", rcptTo("user", "[ipv6:2001:DB8::1]")),
        .ok("RCPT TO:<user@[IPv6:::1]>", rcptTo("user", "[IPv6:::1]")),
        .ok("RCPT TO:<user@[IPv6:1:2:3:4:5:6:7:8]>", rcptTo("user", "[IPv6:1:2:3:4:5:6:7:8]")),
        .ok("RCPT TO:<user@[IPv6:::ffff:192.0.2.1]>", rcptTo("user", "[IPv6:::ffff:192.0.2.1]")),
        .ok("RCPT TO:<user@[IPv6:1:2:3:4:5:6:192.0.2.1]>", rcptTo("user", "[IPv6:1:2:3:4:5:6:192.0.2.1]")),
        .ok("RCPT TO:<user@[x-tag:some-value]>", rcptTo("user", "[x-tag:some-value]")),
        .fail("RCPT TO:<user@[192.0.2.256]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[192.0.2]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[192.0.2.1.5]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[192.0.2.1>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[IPv6:2001:db8::1::2]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[IPv6:12345::1]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[IPv6:gggg::1]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[IPv6:1:2:3:4:5:6:7:8:9]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[IPv6:1:2:3:4:5:6:7]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[IPv6:1:2:3:4:5:6:7:8::]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[IPv6::::1]>", 501, "5.1.3"),
        // A single colon at either end is not an IPv6 address (only "::" may stand at an end).
        .fail("RCPT TO:<user@[IPv6:1:2:3:4:5:6:7:]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[IPv6::1:2:3:4:5:6:7]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[x-tag:]>", 501, "5.1.3"),
        .fail("RCPT TO:<user@[-tag:v]>", 501, "5.1.3"),

        // Source routes are accepted and dropped (RFC 5321 4.1.1.3, appendix C).
        .ok("RCPT TO:<@a.test,@b.test:user@c.test>", rcptTo("user", "c.test")),
        .ok("RCPT TO:<@a.test:user@c.test>", rcptTo("user", "c.test")),
        .ok("MAIL FROM:<@a.test,@b.test:user@c.test>", mailFrom("user", "c.test")),
        .fail("RCPT TO:<@a.test,b.test:user@c.test>", 501, "5.1.3"),
        .fail("RCPT TO:<@a.test user@c.test>", 501, "5.1.3"),
        .fail("RCPT TO:<@a.test:>", 501, "5.1.3"),

        // Postmaster (RFC 5321 4.5.1).
        .ok("RCPT TO:<Postmaster>", .rcpt(.postmaster, [])),
        .ok("RCPT TO:<postmaster>", .rcpt(.postmaster, [])),
        .ok("RCPT TO:<POSTMASTER>", .rcpt(.postmaster, [])),
        .ok("RCPT TO:<Postmaster> NOTIFY=NEVER", .rcpt(.postmaster, [ESMTPParameter(keyword: "NOTIFY", value: "NEVER")])),
        .ok("RCPT TO:<Postmaster@example.test>", rcptTo("Postmaster", "example.test")),
        .fail("RCPT TO:<Postmaster >", 501, "5.1.3"),

        // Routing characters parse; refusing them is the relay policy's job.
        .ok("RCPT TO:<user%other.test@example.test>", rcptTo("user%other.test", "example.test")),
        .ok("RCPT TO:<other.test!user@example.test>", rcptTo("other.test!user", "example.test")),

        // Broken paths: MAIL answers 5.1.7 (bad sender), RCPT 5.1.3 (bad recipient).
        .fail("MAIL FROM:", 501, "5.5.4"),
        .fail("MAIL FROM", 501, "5.5.4"),
        .fail("MAIL", 501, "5.5.4"),
        .fail("MAIL FROM<sender@example.test>", 501, "5.5.4"),
        .fail("MAIL TO:<sender@example.test>", 501, "5.5.4"),
        .fail("RCPT FROM:<user@example.test>", 501, "5.5.4"),
        .fail("RCPT TO:", 501, "5.5.4"),
        .fail("RCPT", 501, "5.5.4"),
        .fail("MAIL FROM:<sender@example.test", 501, "5.1.7"),
        .fail("MAIL FROM:<sender@example.test>>", 501, "5.5.4"),
        .fail("MAIL FROM:<sender@example.test>x", 501, "5.5.4"),
        .fail("MAIL FROM:<sender@example.test>\tSIZE=10", 501, "5.5.4"),
        .fail("MAIL FROM:sender@example.test>", 501, "5.1.7"),
        .fail("MAIL FROM:<.a@example.test>", 501, "5.1.7"),
        .fail("MAIL FROM:<a.@example.test>", 501, "5.1.7"),
        .fail("MAIL FROM:<a..b@example.test>", 501, "5.1.7"),
        .fail("MAIL FROM:<a b@example.test>", 501, "5.1.7"),
        .fail("MAIL FROM:<@example.test>", 501, "5.1.7"),
        .fail("MAIL FROM:<sender>", 501, "5.1.7"),
        .fail("MAIL FROM:<sender@>", 501, "5.1.7"),
        .fail("MAIL FROM:<<>>", 501, "5.1.7"),
        .fail("MAIL FROM:<a@b@example.test>", 501, "5.1.7"),
        .fail("RCPT TO:<>", 501, "5.1.3"),
        .fail("RCPT TO:<user@-example.test>", 501, "5.1.3"),
        .fail("RCPT TO:<user@example-.test>", 501, "5.1.3"),
        .fail("RCPT TO:<user@example..test>", 501, "5.1.3"),
        .fail("RCPT TO:<user@example.test.>", 501, "5.1.3"),
        .fail("RCPT TO:<user@.example.test>", 501, "5.1.3"),
        .fail("RCPT TO:<user@exa_mple.test>", 501, "5.1.3"),
        .fail("RCPT TO:<user@example.test", 501, "5.1.3"),
    ]

    @Test(arguments: paths) func path(_ row: CommandFixture) { row.check() }

    // MARK: Length limits (RFC 5321 4.5.3.1)

    /// A domain of exactly `n` octets, in labels of at most 63.
    static func domain(_ n: Int) -> String {
        var labels: [String] = []
        var left = n
        var letter = UInt8(ascii: "a")
        while left > 0 {
            let take = min(63, left)
            labels.append(String(repeating: Character(UnicodeScalar(letter)), count: take))
            left -= take + 1  // the label and its dot
            letter += 1
            if left == 0 {  // a dot with nothing after it: shorten the last label and add a one-octet label
                labels[labels.count - 1].removeLast()
                labels.append("z")
            }
        }
        let d = labels.joined(separator: ".")
        precondition(d.utf8.count == n, "domain(\(n)) made \(d.utf8.count) octets")
        return d
    }

    static let local64 = String(repeating: "l", count: 64)
    static let local65 = String(repeating: "l", count: 65)
    /// Paths alone may be long here, so the domain limit is tested by itself.
    static let roomyPath: SMTPLimits = { var l = SMTPLimits(); l.path = 1000; return l }()

    static let limits: [CommandFixture] = [
        .ok("MAIL FROM:<\(local64)@example.test>", mailFrom(local64, "example.test")),
        .fail("MAIL FROM:<\(local65)@example.test>", 501, "5.1.7", text: "local part too long"),
        .ok("RCPT TO:<\(local64)@example.test>", rcptTo(local64, "example.test")),
        .fail("RCPT TO:<\(local65)@example.test>", 501, "5.1.3", text: "local part too long"),
        // A quoted local part counts as sent, quotes included.
        .ok("RCPT TO:<\"\(String(repeating: "q", count: 62))\"@example.test>", rcptTo(String(repeating: "q", count: 62), "example.test")),
        .fail("RCPT TO:<\"\(String(repeating: "q", count: 63))\"@example.test>", 501, "5.1.3", text: "local part too long"),

        .ok("RCPT TO:<u@\(domain(255))>", rcptTo("u", domain(255)), limits: roomyPath),
        .fail("RCPT TO:<u@\(domain(256))>", 501, "5.1.3", text: "domain too long", limits: roomyPath),
        .fail("MAIL FROM:<u@\(domain(256))>", 501, "5.1.7", text: "domain too long", limits: roomyPath),
        // With the default limits a 256-octet domain fails one way or another.
        .fail("RCPT TO:<u@\(domain(256))>", 501, "5.1.3"),

        // <64 @ 189> = 256 octets with the brackets; one more is too long.
        .ok("RCPT TO:<\(local64)@\(domain(189))>", rcptTo(local64, domain(189))),
        .fail("RCPT TO:<\(local64)@\(domain(190))>", 501, "5.1.3", text: "path too long"),
        .ok("MAIL FROM:<\(local64)@\(domain(189))>", mailFrom(local64, domain(189))),
        .fail("MAIL FROM:<\(local64)@\(domain(190))>", 501, "5.1.7", text: "path too long"),
        // A source route counts towards the path.
        .fail("RCPT TO:<@\(domain(20)):\(local64)@\(domain(170))>", 501, "5.1.3", text: "path too long"),
    ]

    @Test(arguments: limits) func lengthLimit(_ row: CommandFixture) { row.check() }

    @Test func domainHelperMakesExactLengths() {
        for n in [1, 62, 63, 64, 65, 127, 189, 190, 255, 256] {
            #expect(Self.domain(n).utf8.count == n)
        }
    }

    // MARK: SMTPUTF8 (RFC 6531)

    static let smtputf8: [CommandFixture] = [
        .fail("MAIL FROM:<pelé@example.test>", 553, "5.6.7"),
        .ok("MAIL FROM:<pelé@example.test> SMTPUTF8", mailFrom("pelé", "example.test", mailParams(smtputf8: true))),
        .ok("MAIL FROM:<pelé@example.test> smtputf8", mailFrom("pelé", "example.test", mailParams(smtputf8: true))),
        .fail("MAIL FROM:<user@bücher.example>", 553, "5.6.7"),
        .ok("MAIL FROM:<user@bücher.example> SMTPUTF8", mailFrom("user", "bücher.example", mailParams(smtputf8: true))),
        .ok("MAIL FROM:<\"pe lé\"@example.test> SMTPUTF8", mailFrom("pe lé", "example.test", mailParams(smtputf8: true))),
        .fail("MAIL FROM:<\"pe lé\"@example.test>", 553, "5.6.7"),
        .ok("MAIL FROM:<> SMTPUTF8", .mail(.null, mailParams(smtputf8: true))),
        .ok("MAIL FROM:<user@example.test> SMTPUTF8", mailFrom("user", "example.test", mailParams(smtputf8: true))),
        .fail("MAIL FROM:<user@example.test> SMTPUTF8=yes", 501, "5.5.4"),
        .fail(bytes: Array("MAIL FROM:<".utf8) + [0xE9] + Array("@example.test> SMTPUTF8".utf8), 501, "5.1.7", text: "UTF-8"),
        // RCPT may use UTF-8 only when the transaction's MAIL said SMTPUTF8.
        .fail("RCPT TO:<用户@example.test>", 553, "5.6.7"),
        .ok("RCPT TO:<用户@example.test>", rcptTo("用户", "example.test"), utf8: true),
        .fail("RCPT TO:<user@例子.测试>", 553, "5.6.7"),
        .ok("RCPT TO:<user@例子.测试>", rcptTo("user", "例子.测试"), utf8: true),
        .fail("RCPT TO:<\"用 户\"@example.test>", 553, "5.6.7"),
        .fail(bytes: Array("RCPT TO:<".utf8) + [0xFF] + Array("@example.test>".utf8), 501, "5.1.3", text: "UTF-8", utf8: true),
        .ok("RCPT TO:<user@example.test>", rcptTo("user", "example.test"), utf8: true),
    ]

    @Test(arguments: smtputf8) func utf8Addresses(_ row: CommandFixture) { row.check() }

    // MARK: ESMTP parameters (RFC 5321 4.1.2 esmtp-param; RFC 1870 SIZE; RFC 6152 BODY)

    static let from = "MAIL FROM:<a@example.test>"
    static let sender = mailbox("a", "example.test")

    static let parameters: [CommandFixture] = [
        .ok("\(from) SIZE=1000", .mail(.mailbox(sender), mailParams(size: 1000))),
        .ok("\(from) size=0", .mail(.mailbox(sender), mailParams(size: 0))),
        .ok("\(from) SIZE=99999999999999999999", .mail(.mailbox(sender), mailParams(size: UInt64.max))),
        .fail("\(from) SIZE=123456789012345678901", 501, "5.5.4"),
        .fail("\(from) SIZE", 501, "5.5.4"),
        .fail("\(from) SIZE=", 501, "5.5.4"),
        .fail("\(from) SIZE=12k", 501, "5.5.4"),
        .fail("\(from) SIZE=-1", 501, "5.5.4"),
        .ok("\(from) BODY=8BITMIME", .mail(.mailbox(sender), mailParams(body: .eightBitMIME))),
        .ok("\(from) BODY=7bit", .mail(.mailbox(sender), mailParams(body: .sevenBit))),
        .ok("\(from) body=8bitmime", .mail(.mailbox(sender), mailParams(body: .eightBitMIME))),
        .fail("\(from) BODY=BINARYMIME", 555, "5.5.4"),
        .fail("\(from) BODY=", 501, "5.5.4"),
        .fail("\(from) BODY", 501, "5.5.4"),
        .ok("\(from) SIZE=10 BODY=8BITMIME SMTPUTF8", .mail(.mailbox(sender), mailParams(size: 10, body: .eightBitMIME, smtputf8: true))),
        .ok("\(from)  SIZE=10   BODY=8BITMIME", .mail(.mailbox(sender), mailParams(size: 10, body: .eightBitMIME))),
        .ok("\(from) X-EXT=val", .mail(.mailbox(sender), mailParams(other: [ESMTPParameter(keyword: "X-EXT", value: "val")]))),
        .ok("\(from) x-flag", .mail(.mailbox(sender), mailParams(other: [ESMTPParameter(keyword: "X-FLAG")]))),
        .ok("\(from) X=välue", .mail(.mailbox(sender), mailParams(other: [ESMTPParameter(keyword: "X", value: "välue")]))),
        // Duplicates, compared case-insensitively.
        .fail("\(from) SIZE=1 SIZE=2", 501, "5.5.4"),
        .fail("\(from) SIZE=1 size=2", 501, "5.5.4"),
        .fail("\(from) BODY=8BITMIME BODY=7BIT", 501, "5.5.4"),
        .fail("\(from) SMTPUTF8 SMTPUTF8", 501, "5.5.4"),
        .fail("RCPT TO:<b@example.test> NOTIFY=NEVER notify=NEVER", 501, "5.5.4"),
        // Keyword and value syntax.
        .fail("\(from) -X=1", 501, "5.5.4"),
        .fail("\(from) X_Y=1", 501, "5.5.4"),
        .fail("\(from) X=a=b", 501, "5.5.4"),
        .fail("\(from) =1", 501, "5.5.4"),
        .fail("\(from) X=", 501, "5.5.4"),
        .fail("\(from) X=\u{7F}", 501, "5.5.4"),
        .ok(
            "RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.test",
            rcptTo("b", "example.test", [
                ESMTPParameter(keyword: "NOTIFY", value: "SUCCESS,FAILURE"),
                ESMTPParameter(keyword: "ORCPT", value: "rfc822;b@example.test"),
            ])
        ),
    ]

    @Test(arguments: parameters) func esmtpParameter(_ row: CommandFixture) { row.check() }

    // MARK: Odds and ends

    @Test func customLimitsApply() {
        var limits = SMTPLimits()
        limits.localPart = 4
        let parser = SMTPCommandParser(limits: limits)
        #expect(throws: SMTPCommandError.self) { try parser.parse(Array("RCPT TO:<abcde@example.test>".utf8)) }
        #expect((try? parser.parse(Array("RCPT TO:<abcd@example.test>".utf8))) == rcptTo("abcd", "example.test"))
    }

    @Test func verbNames() {
        let commands: [(SMTPCommand, String)] = [
            (.ehlo("x"), "EHLO"), (.helo("x"), "HELO"), (.mail(.null, MailParameters()), "MAIL"),
            (.rcpt(.postmaster, []), "RCPT"), (.data, "DATA"), (.bdat(size: 1, last: true), "BDAT"), (.rset, "RSET"),
            (.noop, "NOOP"), (.quit, "QUIT"), (.vrfy("x"), "VRFY"), (.expn("x"), "EXPN"), (.help(nil), "HELP"),
            (.starttls, "STARTTLS"), (.auth("x"), "AUTH"), (.etrn("x"), "ETRN"), (.turn, "TURN"),
        ]
        for (command, verb) in commands { #expect(command.verb == verb) }
    }

    @Test func parameterKeywordsAreUppercased() {
        let p = ESMTPParameter(keyword: "notify", value: "NEVER")
        #expect(p.keyword == "NOTIFY")
        #expect(p.description == "NOTIFY=NEVER")
        #expect(ESMTPParameter(keyword: "smtputf8").description == "SMTPUTF8")
    }
}
