import SMTPCore
import SluicePipeline
import SluiceStageAPI
import Testing

@Suite("StageChain")
struct StageChainTests {
    // MARK: Verdict precedence

    @Test func firstDefinitiveVerdictWins() async throws {
        let log = CallLog()
        let chain = try StageChain([
            entry(FakeStage("a", [.mailFrom], log: log)),
            entry(FakeStage("b", [.mailFrom], verdict: .reject(550, "5.7.1", "from b"), log: log)),
            entry(FakeStage("c", [.mailFrom], verdict: .reject(551, "5.7.1", "from c"), log: log)),
        ])
        let result = await chain.mailFrom(session: testSession, transaction: testTransaction)
        #expect(result.verdict == .reject(550, "5.7.1", "from b"))
        #expect(log.all == ["a@mail", "b@mail"])
        #expect(result.trace.map(\.stage) == ["a", "b"])
        #expect(result.trace.map(\.phase) == ["mail", "mail"])
        #expect(result.trace[0].outcome == "continue")
        #expect(result.trace[1].outcome.hasPrefix("reject 550 5.7.1"))
    }

    @Test(arguments: [
        StageVerdict.tempfail(451, "4.7.1", "later"), .reject(550, "5.7.1", "no"), .discard, .quarantine(reason: "odd"),
        .disconnect(SMTPReply(421, "4.7.0", "bye")),
    ])
    func anyVerdictButContinueEndsThePhase(_ verdict: StageVerdict) async throws {
        let log = CallLog()
        let chain = try StageChain([
            entry(FakeStage("a", [.helo], verdict: verdict, log: log)),
            entry(FakeStage("b", [.helo], verdict: .reject(554, "5.7.1", "never reached"), log: log)),
        ])
        let result = await chain.helo(session: testSession)
        #expect(result.verdict == verdict)
        #expect(log.all == ["a@helo"])
    }

    @Test func acceptSkipsTheRestAsAPass() async throws {
        let log = CallLog()
        let chain = try StageChain([
            entry(FakeStage("a", [.rcptTo], verdict: .accept, log: log)),
            entry(FakeStage("b", [.rcptTo], verdict: .reject(550, "5.1.1", "no"), log: log)),
        ])
        let result = await chain.rcptTo(firstRecipient, session: testSession, transaction: testTransaction)
        #expect(result.verdict == .continue)
        #expect(log.all == ["a@rcpt user@example.test"])
        #expect(result.trace.map(\.outcome) == ["accept"])
    }

    @Test func allContinue() async throws {
        let log = CallLog()
        let chain = try StageChain([entry(FakeStage("a", [.connect], log: log)), entry(FakeStage("b", [.connect], log: log))])
        let result = await chain.connect(session: testSession)
        #expect(result.verdict == .continue)
        #expect(log.all == ["a@connect", "b@connect"])
    }

    // MARK: Hooks

    @Test func onlyHookedPhasesRun() async throws {
        let log = CallLog()
        let chain = try StageChain([
            entry(FakeStage("a", [.helo], log: log)),
            entry(FakeStage("b", [.mailFrom, .queued], log: log)),
            entry(FakeStage("c", [.data, .disconnect], log: log)),
        ])
        #expect(chain.hooks(.helo))
        #expect(chain.hooks(.mailFrom))
        #expect(chain.hooks(.data))
        #expect(!chain.hooks(.connect))
        #expect(!chain.hooks(.rcptTo))
        #expect(!chain.hooks(.endOfMessage))

        let connect = await chain.connect(session: testSession)
        #expect(connect.verdict == .continue)
        #expect(connect.trace.isEmpty)
        _ = await chain.helo(session: testSession)
        _ = await chain.mailFrom(session: testSession, transaction: testTransaction)
        _ = await chain.rcptTo(firstRecipient, session: testSession, transaction: testTransaction)
        _ = await chain.headers([HeaderField(name: "Subject", value: " hi")], session: testSession, transaction: testTransaction)
        _ = await chain.bodyChunk([1, 2, 3], session: testSession, transaction: testTransaction)
        await chain.queued(queueID: "QID1", session: testSession, transaction: testTransaction)
        await chain.disconnect(session: testSession)
        #expect(log.all == ["a@helo", "b@mail", "c@headers Subject", "c@body 3", "b@queued QID1", "c@disconnect"])
    }

    @Test func aggregatesFromStages() throws {
        let chain = try StageChain([
            entry(FakeStage("a", [], ehloKeywords: ["X-A"], messageSizeLimit: 5000)),
            entry(FakeStage("b", [], ehloKeywords: ["X-B1", "X-B2"])),
            entry(FakeStage("c", [], messageSizeLimit: 3000)),
        ])
        #expect(chain.ehloKeywords == ["X-A", "X-B1", "X-B2"])
        #expect(chain.messageSizeLimit == 3000)
        #expect(try StageChain([]).messageSizeLimit == nil)
        #expect(chain.entries.map(\.name) == ["a", "b", "c"])
    }

    // MARK: Failures and timeouts (on_error)

    @Test(arguments: [
        (FailurePolicy.tempfail, "tempfail 451 4.3.0", ["a@mail"]),
        (.accept, "continue", ["a@mail", "b@mail"]),
        (.reject, "reject 554 5.3.0", ["a@mail"]),
    ])
    func throwingStageGetsItsPolicy(_ policy: FailurePolicy, _ expected: String, _ calls: [String]) async throws {
        let log = CallLog()
        let chain = try StageChain([
            entry(FakeStage("a", [.mailFrom], behavior: .fail, log: log), onError: policy),
            entry(FakeStage("b", [.mailFrom], log: log)),
        ])
        let result = await chain.mailFrom(session: testSession, transaction: testTransaction)
        #expect(summary(result.verdict) == expected)
        #expect(log.all == calls)
        #expect(result.trace[0].outcome.contains("failed: boom"))
    }

    @Test func failureReplyNamesTheStage() async throws {
        let chain = try StageChain([entry(FakeStage("spamcheck", [.helo], behavior: .fail))])
        let result = await chain.helo(session: testSession)
        guard case .tempfail(let reply) = result.verdict else {
            Issue.record("expected tempfail, got \(result.verdict)")
            return
        }
        #expect(reply.lines.joined().contains("spamcheck"))
    }

    @Test func slowStageTimesOutAsTempfail() async throws {
        let chain = try StageChain([entry(FakeStage("slow", [.mailFrom], behavior: .sleep(.seconds(30))), timeout: .milliseconds(50))])
        let clock = ContinuousClock()
        let start = clock.now
        let result = await chain.mailFrom(session: testSession, transaction: testTransaction)
        #expect(clock.now - start < .seconds(25), "the stage would have slept 30 s")
        #expect(summary(result.verdict) == "tempfail 451 4.3.0")
        #expect(result.trace.first?.outcome.contains("timed out") == true)
    }

    @Test func timeoutWithAcceptPolicyGoesOn() async throws {
        let log = CallLog()
        let chain = try StageChain([
            entry(FakeStage("slow", [.rcptTo], behavior: .sleep(.seconds(30)), log: log), timeout: .milliseconds(50), onError: .accept),
            entry(FakeStage("next", [.rcptTo], verdict: .reject(550, "5.1.1", "no"), log: log)),
        ])
        let result = await chain.rcptTo(firstRecipient, session: testSession, transaction: testTransaction)
        #expect(summary(result.verdict) == "reject 550 5.1.1")
        #expect(log.all.count == 2)
    }

    /// A stage that ignores cancellation finishes in the background; the chain does not wait for it.
    /// (Decided by order, not by the clock: the stage is still stuck when the chain answers.)
    @Test func stageIgnoringCancellationDoesNotHoldTheChain() async throws {
        let gate = Gate()
        let chain = try StageChain([
            entry(FakeStage("stuck", [.helo], behavior: .waitIgnoringCancellation(gate)), timeout: .milliseconds(50), onError: .reject),
        ])
        // Should the chain wait for the stage after all, release it eventually so the test ends.
        let fallback = Task {
            try? await Task.sleep(for: .seconds(30))
            gate.open()
        }
        let result = await chain.helo(session: testSession)
        let stageStillStuck = !gate.isOpen
        gate.open()
        fallback.cancel()
        #expect(stageStillStuck, "the chain waited for a stage past its timeout")
        #expect(summary(result.verdict) == "reject 554 5.3.0")
        #expect(result.trace.first?.outcome.contains("timed out") == true)
    }

    @Test func fastStageUnderItsTimeout() async throws {
        let chain = try StageChain([
            entry(FakeStage("quick", [.helo], verdict: .reject(550, "5.7.1", "no"), behavior: .sleep(.milliseconds(1))), timeout: .seconds(10)),
        ])
        #expect(summary(await chain.helo(session: testSession).verdict) == "reject 550 5.7.1")
    }

    @Test func queuedAndDisconnectFailuresAreOnlyTraced() async throws {
        let log = CallLog()
        let chain = try StageChain([
            entry(FakeStage("slow", [.queued, .disconnect], behavior: .sleep(.seconds(30)), log: log), timeout: .milliseconds(50)),
            entry(FakeStage("next", [.queued, .disconnect], log: log)),
        ])
        await chain.queued(queueID: "Q", session: testSession, transaction: testTransaction)
        await chain.disconnect(session: testSession)
        #expect(log.all == ["slow@queued Q", "next@queued Q", "slow@disconnect", "next@disconnect"])
    }

    // MARK: End of message: edits, in order, visible to the next stage

    let original = MessageDraft(
        headers: [HeaderField(name: "Subject", value: " hello"), HeaderField(name: "From", value: " <sender@client.test>")],
        sender: .mailbox(Mailbox(localPart: "sender", domain: "client.test")),
        recipients: [firstRecipient]
    )

    func runEOM(_ chain: StageChain, draft: MessageDraft? = nil) async -> StageChain.EndOfMessageResult {
        await chain.endOfMessage(
            draft: draft ?? original, receivedSize: 1234,
            body: { d in MessageBody(bytes: Array((d.replacementBodyPath.map { "replaced by \($0)" } ?? "original body").utf8)) },
            session: testSession, transaction: testTransaction
        )
    }

    @Test func editsApplyInOrderAndTheNextStageSeesThem() async throws {
        let added = Mailbox(localPart: "copy", domain: "example.test")
        let seenHeaders = Seen<[HeaderField]>()
        let seenRecipients = Seen<[Recipient]>()
        let seenSender = Seen<ReversePath>()
        let seenSize = Seen<Int>()
        let chain = try StageChain([
            entry(FakeStage(
                "a", [.endOfMessage], capabilities: [.addsHeaders, .changesEnvelope],
                edits: [.addHeader(name: "X-A", value: "1"), .addRecipient(added, parameters: []),
                        .changeSender(.null, parameters: [])]
            )),
            entry(FakeStage(
                "b", [.endOfMessage], capabilities: [.changesHeaders],
                edits: [.changeHeader(name: "subject", occurrence: 1, value: "changed")],
                inspect: { view, tx in
                    seenHeaders.set(view.headers)
                    seenRecipients.set(tx.recipients)
                    seenSender.set(tx.sender)
                    seenSize.set(view.receivedSize)
                }
            )),
        ])
        let result = await runEOM(chain)
        #expect(result.verdict == .continue)
        #expect(seenHeaders.get?.map(\.name) == ["Subject", "From", "X-A"])
        #expect(seenRecipients.get?.map(\.mailbox) == [firstRecipient.mailbox, added])
        #expect(seenSender.get == .null)
        #expect(seenSize.get == 1234)
        #expect(result.draft.headers == [
            HeaderField(name: "Subject", value: " changed"),
            HeaderField(name: "From", value: " <sender@client.test>"),
            HeaderField(name: "X-A", value: " 1"),
        ])
        #expect(result.draft.headersChanged)
        #expect(result.draft.recipients.map(\.mailbox) == [firstRecipient.mailbox, added])
        #expect(result.draft.sender == .null)
        #expect(result.trace.map(\.outcome).contains("edit: add header X-A"))
        #expect(result.trace.map(\.outcome).contains("edit: change header subject[1]"))
    }

    @Test func editsOfOneStageApplyInTheirOrder() async throws {
        let chain = try StageChain([
            entry(FakeStage(
                "a", [.endOfMessage], capabilities: [.addsHeaders, .changesHeaders],
                edits: [.changeHeader(name: "X", occurrence: 1, value: "first"), .addHeader(name: "X", value: "second"),
                        .insertHeader(index: 0, name: "X-Top", value: "top"), .deleteHeader(name: "From", occurrence: 1)]
            )),
        ])
        let result = await runEOM(chain)
        #expect(result.draft.headers.map(\.description) == ["X-Top: top", "Subject: hello", "X: first", "X: second"])
    }

    @Test func replacedBodyIsWhatTheNextStageReads() async throws {
        let seenBodyA = Seen<[UInt8]>()
        let seenBodyB = Seen<[UInt8]>()
        let chain = try StageChain([
            entry(FakeStage(
                "a", [.endOfMessage], capabilities: [.replacesBody], edits: [.replaceBody(path: "/tmp/new-body")],
                inspect: { view, _ in seenBodyA.set(try await view.body.collect()) }
            )),
            entry(FakeStage("b", [.endOfMessage], inspect: { view, _ in seenBodyB.set(try await view.body.collect()) })),
        ])
        let result = await runEOM(chain)
        #expect(seenBodyA.get == Array("original body".utf8))
        #expect(seenBodyB.get == Array("replaced by /tmp/new-body".utf8))
        #expect(result.draft.replacementBodyPath == "/tmp/new-body")
        #expect(!result.draft.headersChanged)
    }

    @Test(arguments: [
        (MessageEdit.addHeader(name: "X", value: "1"), StageCapabilities.changesHeaders),
        (.insertHeader(index: 0, name: "X", value: "1"), .changesEnvelope),
        (.changeHeader(name: "Subject", occurrence: 1, value: "x"), .addsHeaders),
        (.deleteHeader(name: "Subject", occurrence: 1), .addsHeaders),
        (.addRecipient(Mailbox(localPart: "x", domain: "example.test"), parameters: []), .addsHeaders),
        (.deleteRecipient(firstRecipient.mailbox), .changesHeaders),
        (.changeSender(.null, parameters: []), .replacesBody),
        (.replaceBody(path: "/tmp/x"), .addsHeaders),
    ])
    func undeclaredEditIsAFailure(_ edit: MessageEdit, _ declared: StageCapabilities) async throws {
        let log = CallLog()
        let chain = try StageChain([
            entry(FakeStage("sneaky", [.endOfMessage], capabilities: declared, edits: [edit], log: log)),
            entry(FakeStage("next", [.endOfMessage], log: log)),
        ])
        let result = await runEOM(chain)
        #expect(summary(result.verdict) == "tempfail 451 4.3.0")
        #expect(result.draft.headers == original.headers)
        #expect(result.draft.recipients == original.recipients)
        #expect(result.draft.sender == original.sender)
        #expect(result.draft.replacementBodyPath == nil)
        #expect(result.trace.first?.outcome.contains("did not declare") == true)
        #expect(log.all == ["sneaky@eom"])
    }

    @Test func oneUndeclaredEditDropsAllOfTheStagesEdits() async throws {
        let chain = try StageChain([
            entry(FakeStage(
                "a", [.endOfMessage], capabilities: [.addsHeaders],
                edits: [.addHeader(name: "X-Ok", value: "1"), .deleteHeader(name: "Subject", occurrence: 1)]
            ), onError: .accept),
        ])
        let result = await runEOM(chain)
        #expect(result.verdict == .continue)
        #expect(result.draft.headers == original.headers)
        #expect(!result.draft.headersChanged)
    }

    @Test func undeclaredEditWithAcceptPolicyLetsTheNextStageRun() async throws {
        let log = CallLog()
        let chain = try StageChain([
            entry(FakeStage("sneaky", [.endOfMessage], edits: [.addHeader(name: "X", value: "1")], log: log), onError: .accept),
            entry(FakeStage("next", [.endOfMessage], log: log)),
        ])
        let result = await runEOM(chain)
        #expect(result.verdict == .continue)
        #expect(log.all == ["sneaky@eom", "next@eom"])
        #expect(result.draft.headers == original.headers)
    }

    @Test func endOfMessageVerdicts() async throws {
        let log = CallLog()
        var chain = try StageChain([
            entry(FakeStage("a", [.endOfMessage], verdict: .accept, log: log)),
            entry(FakeStage("b", [.endOfMessage], verdict: .reject(550, "5.7.1", "no"), log: log)),
        ])
        #expect(await runEOM(chain).verdict == .continue)
        #expect(log.all == ["a@eom"])

        chain = try StageChain([
            entry(FakeStage("q", [.endOfMessage], verdict: .quarantine(reason: "suspicious"))),
            entry(FakeStage("b", [.endOfMessage], verdict: .reject(550, "5.7.1", "no"))),
        ])
        #expect(await runEOM(chain).verdict == .quarantine(reason: "suspicious"))

        chain = try StageChain([entry(FakeStage("t", [.endOfMessage], behavior: .fail), onError: .reject)])
        #expect(summary(await runEOM(chain).verdict) == "reject 554 5.3.0")

        chain = try StageChain([entry(FakeStage("slow", [.endOfMessage], behavior: .sleep(.seconds(30))), timeout: .milliseconds(50))])
        #expect(summary(await runEOM(chain).verdict) == "tempfail 451 4.3.0")
    }

    @Test func noEndOfMessageStagesLeavesTheDraftAlone() async throws {
        let chain = try StageChain([entry(FakeStage("a", [.mailFrom]))])
        let result = await runEOM(chain)
        #expect(result.verdict == .continue)
        #expect(result.trace.isEmpty)
        #expect(result.draft.headers == original.headers)
    }

    // MARK: Chain checks at startup

    static let afterSealer: [(StageCapabilities, Bool)] = [
        (.addsHeaders, true),
        (.changesHeaders, true),
        (.replacesBody, true),
        ([.readsBody, .addsHeaders], true),
        ([.sealsMessage, .addsHeaders], true),
        (.changesEnvelope, false),
        (.readsBody, false),
        ([], false),
    ]

    @Test(arguments: afterSealer)
    func stagesAfterASealer(_ capabilities: StageCapabilities, _ refused: Bool) {
        let entries = [
            entry(FakeStage("dkim-sign", [.endOfMessage], capabilities: [.sealsMessage, .addsHeaders])),
            entry(FakeStage("later", [.endOfMessage], capabilities: capabilities)),
        ]
        if refused {
            let error = #expect(throws: ChainError.self) { try StageChain(entries) }
            #expect(error?.message.contains("'later'") == true)
            #expect(error?.message.contains("'dkim-sign'") == true)
        } else {
            #expect(throws: Never.self) { try StageChain(entries) }
        }
    }

    @Test func modifyingStagesBeforeTheSealerAreFine() {
        #expect(throws: Never.self) {
            try StageChain([
                entry(FakeStage("footer", [.endOfMessage], capabilities: [.addsHeaders, .changesHeaders, .replacesBody])),
                entry(FakeStage("dkim-sign", [.endOfMessage], capabilities: [.sealsMessage, .addsHeaders])),
            ])
        }
    }

    @Test func duplicateNamesAreRefused() {
        let error = #expect(throws: ChainError.self) {
            try StageChain([entry(FakeStage("access", [.connect])), entry(FakeStage("access", [.helo]))])
        }
        #expect(error?.description.contains("'access'") == true)
    }

    @Test func capabilityNames() {
        #expect(StageCapabilities([.addsHeaders, .sealsMessage]).description == "adds-headers, seals-message")
        #expect(StageCapabilities([]).description == "none")
        #expect(MessageEdit.addHeader(name: "X", value: "1").requiredCapability == .addsHeaders)
        #expect(MessageEdit.replaceBody(path: "/x").requiredCapability == .replacesBody)
    }
}
