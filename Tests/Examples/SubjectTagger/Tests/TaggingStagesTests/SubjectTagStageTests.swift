import SluiceStageAPI
import SluiceStageTesting
import TaggingStages
import Testing

@Suite("subject-tag")
struct SubjectTagStageTests {
    let stage: SubjectTagStage

    init() throws {
        stage = try SubjectTagStage(config: .testing([
            "tag": .string("[EXT]"), "internal_only": .array([.string("all-staff@Example.TEST")]),
        ]))
    }

    @Test func outsideMailIsTagged() async throws {
        var h = StageHarness(stage: stage)
        let out = try await h.message("From: a@example.org\nSubject: lunch?\n\nhello\n", to: ["bob@example.test"])
        #expect(out.decision.verdict == .continue)
        #expect(out.header("Subject") == ["[EXT] lunch?"])
        #expect(out.text.hasSuffix("\r\n\r\nhello\r\n"), "the body is not touched")
    }

    @Test func insideMailIsLeftAlone() async throws {
        var h = StageHarness(stage: stage, trusted: true)
        let out = try await h.message("Subject: lunch?\n\nhello\n", to: ["all-staff@example.test"])
        #expect(out.recipients.count == 1, "inside senders may write to internal-only addresses")
        #expect(out.header("Subject") == ["lunch?"])
        #expect(out.decision.edits.isEmpty)
    }

    @Test func aTaggedSubjectIsNotTaggedTwice() async throws {
        var h = StageHarness(stage: stage)
        let out = try await h.message("Subject: Re: [EXT] lunch?\n\nhello\n", to: ["bob@example.test"])
        #expect(out.header("Subject") == ["Re: [EXT] lunch?"])
        #expect(out.decision.edits.isEmpty)
    }

    @Test func aMessageWithoutSubjectGetsTheTag() async throws {
        var h = StageHarness(stage: stage)
        let out = try await h.message("From: a@example.org\n\nhello\n", to: ["bob@example.test"])
        #expect(out.header("Subject") == ["[EXT]"])
    }

    @Test func aFoldedSubjectKeepsItsFolding() async throws {
        var h = StageHarness(stage: stage)
        let out = try await h.message("Subject: a long\n subject\n\nhello\n", to: ["bob@example.test"])
        #expect(out.text.hasPrefix("Subject: [EXT] a long\r\n subject\r\n"), "\(out.text)")
    }

    @Test func internalOnlyRecipientsAreRefusedFromOutside() async throws {
        var h = StageHarness(stage: stage)
        _ = try await h.mailFrom("a@example.org")
        guard case .reject(let reply) = try await h.rcptTo("all-staff@example.test") else {
            Issue.record("an outside sender reached an internal-only address")
            return
        }
        #expect(reply.code == 550 && reply.enhancedCode?.description == "5.7.1")
        #expect(reply.lines.first == "<all-staff@example.test>: only internal senders may write to this address")
        #expect(try await h.rcptTo("bob@example.test") == .continue, "other recipients of the message go on")
    }

    @Test func badConfigNamesTheKey() {
        #expect(throws: ConfigError.self) { try SubjectTagStage(config: .testing(["internal_only": .array([.string("not an address")])])) }
        do {
            _ = try SubjectTagStage(config: .testing(["tag": .string("")]))
            Issue.record("an empty tag was accepted")
        } catch let error as ConfigError {
            #expect(error.key.hasSuffix("tag"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func theFactoryIsWhatPipelineConfNames() throws {
        #expect(SubjectTagStage.factory.name == "subject-tag")
        let made = try SubjectTagStage.factory.makeStage(config: .testing([:]), environment: .testing())
        #expect(made.capabilities == [.changesHeaders])
        #expect(made.phases == [.rcptTo, .endOfMessage])
    }
}
