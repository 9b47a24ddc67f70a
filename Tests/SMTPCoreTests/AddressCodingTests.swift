import Foundation
import SMTPCore
import Testing

@Suite("Address coding")
struct AddressCodingTests {
    static func json<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try JSONEncoder().encode(value), as: UTF8.self)
    }

    static func decode<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
        try JSONDecoder().decode(type, from: Data(text.utf8))
    }

    @Test func compactForms() throws {
        let m = Mailbox(localPart: "a b", domain: "Exämple.test")
        #expect(try Self.json(m) == #"["a b","Exämple.test"]"#)
        #expect(try Self.json(ReversePath.mailbox(m)) == #"["a b","Exämple.test"]"#)
        #expect(try Self.json(ReversePath.null) == "[]")
        #expect(try Self.decode(Mailbox.self, Self.json(m)) == m)
        #expect(try Self.decode(ReversePath.self, Self.json(ReversePath.mailbox(m))) == .mailbox(m))
        #expect(try Self.decode(ReversePath.self, "[]") == .null)
    }

    @Test func keyedFormsWrittenBeforeStillRead() throws {
        let m = Mailbox(localPart: "user", domain: "example.test")
        #expect(try Self.decode(Mailbox.self, #"{"domain":"example.test","localPart":"user"}"#) == m)
        #expect(try Self.decode(ReversePath.self, #"{"mailbox":{"_0":{"domain":"example.test","localPart":"user"}}}"#) == .mailbox(m))
        #expect(try Self.decode(ReversePath.self, #"{"null":{}}"#) == .null)
    }

    @Test func malformedFormsAreErrors() {
        #expect(throws: DecodingError.self) { try Self.decode(Mailbox.self, #"["only"]"#) }
        #expect(throws: DecodingError.self) { try Self.decode(ReversePath.self, #"{"other":{}}"#) }
        #expect(throws: DecodingError.self) { try Self.decode(Mailbox.self, "7") }
    }
}
