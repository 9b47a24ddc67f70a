import SluicePipeline
import SluiceStageAPI
import Testing

/// `HeaderSection.parse` over a table: what is a field, where the body starts, and whether the
/// section is complete or needs more bytes.
@Suite("HeaderSection")
struct HeaderSectionTests {
    struct Row: Sendable, CustomTestStringConvertible {
        var name: String
        var input: String
        var atEnd = false
        var fields: [HeaderField]
        var bodyOffset: Int
        var complete: Bool
        var testDescription: String { name + (atEnd ? " (at end)" : "") }
    }

    static func f(_ name: String, _ value: String) -> HeaderField { HeaderField(name: name, value: value) }

    static let rows: [Row] = [
        Row(name: "fields, blank line, body", input: "A: 1\r\nB: 2\r\n\r\nbody\r\n", fields: [f("A", " 1"), f("B", " 2")], bodyOffset: 14, complete: true),
        Row(name: "empty value", input: "A:\r\n\r\n", fields: [f("A", "")], bodyOffset: 6, complete: true),
        Row(name: "no space after the colon", input: "A:1\r\n\r\n", fields: [f("A", "1")], bodyOffset: 7, complete: true),
        Row(
            name: "folded field", input: "Subject: a\r\n b\r\n\tc\r\nX: y\r\n\r\n",
            fields: [f("Subject", " a\r\n b\r\n\tc"), f("X", " y")], bodyOffset: 28, complete: true
        ),
        Row(name: "no fields, body at once", input: "\r\nbody", fields: [], bodyOffset: 2, complete: true),
        Row(name: "no blank line: body starts at the first non-field line", input: "A: 1\r\nnot a field\r\n", fields: [f("A", " 1")], bodyOffset: 6, complete: true),
        Row(name: "space before the colon is not a field name", input: "Bad Name: x\r\n\r\n", fields: [], bodyOffset: 0, complete: true),
        Row(name: "empty field name", input: ": x\r\n\r\n", fields: [], bodyOffset: 0, complete: true),
        Row(name: "continuation line without a field", input: " x: y\r\n\r\n", fields: [], bodyOffset: 0, complete: true),
        Row(name: "field without CRLF: needs more bytes", input: "A: 1\r\nB: 2", fields: [f("A", " 1")], bodyOffset: 6, complete: false),
        Row(name: "a field may still be folded: needs more bytes", input: "A: 1\r\n", fields: [], bodyOffset: 0, complete: false),
        Row(name: "folded continuation without CRLF: needs more bytes", input: "A: 1\r\n b", fields: [], bodyOffset: 0, complete: false),
        Row(name: "nothing yet", input: "", fields: [], bodyOffset: 0, complete: false),
        Row(name: "the last field of a message", input: "A: 1\r\n", atEnd: true, fields: [f("A", " 1")], bodyOffset: 6, complete: true),
        Row(name: "an unterminated last line is body", input: "A: 1\r\nB: 2", atEnd: true, fields: [f("A", " 1")], bodyOffset: 6, complete: true),
        Row(name: "an empty message", input: "", atEnd: true, fields: [], bodyOffset: 0, complete: true),
        Row(name: "bare LF is not a line end", input: "A: 1\nB: 2\r\n\r\n", fields: [f("A", " 1\nB: 2")], bodyOffset: 13, complete: true),
    ]

    @Test(arguments: rows) func parse(_ row: Row) {
        let section = HeaderSection.parse(Array(row.input.utf8), atEnd: row.atEnd)
        #expect(section.fields == row.fields)
        #expect(section.bodyOffset == row.bodyOffset)
        #expect(section.complete == row.complete)
    }

    /// With `atEnd` the bytes are the whole message, so the section cannot continue past them.
    @Test(arguments: ["A: 1\r\n b", "A: 1\r\n b\r\n", "A: 1\r\n", "A: 1", "A: 1\r\nB: 2", ""])
    func atEndIsAlwaysComplete(_ input: String) {
        #expect(HeaderSection.parse(Array(input.utf8), atEnd: true).complete)
    }

    @Test func unfoldedValue() {
        #expect(HeaderField(name: "Subject", value: " a\r\n b\r\n\tc ").unfoldedValue == "a b\tc")
    }

    @Test func encodeThenParseRoundTrips() {
        let fields = [Self.f("Received", " from x\r\n\tby y"), Self.f("Subject", " hi"), Self.f("X-Empty", "")]
        let bytes = HeaderSection.encode(fields) + Array("body\r\n".utf8)
        let section = HeaderSection.parse(bytes)
        #expect(section.fields == fields)
        #expect(section.complete)
        #expect(Array(bytes[section.bodyOffset...]) == Array("body\r\n".utf8))
    }

    @Test func encodeEndsWithTheBlankLine() {
        #expect(String(decoding: HeaderSection.encode([Self.f("A", " 1")]), as: UTF8.self) == "A: 1\r\n\r\n")
        #expect(HeaderSection.encode([]) == [0x0D, 0x0A])
    }

    @Test func messageViewValues() {
        let view = MessageView(headers: [Self.f("X-A", " 1"), Self.f("x-a", " 2\r\n 3"), Self.f("B", " 4")], body: MessageBody(bytes: []), receivedSize: 0)
        #expect(view.values(of: "X-A") == ["1", "2 3"])
        #expect(view.values(of: "missing").isEmpty)
    }
}
