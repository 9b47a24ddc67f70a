import SMTPCore
import SluicePipeline
import SluiceStageAPI
import Testing

/// Header and envelope edits with milter semantics (smfi_addheader, smfi_insheader, smfi_chgheader, ...).
@Suite("MessageDraft")
struct MessageDraftTests {
    let a = Mailbox(localPart: "a", domain: "example.test")
    let b = Mailbox(localPart: "b", domain: "example.test")

    func draft(_ headers: [(String, String)] = [("Received", " from x"), ("Subject", " hi"), ("X-Tag", " one"), ("x-tag", " two")]) -> MessageDraft {
        MessageDraft(
            headers: headers.map { HeaderField(name: $0.0, value: $0.1) },
            sender: .mailbox(Mailbox(localPart: "s", domain: "client.test")),
            recipients: [Recipient(a)]
        )
    }

    func names(_ d: MessageDraft) -> [String] { d.headers.map(\.description) }

    @Test func startsUnchanged() {
        let d = draft()
        #expect(!d.headersChanged)
        #expect(d.replacementBodyPath == nil)
        #expect(d.senderParameters.isEmpty)
    }

    @Test func addHeaderAppendsWithASpaceAfterTheColon() {
        var d = draft()
        d.apply(.addHeader(name: "X-New", value: "value"))
        d.apply(.addHeader(name: "X-Tab", value: "\tkept"))
        d.apply(.addHeader(name: "X-Space", value: " kept"))
        #expect(d.headers.suffix(3) == [
            HeaderField(name: "X-New", value: " value"), HeaderField(name: "X-Tab", value: "\tkept"), HeaderField(name: "X-Space", value: " kept"),
        ])
        #expect(d.headersChanged)
    }

    @Test func fieldEditsLandExactlyAsGiven() {
        var d = draft()
        d.apply(.addHeader(HeaderField(name: "X-Tight", value: "tight")))
        d.apply(.insertHeader(index: 0, HeaderField(name: "X-Top", value: "")))
        d.apply(.changeHeader(occurrence: 1, HeaderField(name: "subject", value: "\tno space")))
        #expect(names(d) == ["X-Top:", "Received: from x", "Subject:\tno space", "X-Tag: one", "x-tag: two", "X-Tight:tight"])
        #expect(d.headersChanged)
    }

    @Test func valueConstructorsPutTheSpaceInAndEmptyChangeIsADelete() {
        #expect(MessageEdit.addHeader(name: "X", value: "v") == .addHeader(HeaderField(name: "X", value: " v")))
        #expect(MessageEdit.insertHeader(index: 1, name: "X", value: " v") == .insertHeader(index: 1, HeaderField(name: "X", value: " v")))
        #expect(MessageEdit.changeHeader(name: "X", occurrence: 2, value: "v") == .changeHeader(occurrence: 2, HeaderField(name: "X", value: " v")))
        #expect(MessageEdit.changeHeader(name: "X", occurrence: 2, value: "") == .deleteHeader(name: "X", occurrence: 2))
    }

    @Test(arguments: [(0, 0), (2, 2), (4, 4), (99, 4), (-3, 0)])
    func insertHeaderPosition(_ index: Int, _ landed: Int) {
        var d = draft()
        d.apply(.insertHeader(index: index, name: "X-Ins", value: "v"))
        #expect(d.headers.count == 5)
        #expect(d.headers[landed] == HeaderField(name: "X-Ins", value: " v"))
    }

    @Test func changeHeaderByOccurrenceCaseInsensitively() {
        var d = draft()
        d.apply(.changeHeader(name: "X-TAG", occurrence: 2, value: "changed"))
        #expect(names(d) == ["Received: from x", "Subject: hi", "X-Tag: one", "x-tag: changed"])
        #expect(d.headersChanged)
    }

    @Test func changeHeaderThatDoesNotExistAddsIt() {
        var d = draft()
        d.apply(.changeHeader(name: "X-Tag", occurrence: 3, value: "third"))
        d.apply(.changeHeader(name: "X-Missing", occurrence: 1, value: "new"))
        #expect(names(d).suffix(2) == ["X-Tag: third", "X-Missing: new"])
    }

    @Test func changeHeaderToEmptyDeletesIt() {
        var d = draft()
        d.apply(.changeHeader(name: "x-tag", occurrence: 1, value: ""))
        #expect(names(d) == ["Received: from x", "Subject: hi", "x-tag: two"])
    }

    @Test func changeMissingHeaderToEmptyChangesNothing() {
        var d = draft()
        d.apply(.changeHeader(name: "X-Missing", occurrence: 1, value: ""))
        #expect(d.headers == draft().headers)
    }

    @Test func deleteHeader() {
        var d = draft()
        d.apply(.deleteHeader(name: "X-TAG", occurrence: 2))
        #expect(names(d) == ["Received: from x", "Subject: hi", "X-Tag: one"])
        #expect(d.headersChanged)
    }

    @Test(arguments: [0, -1, 3])
    func deleteHeaderThatDoesNotExist(_ occurrence: Int) {
        var d = draft()
        d.apply(.deleteHeader(name: "X-Tag", occurrence: occurrence))
        #expect(d.headers == draft().headers)
        #expect(!d.headersChanged)
    }

    @Test func recipients() {
        var d = draft()
        d.apply(.addRecipient(b, parameters: [ESMTPParameter(keyword: "NOTIFY", value: "NEVER")]))
        d.apply(.addRecipient(b, parameters: []))
        #expect(d.recipients == [Recipient(a), Recipient(b, parameters: [ESMTPParameter(keyword: "NOTIFY", value: "NEVER")])])
        d.apply(.deleteRecipient(Mailbox(localPart: "a", domain: "EXAMPLE.TEST")))
        #expect(d.recipients.map(\.mailbox) == [b])
        d.apply(.deleteRecipient(Mailbox(localPart: "B", domain: "example.test")))
        #expect(d.recipients.map(\.mailbox) == [b], "local parts are case-sensitive")
        #expect(!d.headersChanged, "envelope edits leave the header section alone")
    }

    /// Domains are case-insensitive (as `deleteRecipient` treats them): adding a recipient that is
    /// already there in another case must not deliver the message twice.
    @Test func addingAPresentRecipientInAnotherCaseDoesNotDuplicateIt() {
        var d = draft()
        d.apply(.addRecipient(Mailbox(localPart: "a", domain: "EXAMPLE.TEST"), parameters: []))
        #expect(d.recipients.count == 1, "\(d.recipients)")
    }

    @Test func changeSender() {
        var d = draft()
        d.apply(.changeSender(.null, parameters: [ESMTPParameter(keyword: "SIZE", value: "10")]))
        #expect(d.sender == .null)
        #expect(d.senderParameters == [ESMTPParameter(keyword: "SIZE", value: "10")])
    }

    @Test func replaceBody() {
        var d = draft()
        d.apply(.replaceBody(path: "/tmp/body"))
        d.apply(.replaceBody(path: "/tmp/body2"))
        #expect(d.replacementBodyPath == "/tmp/body2")
        #expect(!d.headersChanged)
    }

    @Test func editDescriptions() {
        #expect(MessageEdit.addHeader(name: "X", value: "v").description == "add header X")
        #expect(MessageEdit.insertHeader(index: 2, name: "X", value: "v").description == "insert header X at 2")
        #expect(MessageEdit.deleteHeader(name: "X", occurrence: 1).description == "delete header X[1]")
        #expect(MessageEdit.addRecipient(a, parameters: []).description == "add recipient <a@example.test>")
        #expect(MessageEdit.changeSender(.null, parameters: []).description == "change sender <>")
    }
}
