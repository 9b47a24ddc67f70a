import SMTPCore
import SluiceStageAPI
import Testing
@testable import SluiceMilterServer

/// `xxfi_envfrom` / `xxfi_envrcpt` argument vectors read with the SMTP grammar.
@Suite("MilterEnvelope")
struct MilterEnvelopeTests {
    let sender = Mailbox(localPart: "user", domain: "example.org")

    @Test(arguments: [["<user@example.org>"], ["user@example.org"]])
    func senderWithOrWithoutBrackets(_ argv: [String]) throws {
        let s = try MilterEnvelope.sender(argv).get()
        #expect(s.path == .mailbox(sender))
        #expect(s.parameters == MailParameters())
        #expect(!s.droppedParameters)
    }

    @Test func nullSender() throws {
        #expect(try MilterEnvelope.sender(["<>"]).get().path == .null)
    }

    @Test func senderParameters() throws {
        let s = try MilterEnvelope.sender(["<user@example.org>", "SIZE=12345", "BODY=8BITMIME", "RET=HDRS", "ENVID=abc", "X-OTHER=1"]).get()
        #expect(s.parameters.size == 12345)
        #expect(s.parameters.body == .eightBitMIME)
        #expect(s.parameters.ret == .headers)
        #expect(s.parameters.envelopeID == "abc")
        #expect(s.parameters.other == [ESMTPParameter(keyword: "X-OTHER", value: "1")])
        #expect(!s.droppedParameters)
    }

    @Test func smtputf8AllowsANonASCIIAddress() throws {
        let s = try MilterEnvelope.sender(["<jösé@exämple.org>", "SMTPUTF8"]).get()
        #expect(s.path.mailbox?.localPart == "jösé")
        #expect(s.parameters.smtputf8)
        #expect(throws: SMTPReply.self) { try MilterEnvelope.sender(["<jösé@exämple.org>"]).get() }
    }

    @Test func parametersThatDoNotParseAreDroppedNotTheSender() throws {
        let s = try MilterEnvelope.sender(["<user@example.org>", "SIZE=big", "X=a b"]).get()
        #expect(s.path == .mailbox(sender))
        #expect(s.parameters == MailParameters())
        #expect(s.droppedParameters)
    }

    @Test(arguments: [[], ["<user@>"], ["<@example.org>"], ["<user example.org>"], ["<user@example.org"], ["<a@b>junk"]])
    func badSenderGetsTheGrammarsReply(_ argv: [String]) {
        switch MilterEnvelope.sender(argv) {
        case .success(let s): Issue.record("parsed \(argv) as \(s)")
        case .failure(let reply):
            #expect(reply.code >= 500 && reply.code < 600)
            #expect(reply.enhancedCode?.statusClass == 5)
        }
    }

    @Test func recipientWithParameters() throws {
        let r = try MilterEnvelope.recipient(["<rcpt@example.test>", "NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;rcpt@example.test"],
                                             utf8: false, postmasterDomain: "mx.example.test").get()
        #expect(r.recipient.mailbox == Mailbox(localPart: "rcpt", domain: "example.test"))
        #expect(r.recipient.parameters == [
            ESMTPParameter(keyword: "NOTIFY", value: "SUCCESS,FAILURE"), ESMTPParameter(keyword: "ORCPT", value: "rfc822;rcpt@example.test"),
        ])
    }

    @Test func barePostmasterIsTheMTAsPostmaster() throws {
        let r = try MilterEnvelope.recipient(["<Postmaster>"], utf8: false, postmasterDomain: "mx.example.test").get()
        #expect(r.recipient.mailbox == Mailbox(localPart: "postmaster", domain: "mx.example.test"))
    }

    @Test func nonASCIIRecipientNeedsSMTPUTF8FromMail() throws {
        #expect(throws: SMTPReply.self) {
            try MilterEnvelope.recipient(["<jö@example.test>"], utf8: false, postmasterDomain: "x").get()
        }
        #expect(try MilterEnvelope.recipient(["<jö@example.test>"], utf8: true, postmasterDomain: "x").get().recipient.mailbox.localPart == "jö")
    }

    @Test(arguments: [[], ["<>"], ["<no-domain>"], ["<a@b@c>"]])
    func badRecipient(_ argv: [String]) {
        #expect(throws: SMTPReply.self) { try MilterEnvelope.recipient(argv, utf8: false, postmasterDomain: "x").get() }
    }

    @Test func parameterText() {
        #expect(MilterEnvelope.text([]) == nil)
        #expect(MilterEnvelope.text([ESMTPParameter(keyword: "notify", value: "NEVER"), ESMTPParameter(keyword: "X")]) == "NOTIFY=NEVER X")
    }
}
