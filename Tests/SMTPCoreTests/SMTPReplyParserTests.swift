import SMTPCore
import Testing

@Suite("SMTPReplyParser")
struct SMTPReplyParserTests {
    func parse(_ text: String, maxLineLength: Int = 512) throws -> [SMTPReply] {
        var parser = SMTPReplyParser(maxLineLength: maxLineLength)
        parser.feed(Array(text.utf8))
        var replies: [SMTPReply] = []
        while let r = try parser.next() { replies.append(r) }
        return replies
    }

    @Test func singleAndMultiLine() throws {
        let replies = try parse("220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 SIZE 100\r\n")
        #expect(replies.count == 2)
        #expect(replies[0].code == 220 && replies[0].lines == ["mx ESMTP"])
        #expect(replies[1].lines == ["mx", "PIPELINING", "SIZE 100"])
    }

    @Test func enhancedCodesAreSplitOff() throws {
        let r = try parse("550-5.1.1 no such\r\n550 5.1.1 user\r\n")[0]
        #expect(r.enhancedCode == EnhancedStatusCode(5, 1, 1))
        #expect(r.lines == ["no such", "user"])
    }

    @Test func bareCodeAndBareLF() throws {
        let replies = try parse("250\r\n354 go\n")
        #expect(replies.map(\.code) == [250, 354])
    }

    @Test func needsMoreBytes() throws {
        var parser = SMTPReplyParser()
        parser.feed(Array("250-a\r\n250 b".utf8))
        #expect(try parser.next() == nil)
        parser.feed(Array("\r\n".utf8))
        #expect(try parser.next()?.lines == ["a", "b"])
    }

    @Test(arguments: [
        "garbage\r\n", "25 x\r\n", "250x\r\n", "650 what\r\n", "250-a\r\n251 b\r\n",
    ])
    func malformed(_ text: String) {
        #expect(throws: SMTPReplyParser.ParseError.self) { try parse(text) }
    }

    @Test func overLongLineFailsEvenWithoutLineEnd() {
        #expect(throws: SMTPReplyParser.ParseError.lineTooLong) { try parse("250 " + String(repeating: "x", count: 600)) }
        #expect(throws: SMTPReplyParser.ParseError.lineTooLong) { try parse("250 " + String(repeating: "x", count: 600) + "\r\n") }
    }

    @Test func endlessMultiLineReplyIsCut() {
        let text = String(repeating: "250-more\r\n", count: 150)
        #expect(throws: SMTPReplyParser.ParseError.tooManyLines) { try parse(text) }
    }
}
