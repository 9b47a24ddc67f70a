import SMTPCore
import Testing

@Suite("SASL")
struct SASLTests {
    @Test(arguments: [
        ("", []), ("=", []), ("Zg==", Array("f".utf8)), ("Zm8=", Array("fo".utf8)), ("Zm9v", Array("foo".utf8)),
        ("AGFsaWNlAHNlY3JldA==", [0] + Array("alice".utf8) + [0] + Array("secret".utf8)),
    ] as [(String, [UInt8])])
    func decodes(_ text: String, _ bytes: [UInt8]) throws {
        #expect(try SASL.decodeBase64(Array(text.utf8)) == bytes)
    }

    @Test(arguments: ["Zg", "Zg=", "Z===", "Zm9v!", "Zg==Zg==", "Zm=v", " Zm9v", "Zm9v\r"])
    func refusesMalformedBase64(_ text: String) {
        #expect(throws: SASL.Malformed.self) { try SASL.decodeBase64(Array(text.utf8)) }
    }

    @Test func encodesAndRoundTrips() throws {
        #expect(SASL.encodeBase64(Array("Username:".utf8)) == "VXNlcm5hbWU6")
        #expect(SASL.encodeBase64(Array("Password:".utf8)) == "UGFzc3dvcmQ6")
        for n in 0..<40 {
            let bytes = (0..<n).map { UInt8(($0 * 37 + 11) & 0xFF) }
            #expect(try SASL.decodeBase64(Array(SASL.encodeBase64(bytes).utf8)) == bytes)
        }
    }

    @Test func plainMessages() throws {
        let c = try SASL.parsePlain([0] + Array("alice".utf8) + [0] + Array("pw".utf8))
        #expect(c == SASL.PlainCredentials(authorizationID: "", user: "alice", password: "pw"))
        #expect(try SASL.parsePlain(Array("bob".utf8) + [0] + Array("alice".utf8) + [0] + Array("pw".utf8)).authorizationID == "bob")
        for bad: [UInt8] in [[], [0, 0], Array("alice".utf8), [0] + Array("alice".utf8), [0, 0] + Array("pw".utf8),
                             [0] + Array("a".utf8) + [0], [0] + Array("a".utf8) + [0] + Array("b".utf8) + [0] + [0x41],
                             [0] + [0xFF, 0xFE] + [0] + Array("pw".utf8)] {
            #expect(throws: SASL.Malformed.self) { try SASL.parsePlain(bad) }
        }
    }
}
