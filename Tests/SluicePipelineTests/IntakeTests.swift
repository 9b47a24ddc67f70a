import SMTPCore
import SluicePipeline
import SluiceStageAPI
import Testing

/// The decision after the last byte, without a channel or a spool.
@Suite("Intake")
struct IntakeTests {
    let intake = Intake(hostname: "mx.example.test")
    let added = Recipient(Mailbox(localPart: "added", domain: "elsewhere.test"))

    func draft(_ recipients: [Recipient]? = nil) -> MessageDraft {
        MessageDraft(headers: [HeaderField(name: "Subject", value: " hi")],
                     sender: .mailbox(Mailbox(localPart: "a", domain: "client.test")), recipients: recipients ?? [firstRecipient])
    }

    func eom(_ verdict: StageVerdict, _ draft: MessageDraft? = nil) -> StageChain.EndOfMessageResult {
        StageChain.EndOfMessageResult(verdict: verdict, draft: draft ?? self.draft(), trace: [])
    }

    /// Every recipient routed to "dest:<domain>", but elsewhere.test has no route.
    func route(_ r: Recipient) -> String? {
        r.mailbox.domain == "elsewhere.test" ? nil : "dest:\(r.mailbox.domain)"
    }

    func accepted(_ d: Intake.Decision<String>, sourceLocation: SourceLocation = #_sourceLocation) -> Intake.Accepted<String>? {
        guard case .spool(let a) = d else {
            Issue.record("expected spool, got \(d)", sourceLocation: sourceLocation)
            return nil
        }
        return a
    }

    @Test func continueAcceptsWithEveryRecipientRouted() throws {
        let a = try #require(accepted(intake.decide(eom(.continue), results: nil, held: nil, route: route)))
        #expect(a.recipients.map(\.destination) == ["dest:example.test"])
        #expect(a.trace.isEmpty)
        #expect(!a.draft.headersChanged)
    }

    @Test func aHeldQuarantineWinsOverContinueButNotOverARefusal() throws {
        let held = StageVerdict.quarantine(reason: "held at rcpt")
        guard case .quarantine(let a, let reason) = intake.decide(eom(.continue), results: nil, held: held, route: route) else {
            Issue.record("a held quarantine wins over continue")
            return
        }
        #expect(reason == "held at rcpt")
        #expect(a.recipients.map(\.destination) == ["dest:example.test"])
        guard case .reject(let reply) = intake.decide(eom(.reject(550, "5.7.1", "no")), results: nil, held: held, route: route) else {
            Issue.record("a refusal at end of message wins")
            return
        }
        #expect(reply.code == 550)
        guard case .discard = intake.decide(eom(.continue), results: nil, held: .discard, route: route) else {
            Issue.record("a held discard wins over continue")
            return
        }
    }

    @Test func aQuarantineAtEndOfMessageHoldsTheMessage() {
        guard case .quarantine(_, let reason) = intake.decide(eom(.quarantine(reason: "spam")), results: nil, held: nil, route: route) else {
            Issue.record("quarantine at end of message")
            return
        }
        #expect(reason == "spam")
    }

    @Test func refusalsKeepTheirKind() {
        guard case .tempfail(let t) = intake.decide(eom(.tempfail(451, "4.7.1", "later")), results: nil, held: nil, route: route),
              case .disconnect(let d) = intake.decide(eom(.disconnect(421, "4.7.0", "bye")), results: nil, held: nil, route: route)
        else { Issue.record("tempfail and disconnect"); return }
        #expect(t.code == 451 && d.code == 421)
    }

    @Test func recordedFieldsGoOnTop() throws {
        let results = ResultRecorder()
        results.record(AuthenticationResult(method: "spf", result: "pass", properties: [.init("smtp.mailfrom", "a@client.test")]))
        results.prepend(HeaderField(name: "Received-SPF", value: " pass"))
        let a = try #require(accepted(intake.decide(eom(.continue), results: results, held: nil, route: route)))
        #expect(a.draft.headers.map(\.name) == ["Authentication-Results", "Received-SPF", "Subject"])
        #expect(a.draft.headers[0].value.hasPrefix(" mx.example.test;"))
        #expect(a.draft.headersChanged)
    }

    @Test func anAddedRecipientWithoutARouteIsDroppedAndTraced() throws {
        let a = try #require(accepted(intake.decide(eom(.continue, draft([firstRecipient, added])), results: nil, held: nil, route: route)))
        #expect(a.recipients.map(\.recipient) == [firstRecipient])
        #expect(a.trace.map(\.outcome) == ["dropped added recipient \(added): no route"])
        guard case .discard(let trace) = intake.decide(eom(.continue, draft([added])), results: nil, held: nil, route: route) else {
            Issue.record("no recipient left is a discard")
            return
        }
        #expect(trace.count == 1)
    }

    @Test func theInitialDraftDropsAuthenticationResultsClaimingOurID() {
        let headers = [
            HeaderField(name: "Authentication-Results", value: " mx.example.test; spf=pass"),
            HeaderField(name: "Authentication-Results", value: " other.example; dkim=pass"),
            HeaderField(name: "Subject", value: " hi"),
        ]
        let d = intake.initialDraft(headers: headers, sender: .null, recipients: [firstRecipient])
        #expect(d.headers.map(\.value) == [" other.example; dkim=pass", " hi"])
    }
}
