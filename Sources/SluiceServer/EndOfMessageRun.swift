import NIOCore
import NIOPosix
import SluicePipeline
import SluiceSpool
import SluiceStageAPI

/// End of message for a received draft: the draft the stages start from (the intake's), the
/// body they read (written to disk only when one reads it; a stage's replacement once there is
/// one), and the chain's end-of-message phase, finished only when every write a reader started
/// is done.
struct EndOfMessageRun {
    let chain: StageChain
    let hostname: String
    let runner: StageRunner
    let threadPool: NIOThreadPool

    func start(
        draft: any QueueDraft, section: HeaderSection, session: SessionInfo, transaction tx: SessionStateMachine.Transaction,
        info: TransactionInfo, on eventLoop: any EventLoop
    ) -> EventLoopFuture<StageChain.EndOfMessageResult> {
        let initial = Intake(hostname: hostname).initialDraft(headers: section.fields, sender: tx.sender, recipients: tx.recipients)
        guard chain.hooks(.endOfMessage) else {
            return eventLoop.makeSucceededFuture(StageChain.EndOfMessageResult(verdict: .continue, draft: initial, trace: []))
        }
        let (draftBody, settled) = draft.lazyBody(from: section.bodyOffset)
        let pool = threadPool
        let body: @Sendable (MessageDraft) -> MessageBody = { d in
            d.replacementBodyPath.map { SpoolReader.body(path: $0, from: 0, length: nil, threadPool: pool) } ?? draftBody
        }
        let (chain, receivedSize) = (self.chain, draft.size)
        // The draft starts with our Received: field (the session's first append).
        let ownReceived = section.fields.first
        return runner.run(on: eventLoop) {
            await chain.endOfMessage(
                draft: initial, receivedSize: receivedSize, body: body, hiding: ownReceived, session: session, transaction: info)
        }.flatMap { eom in settled().map { eom } }
    }
}
