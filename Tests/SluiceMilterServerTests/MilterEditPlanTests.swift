import SMTPCore
import SluicePipeline
import SluiceStageAPI
import Testing
@testable import SluiceMilterServer

/// The end-of-message plan: from the message the MTA has and the draft the stages left, the
/// milter modifications that turn one into the other when the MTA applies them in order.
@Suite("MilterEditPlan")
struct MilterEditPlanTests {
    static let a = Mailbox(localPart: "a", domain: "example.test")
    static let b = Mailbox(localPart: "b", domain: "example.test")
    static let sender = ReversePath.mailbox(Mailbox(localPart: "s", domain: "client.test"))

    static let headers: [HeaderField] = [
        HeaderField(name: "Received", value: " from client.test by mta"),
        HeaderField(name: "From", value: " <s@client.test>"),
        HeaderField(name: "Subject", value: " hello"),
        HeaderField(name: "X-Tag", value: " one"),
        HeaderField(name: "x-tag", value: " two"),
        HeaderField(name: "Authentication-Results", value: " mx.example.test; spf=pass (forged)"),
    ]

    static let recipients = [
        MilterEditPlan.EnvelopeRecipient(recipient: Recipient(a), argument: "<a@example.test>"),
        MilterEditPlan.EnvelopeRecipient(recipient: Recipient(b, parameters: [ESMTPParameter(keyword: "NOTIFY", value: "NEVER")]), argument: "<b@example.test>"),
    ]

    func draft() -> MessageDraft {
        MessageDraft(headers: Self.headers, sender: Self.sender, recipients: Self.recipients.map(\.recipient))
    }

    func plan(_ d: MessageDraft) -> [MilterOperation] {
        MilterEditPlan.operations(headers: Self.headers, sender: Self.sender, recipients: Self.recipients, draft: d)
    }

    /// The MTA's side: each operation applied to the header section as the ones before left it,
    /// with libmilter's semantics (insert index 0 = top; change/delete by 1-based rank per name).
    static func applied(_ operations: [MilterOperation], to start: [HeaderField]) -> [HeaderField] {
        var h = start
        func index(_ name: String, _ occurrence: Int) -> Int? {
            h.indices.filter { h[$0].name.caseInsensitiveEquals(name) }.dropFirst(occurrence - 1).first
        }
        for op in operations {
            switch op {
            case .insertHeader(let i, let f):
                #expect(i >= 0 && i < h.count, "an insert at the end should be an append")
                h.insert(f, at: min(i, h.count))
            case .addHeader(let f): h.append(f)
            case .changeHeader(let o, let f):
                guard let i = index(f.name, o) else { Issue.record("no \(f.name)[\(o)] to change in \(h)"); continue }
                h[i] = f
            case .deleteHeader(let n, let o):
                guard let i = index(n, o) else { Issue.record("no \(n)[\(o)] to delete in \(h)"); continue }
                h.remove(at: i)
            default: continue
            }
        }
        return h
    }

    @Test func nothingChangedNothingToDo() {
        #expect(plan(draft()).isEmpty)
    }

    @Test func recordedFieldsGoOnTopInOrder() {
        var d = draft()
        let results = ResultRecorder()
        results.prepend(.make(name: "Received-SPF", value: "pass (mx.example.test: domain of s@client.test designates 127.0.0.1)"))
        results.record(AuthenticationResult(method: "spf", result: "pass", properties: [.init("smtp.mailfrom", "s@client.test")]))
        d.prependRecorded(results, hostname: "mx.example.test")
        let ops = plan(d)
        #expect(ops == [.insertHeader(index: 0, d.headers[0]), .insertHeader(index: 1, d.headers[1])])
        #expect(d.headers[0].name == "Authentication-Results" && d.headers[1].name == "Received-SPF")
        #expect(Self.applied(ops, to: Self.headers) == d.headers)
    }

    @Test func everyHeaderEditMapsToItsOperation() {
        var d = draft()
        d.apply(.addHeader(name: "X-Scanned-By", value: "sluice"))
        d.apply(.changeHeader(name: "X-TAG", occurrence: 2, value: "changed"))
        d.apply(.deleteHeader(name: "Subject", occurrence: 1))
        d.apply(.insertHeader(index: 1, name: "X-Inserted", value: "here"))
        let ops = plan(d)
        #expect(ops == [
            .insertHeader(index: 1, HeaderField(name: "X-Inserted", value: " here")),
            .deleteHeader(name: "Subject", occurrence: 1),
            .changeHeader(occurrence: 2, HeaderField(name: "x-tag", value: " changed")),
            .addHeader(HeaderField(name: "X-Scanned-By", value: " sluice")),
        ])
        #expect(Self.applied(ops, to: Self.headers) == d.headers)
    }

    @Test func aSpoofedAuthenticationResultsFieldIsDeleted() {
        var d = draft()
        for edit in AuthenticationResultsHeader.removeSpoofed(from: Self.headers, hostname: "mx.example.test") { d.apply(edit) }
        #expect(plan(d) == [.deleteHeader(name: "Authentication-Results", occurrence: 1)])
    }

    @Test func deletingTheFirstOfTwoRenumbersTheSecond() {
        var d = draft()
        d.apply(.deleteHeader(name: "X-Tag", occurrence: 1))
        d.apply(.changeHeader(name: "X-Tag", occurrence: 1, value: "was two"))
        let ops = plan(d)
        #expect(Self.applied(ops, to: Self.headers) == d.headers)
        #expect(ops.count == 2)
    }

    @Test func editsThatCancelOutLeaveNothing() {
        var d = draft()
        d.apply(.addHeader(name: "X-Temp", value: "1"))
        d.apply(.deleteHeader(name: "X-Temp", occurrence: 1))
        d.apply(.changeHeader(name: "Subject", occurrence: 1, value: "other"))
        d.apply(.changeHeader(name: "Subject", occurrence: 1, value: "hello"))
        #expect(plan(d).isEmpty)
    }

    @Test func envelopeEdits() {
        var d = draft()
        let c = Mailbox(localPart: "c", domain: "example.test")
        d.apply(.deleteRecipient(Mailbox(localPart: "a", domain: "EXAMPLE.test")))
        d.apply(.addRecipient(c, parameters: [ESMTPParameter(keyword: "NOTIFY", value: "NEVER")]))
        d.apply(.addRecipient(Mailbox(localPart: "d", domain: "example.test"), parameters: []))
        d.apply(.changeSender(.mailbox(Mailbox(localPart: "bounces", domain: "example.test")), parameters: [ESMTPParameter(keyword: "BODY", value: "8BITMIME")]))
        #expect(plan(d) == [
            .changeSender(path: "<bounces@example.test>", parameters: "BODY=8BITMIME"),
            .deleteRecipient("<a@example.test>"),
            .addRecipient(path: "<c@example.test>", parameters: "NOTIFY=NEVER"),
            .addRecipient(path: "<d@example.test>", parameters: nil),
        ])
    }

    @Test func changingTheSenderToTheNullSender() {
        var d = draft()
        d.apply(.changeSender(.null, parameters: []))
        #expect(plan(d) == [.changeSender(path: "<>", parameters: nil)])
    }

    @Test func replacedBody() {
        var d = draft()
        d.apply(.replaceBody(path: "/tmp/first"))
        d.apply(.replaceBody(path: "/tmp/second"))
        #expect(plan(d) == [.replaceBody(path: "/tmp/second")])
    }

    @Test func operationsNeedTheirActions() {
        let f = HeaderField(name: "X", value: " v")
        #expect(MilterOperation.insertHeader(index: 0, f).action == .addHeaders)
        #expect(MilterOperation.addHeader(f).action == .addHeaders)
        #expect(MilterOperation.changeHeader(occurrence: 1, f).action == .changeHeaders)
        #expect(MilterOperation.deleteHeader(name: "X", occurrence: 1).action == .changeHeaders)
        #expect(MilterOperation.changeSender(path: "<>", parameters: nil).action == .changeSender)
        #expect(MilterOperation.deleteRecipient("<a@b>").action == .deleteRecipients)
        #expect(MilterOperation.addRecipient(path: "<a@b>", parameters: nil).action == .addRecipients)
        #expect(MilterOperation.addRecipient(path: "<a@b>", parameters: "X").action == .addRecipientsWithParameters)
        #expect(MilterOperation.replaceBody(path: "/x").action == .changeBody)
    }

    @Test func theComparisonLimitStillGivesTheRightResult() {
        let old = (0..<30).map { HeaderField(name: "X-\($0 % 4)", value: " \($0)") }
        var new = old
        new.remove(at: 7)
        new.insert(HeaderField(name: "X-1", value: " new"), at: 12)
        new[20] = HeaderField(name: new[20].name, value: " changed")
        for (limit, keeps) in [(0, 16), (10, 16), (1_000_000, 28)] {
            // Past the limit the differing middle (13 by 13 here) is replaced whole.
            let steps = MilterEditPlan.alignment(old, new, limit: limit, equal: ==)
            #expect(steps.count { if case .keep = $0 { true } else { false } } == keeps)
            let ops = MilterEditPlan.headerOperations(from: old, to: new, limit: limit)
            #expect(Self.applied(ops, to: old) == new)
        }
    }

    /// Random edit sequences, applied as the gateway applies them; the plan must rebuild the
    /// same header section on the MTA's side.
    @Test(arguments: 0..<300)
    func randomEditsAreReproducedExactly(_ seed: Int) {
        var rng = SplitMix(seed: UInt64(seed))
        let names = ["Received", "Subject", "X-Tag", "x-tag", "To", "DKIM-Signature"]
        let start = (0..<rng.next(upTo: 8)).map { _ in
            HeaderField(name: names[rng.next(upTo: names.count)], value: " v\(rng.next(upTo: 5))")
        }
        var d = MessageDraft(headers: start, sender: Self.sender, recipients: [Recipient(Self.a)])
        for _ in 0..<rng.next(upTo: 10) {
            let name = names[rng.next(upTo: names.count)]
            let value = "e\(rng.next(upTo: 5))"
            switch rng.next(upTo: 5) {
            case 0: d.apply(.addHeader(name: name, value: value))
            case 1: d.apply(.insertHeader(index: rng.next(upTo: d.headers.count + 2), name: name, value: value))
            case 2: d.apply(.changeHeader(name: name, occurrence: 1 + rng.next(upTo: 3), value: rng.next(upTo: 4) == 0 ? "" : value))
            case 3: d.apply(.deleteHeader(name: name, occurrence: 1 + rng.next(upTo: 3)))
            default:
                let results = ResultRecorder()
                results.prepend(.make(name: "Received-SPF", value: value))
                d.prependRecorded(results, hostname: "mx.example.test")
            }
        }
        let ops = MilterEditPlan.headerOperations(from: start, to: d.headers)
        #expect(Self.applied(ops, to: start) == d.headers, "from \(start) to \(d.headers) by \(ops)")
    }
}

/// A small seeded generator, so a failing case can be run again.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next(upTo bound: Int) -> Int {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return bound <= 0 ? 0 : Int(z % UInt64(bound))
    }
}
