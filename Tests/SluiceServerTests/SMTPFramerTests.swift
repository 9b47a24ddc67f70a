import NIOCore
import SMTPCore
import SluiceServer
import Testing

@Suite("SMTPFramer")
struct SMTPFramerTests {
    static let n510 = String(repeating: "N", count: 510)

    // MARK: Command lines: only CRLF ends one; an over-long one is dropped and reported once

    static let commandRows: [FramerFixture] = [
        FramerFixture("two commands", "EHLO x\r\nMAIL FROM:<a@b.test>\r\n", [.cmd("EHLO x"), .cmd("MAIL FROM:<a@b.test>")]),
        FramerFixture("no CRLF yet: needs more bytes", "NOOP", []),
        FramerFixture("CR without LF: needs more bytes", "NOOP\r", []),
        FramerFixture("empty input", "", []),
        FramerFixture("a command, then part of the next", "NOOP\r\nRS", [.cmd("NOOP")]),
        FramerFixture("bare LF does not end a command", "NOOP\nQUIT\r\n", [.cmd("NOOP\nQUIT")]),
        FramerFixture("bare CR does not end a command", "NOOP\rQUIT\r\n", [.cmd("NOOP\rQUIT")]),
        FramerFixture("LF CR is not CRLF", "NOOP\n\rQUIT\r\n", [.cmd("NOOP\n\rQUIT")]),
        FramerFixture("CR CR LF ends at the second CR", "NOOP\r\r\n", [.cmd("NOOP\r")]),
        FramerFixture("empty line", "\r\n", [.cmd("")]),
        FramerFixture("NUL is passed to the parser", "NO\0OP\r\n", [.command(Array("NO\0OP".utf8))]),
        FramerFixture("line of exactly the limit", n510 + "\r\n", [.cmd(n510)]),
        FramerFixture("one octet over the limit", n510 + "N\r\nNOOP\r\n", [.tooLong, .cmd("NOOP")]),
        FramerFixture("far over the limit", String(repeating: "A", count: 2000) + "\r\nNOOP\r\n", [.tooLong, .cmd("NOOP")]),
        FramerFixture("over the limit and unfinished: needs more bytes", String(repeating: "A", count: 600), []),
        FramerFixture(
            "two over-long lines in a row",
            String(repeating: "A", count: 600) + "\r\n" + String(repeating: "B", count: 700) + "\r\nQUIT\r\n",
            [.tooLong, .tooLong, .cmd("QUIT")]
        ),
        FramerFixture(
            "bare LF inside an over-long line does not end it",
            String(repeating: "A", count: 300) + "\n" + String(repeating: "A", count: 300) + "\r\nNOOP\r\n",
            [.tooLong, .cmd("NOOP")]
        ),
        FramerFixture(
            "over-long line with a bare CR right before its end",
            String(repeating: "A", count: 600) + "\r\r\nNOOP\r\n",
            [.tooLong, .cmd("NOOP")]
        ),
        FramerFixture(
            "a larger configured limit",
            String(repeating: "N", count: 998) + "\r\n",
            [.cmd(String(repeating: "N", count: 998))], commandLineLimit: 1000
        ),
    ]

    @Test(arguments: commandRows) func commands(_ row: FramerFixture) { row.check() }

    // MARK: DATA: dot-unstuffing, and only CRLF.CRLF ends it

    static let dataRows: [FramerFixture] = [
        FramerFixture(
            "a message, then the next command",
            "DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
            [.cmd("DATA"), .data("Subject: x\r\n\r\nbody\r\n"), .dataEnd(clean), .cmd("QUIT")]
        ),
        FramerFixture("an empty message", "DATA\r\n.\r\nQUIT\r\n", [.cmd("DATA"), .dataEnd(clean), .cmd("QUIT")]),
        FramerFixture(
            "dot-unstuffing",
            "DATA\r\n..leading dot\r\n...\r\n.x\r\nmid.dot\r\n. \r\n.\r\n",
            [.cmd("DATA"), .data(".leading dot\r\n..\r\nx\r\nmid.dot\r\n \r\n"), .dataEnd(clean)]
        ),
        FramerFixture("commands inside data are data", "DATA\r\nQUIT\r\nRSET\r\n.\r\n", [.cmd("DATA"), .data("QUIT\r\nRSET\r\n"), .dataEnd(clean)]),
        FramerFixture("data without its end: needs more bytes", "DATA\r\nbody\r\n", [.cmd("DATA"), .data("body\r\n")]),
        FramerFixture("end marker cut after the dot", "DATA\r\nbody\r\n.", [.cmd("DATA"), .data("body\r\n")]),
        FramerFixture("end marker cut after the CR", "DATA\r\nbody\r\n.\r", [.cmd("DATA"), .data("body\r\n")]),
        FramerFixture("a CR at the end waits for its LF", "DATA\r\nbody\r", [.cmd("DATA"), .data("body")]),
        FramerFixture(
            "the flags start afresh with each message",
            "DATA\r\na\nb\r\n.\r\nDATA\r\nc\r\n.\r\n",
            [.cmd("DATA"), .data("a\nb\r\n"), .dataEnd(flags(bareLF: true)), .cmd("DATA"), .data("c\r\n"), .dataEnd(clean)]
        ),
        FramerFixture("NUL in data", "DATA\r\na\0b\r\n.\r\n", [.cmd("DATA"), .data("a\0b\r\n"), .dataEnd(flags(nul: true))]),
        FramerFixture(
            "8-bit data passes unchanged",
            [UInt8]("DATA\r\n".utf8) + [0xC3, 0xA9, 0xFF, 0x80] + Array("\r\n.\r\n".utf8),
            [.cmd("DATA"), .data([0xC3, 0xA9, 0xFF, 0x80, 0x0D, 0x0A]), .dataEnd(clean)]
        ),
    ]

    @Test(arguments: dataRows) func data(_ row: FramerFixture) { row.check() }

    // MARK: SMTP smuggling: none of these end the data; each is flagged; the real CRLF.CRLF does end it

    static let smuggled = "MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nsmuggled\r\n"

    /// "first body" + variant + smuggled commands + the one real end of data.
    static func smuggling(_ name: String, _ variant: String, data: String, _ f: MessageDataFlags, sourceLocation: SourceLocation = #_sourceLocation) -> FramerFixture {
        FramerFixture(
            name, "DATA\r\nfirst body" + variant + smuggled + ".\r\nNOOP\r\n",
            [.cmd("DATA"), .data(data + smuggled), .dataEnd(f), .cmd("NOOP")], sourceLocation: sourceLocation
        )
    }

    static let smugglingRows: [FramerFixture] = [
        smuggling("\\n.\\n", "\n.\n", data: "first body\n.\n", flags(bareLF: true)),
        smuggling("\\r.\\r", "\r.\r", data: "first body\r.\r", flags(bareCR: true)),
        smuggling("\\n.\\r\\n", "\n.\r\n", data: "first body\n.\r\n", flags(bareLF: true)),
        smuggling("\\r\\n.\\n", "\r\n.\n", data: "first body\r\n\n", flags(bareLF: true)),
        smuggling("\\r\\n.\\r", "\r\n.\r", data: "first body\r\n\r", flags(bareCR: true)),
        smuggling("\\r.\\r\\n", "\r.\r\n", data: "first body\r.\r\n", flags(bareCR: true)),
        smuggling("\\r\\n\\0.\\r\\n", "\r\n\0.\r\n", data: "first body\r\n\0.\r\n", flags(nul: true)),
        smuggling("\\r\\n.\\0\\r\\n", "\r\n.\0\r\n", data: "first body\r\n\0\r\n", flags(nul: true)),
        smuggling("\\r\\r\\n.\\r\\r\\n", "\r\r\n.\r\r\n", data: "first body\r\r\n\r\r\n", flags(bareCR: true)),
        smuggling("bare \\n", "\n", data: "first body\n", flags(bareLF: true)),
        smuggling("bare \\r", "\r", data: "first body\r", flags(bareCR: true)),
        FramerFixture(
            ".\\n at the start of data",
            "DATA\r\n.\n" + smuggled + ".\r\nNOOP\r\n",
            [.cmd("DATA"), .data("\n" + smuggled), .dataEnd(flags(bareLF: true)), .cmd("NOOP")]
        ),
    ]

    @Test(arguments: smugglingRows) func smuggling(_ row: FramerFixture) { row.check() }

    // MARK: Text line length (RFC 5321 4.5.3.1.6: 1000 octets with the CRLF)

    static func line(_ n: Int) -> String { String(repeating: "x", count: n) }

    static let lineRows: [FramerFixture] = [
        FramerFixture("998 + CRLF is fine", "DATA\r\n" + line(998) + "\r\n.\r\n", [.cmd("DATA"), .data(line(998) + "\r\n"), .dataEnd(clean)]),
        FramerFixture("999 + CRLF is too long", "DATA\r\n" + line(999) + "\r\n.\r\n", [.cmd("DATA"), .data(line(999) + "\r\n"), .dataEnd(flags(longLine: true))]),
        FramerFixture(
            "a long line among short ones",
            "DATA\r\nshort\r\n" + line(1500) + "\r\nshort\r\n.\r\n",
            [.cmd("DATA"), .data("short\r\n" + line(1500) + "\r\nshort\r\n"), .dataEnd(flags(longLine: true))]
        ),
        // "not counting the leading dot duplicated for transparency" (RFC 5321 4.5.3.1.6)
        FramerFixture(
            "a 1000-octet line starting with a dot, sent dot-stuffed",
            "DATA\r\n.." + line(997) + "\r\n.\r\n",
            [.cmd("DATA"), .data("." + line(997) + "\r\n"), .dataEnd(clean)]
        ),
        FramerFixture(
            "a 1001-octet line starting with a dot, sent dot-stuffed",
            "DATA\r\n.." + line(998) + "\r\n.\r\n",
            [.cmd("DATA"), .data("." + line(998) + "\r\n"), .dataEnd(flags(longLine: true))]
        ),
        FramerFixture(
            "a larger configured limit",
            "DATA\r\n" + line(1500) + "\r\n.\r\n",
            [.cmd("DATA"), .data(line(1500) + "\r\n"), .dataEnd(clean)], textLineLimit: 2000
        ),
    ]

    @Test(arguments: lineRows) func lineLength(_ row: FramerFixture) { row.check() }

    // MARK: BDAT (RFC 3030): octets as sent, no dot handling, CRLF may straddle chunks

    static let bdatRows: [FramerFixture] = [
        FramerFixture(
            "two chunks, then a command",
            "BDAT 5\r\nhelloBDAT 3 LAST\r\nxyzQUIT\r\n",
            [.cmd("BDAT 5"), .bdat("hello"), .bdatEnd(nil), .cmd("BDAT 3 LAST"), .bdat("xyz"), .bdatEnd(clean), .cmd("QUIT")]
        ),
        FramerFixture("an empty LAST chunk", "BDAT 0 LAST\r\nQUIT\r\n", [.cmd("BDAT 0 LAST"), .bdatEnd(clean), .cmd("QUIT")]),
        FramerFixture("chunk not complete: needs more bytes", "BDAT 10\r\nabc", [.cmd("BDAT 10"), .bdat("abc")]),
        FramerFixture(
            "commands inside a chunk are data",
            "BDAT 6\r\nQUIT\r\nNOOP\r\n",
            [.cmd("BDAT 6"), .bdat("QUIT\r\n"), .bdatEnd(nil), .cmd("NOOP")]
        ),
        FramerFixture(
            "no dot-unstuffing and no end marker",
            "BDAT 7 LAST\r\n.\r\n..\r\nQUIT\r\n",
            [.cmd("BDAT 7 LAST"), .bdat(".\r\n..\r\n"), .bdatEnd(clean), .cmd("QUIT")]
        ),
        FramerFixture(
            "CRLF split across chunks is a line end",
            "BDAT 3\r\nab\rBDAT 3 LAST\r\n\ncd",
            [.cmd("BDAT 3"), .bdat("ab\r"), .bdatEnd(nil), .cmd("BDAT 3 LAST"), .bdat("\ncd"), .bdatEnd(clean)]
        ),
        FramerFixture(
            "CR at a chunk end followed by something else is bare",
            "BDAT 3\r\nab\rBDAT 3 LAST\r\nxcd",
            [.cmd("BDAT 3"), .bdat("ab\r"), .bdatEnd(nil), .cmd("BDAT 3 LAST"), .bdat("xcd"), .bdatEnd(flags(bareCR: true))]
        ),
        FramerFixture("a CR dangling at the very end is bare", "BDAT 3 LAST\r\nab\r", [.cmd("BDAT 3 LAST"), .bdat("ab\r"), .bdatEnd(flags(bareCR: true))]),
        FramerFixture(
            "bare LF and NUL",
            "BDAT 6 LAST\r\na\nb\0\r\n",
            [.cmd("BDAT 6 LAST"), .bdat("a\nb\0\r\n"), .bdatEnd(flags(bareLF: true, nul: true))]
        ),
        FramerFixture(
            "flags of an earlier chunk stay with the message",
            "BDAT 2\r\na\nBDAT 3 LAST\r\nb\r\n",
            [.cmd("BDAT 2"), .bdat("a\n"), .bdatEnd(nil), .cmd("BDAT 3 LAST"), .bdat("b\r\n"), .bdatEnd(flags(bareLF: true))]
        ),
        FramerFixture(
            "998 + CRLF is fine",
            "BDAT 1000 LAST\r\n" + line(998) + "\r\n",
            [.cmd("BDAT 1000 LAST"), .bdat(line(998) + "\r\n"), .bdatEnd(clean)]
        ),
        FramerFixture(
            "999 + CRLF is too long",
            "BDAT 1001 LAST\r\n" + line(999) + "\r\n",
            [.cmd("BDAT 1001 LAST"), .bdat(line(999) + "\r\n"), .bdatEnd(flags(longLine: true))]
        ),
        FramerFixture(
            "a long line across chunks",
            "BDAT 600\r\n" + line(600) + "BDAT 402 LAST\r\n" + line(400) + "\r\n",
            [.cmd("BDAT 600"), .bdat(line(600)), .bdatEnd(nil), .cmd("BDAT 402 LAST"), .bdat(line(400) + "\r\n"), .bdatEnd(flags(longLine: true))]
        ),
    ]

    @Test(arguments: bdatRows) func bdat(_ row: FramerFixture) { row.check() }

    // MARK: Read by read

    @Test func endMarkerSplitAcrossReads() {
        var d = FramerDriver()
        d.feed("DATA\r\nbody\r")
        #expect(d.frames == [.cmd("DATA"), .data("body")])
        d.feed("\n.")
        #expect(d.frames == [.cmd("DATA"), .data("body\r\n")])
        d.feed("\r")
        #expect(d.frames == [.cmd("DATA"), .data("body\r\n")])
        #expect(d.framer.isReadingData)
        d.feed("\nNOOP\r\n")
        #expect(d.frames == [.cmd("DATA"), .data("body\r\n"), .dataEnd(clean), .cmd("NOOP")])
        #expect(d.framer.isReadingCommands)
    }

    @Test func overLongLineIsDroppedAsItArrives() {
        var d = FramerDriver()
        for _ in 0..<100 { d.feed(String(repeating: "A", count: 1000)) }
        #expect(d.frames.isEmpty)
        #expect(d.buffer.readableBytes <= 1, "the framer keeps at most a trailing CR of a line it is discarding")
        d.feed("\r\nNOOP\r\n")
        #expect(d.frames == [.tooLong, .cmd("NOOP")])
    }

    @Test func modes() {
        var framer = SMTPFramer()
        #expect(framer.isReadingCommands)
        #expect(!framer.isReadingData)
        framer.beginData()
        #expect(framer.isReadingData)
        var buffer = ByteBuffer(string: ".\r\n")
        #expect(framer.next(&buffer) == .dataEnd)
        #expect(framer.isReadingCommands)
        framer.beginBDAT(size: 0)
        #expect(framer.isReadingData)
        #expect(framer.next(&buffer) == .bdatEnd)
        #expect(framer.isReadingCommands)
    }

    @Test func dataChunkBeforeEndIsHandedOutFirst() {
        var framer = SMTPFramer()
        framer.beginData()
        var buffer = ByteBuffer(string: "abc\r\n.\r\nNOOP\r\n")
        #expect(framer.next(&buffer) == .dataChunk(ByteBuffer(string: "abc\r\n")))
        #expect(framer.next(&buffer) == .dataEnd)
        #expect(framer.next(&buffer) == .command(Array("NOOP".utf8)))
        #expect(framer.next(&buffer) == nil)
    }

    @Test func startMessageClearsFlags() {
        var d = FramerDriver()
        d.feed("DATA\r\na\nb\r\n.\r\n")
        #expect(!d.framer.flags.isClean)
        d.framer.startMessage()
        #expect(d.framer.flags.isClean)
    }
}
