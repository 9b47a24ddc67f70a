import SluiceStageAPI
import Testing
@testable import SluiceMilterServer

/// Stage verdicts as milter statuses and replies.
@Suite("MilterResponse")
struct MilterResponseTests {
    @Test func continueAndAcceptContinue() {
        #expect(MilterResponse.answer(to: .continue) == (.continue, nil))
        #expect(MilterResponse.answer(to: .accept) == (.continue, nil))
    }

    @Test func refusalsKeepTheStagesReply() {
        let r = SMTPReply(550, "5.7.1", "Sender refused")
        #expect(MilterResponse.answer(to: .reject(r)).0 == .refuse(r))
        let t = SMTPReply(451, "4.7.24", "SPF temporary error")
        #expect(MilterResponse.answer(to: .tempfail(t)).0 == .refuse(t))
        let multi = SMTPReply(554, EnhancedStatusCode("5.7.1"), ["line one", "line two"])
        #expect(MilterResponse.answer(to: .reject(multi)).0 == .refuse(multi))
    }

    @Test func aReplyOutsideItsClassIsMadeToFit() {
        // libmilter passes a custom reply on only when its class agrees with the status.
        #expect(MilterResponse.answer(to: .reject(SMTPReply(250, "2.0.0", "odd"))).0 == .refuse(SMTPReply(550, "5.7.1", "odd")))
        #expect(MilterResponse.answer(to: .tempfail(SMTPReply(250, nil, ["odd"]))).0 == .refuse(SMTPReply(451, "4.7.1", "odd")))
        #expect(MilterResponse.answer(to: .reject(SMTPReply(550, EnhancedStatusCode("4.7.1"), ["mixed"]))).0
                == .refuse(SMTPReply(550, nil, ["mixed"])))
    }

    @Test func disconnectIs421() {
        #expect(MilterResponse.answer(to: .disconnect(421, "4.7.0", "bye")).0 == .refuse(SMTPReply(421, "4.7.0", "bye")))
        #expect(MilterResponse.answer(to: .disconnect(SMTPReply(451, "4.3.0", "busy"))).0 == .refuse(SMTPReply(421, "4.3.0", "busy")))
        #expect(MilterResponse.answer(to: .disconnect(554, "5.7.1", "go away")).0 == .refuse(SMTPReply(554, "5.7.1", "go away")))
    }

    @Test func discardAndQuarantineAreHeldForEndOfMessage() {
        #expect(MilterResponse.answer(to: .discard) == (.continue, .discard))
        #expect(MilterResponse.answer(to: .quarantine(reason: "spam")) == (.continue, .quarantine(reason: "spam")))
    }
}
