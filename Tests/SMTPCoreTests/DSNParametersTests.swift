import SMTPCore
import Testing

@Suite("DSN parameters")
struct DSNParametersTests {
    @Test func xtextRoundTrip() {
        for text in ["plain", "a+b=c", "with space", "caf\u{e9}", ""] {
            let encoded = XText.encode(text)
            #expect(XText.isValid(encoded, utf8: false), "\(encoded)")
            #expect(XText.decode(encoded) == text)
        }
        #expect(XText.encode("a+b=c d") == "a+2Bb+3Dc+20d")
        #expect(!XText.isValid("a+2b", utf8: false))      // hex digits are uppercase
        #expect(!XText.isValid("a=b", utf8: false))
        #expect(!XText.isValid("caf\u{e9}", utf8: false))
        #expect(XText.isValid("caf\u{e9}", utf8: true))
    }

    @Test func notifyText() {
        #expect(DSNNotify(parsing: "delay,Success")?.text == "SUCCESS,DELAY")
        #expect(DSNNotify(parsing: "never") == .never)
        #expect(DSNNotify(parsing: "NEVER,FAILURE") == nil)
        #expect(DSNNotify(parsing: "FAILURE,,DELAY") == nil)
        #expect(RecipientDSN(parameters: []).events == [.failure, .delay])
    }

    @Test func mailParametersFromAList() throws {
        let p = try MailParameters([ESMTPParameter(keyword: "RET", value: "full"), ESMTPParameter(keyword: "ENVID", value: "x+2By")])
        #expect(p.ret == .full)
        #expect(p.envelopeID == "x+y")
        #expect(throws: SMTPCommandError.self) { try MailParameters([ESMTPParameter(keyword: "RET", value: "ALL")]) }
    }
}
