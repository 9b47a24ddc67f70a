import Logging
import NIOCore
import SluicePipeline
import SluiceSpool
import SluiceStageAPI
#if canImport(Glibc)
import Glibc
#endif

/// The message a session is receiving, from its first octet to its durable commit: the queue
/// draft (which starts with our Received field, RFC 5321 4.4), end-of-message stages, the
/// intake's decision and the commit. It lives on the connection's event loop; the channel
/// handler only hands it octets and carries its result back to the state machine.
final class IncomingMessage {
    /// What became of the message, and the trace lines end of message and the intake added
    /// (for the state machine's transaction).
    struct Finished: Sendable {
        var result: SessionStateMachine.MessageResult
        var trace: [TraceEntry]
    }

    private let draft: any QueueDraft
    private let server: ServerContext
    private let eventLoop: any EventLoop
    private var logger: Logger
    /// A write failed: nothing more is stored, and the message can only be refused.
    private(set) var failed = false

    /// Starts the draft of the machine's transaction; nil outside one.
    init?(_ machine: SessionStateMachine, server: ServerContext, eventLoop: any EventLoop, logger: Logger) {
        guard let tx = machine.transaction else { return nil }
        self.server = server
        self.eventLoop = eventLoop
        self.logger = logger
        draft = server.queue.makeDraft(id: tx.queueID, eventLoop: eventLoop)
        draft.append(ReceivedHeader.make(
            heloName: machine.session.heloName, clientAddress: machine.session.clientAddress, serverHostname: server.session.hostname,
            tls: machine.session.tls, authenticatedUser: machine.session.authenticatedUser,
            protocolName: machine.protocolName, queueID: tx.queueID,
            singleRecipient: tx.recipients.count == 1 ? tx.recipients[0].mailbox.description : nil
        ))
    }

    /// Stores a chunk of message data, then gives data-phase stages `feed` (what the session
    /// says they get). A future when the session must wait before it reads more: for pending
    /// data to be written (memory stays bounded whatever the stages read), then for the stages'
    /// answer, if they ran. It fails only when the write did (the message is then `failed`).
    func receive(_ chunk: ByteBuffer, feed: DataFeed?, _ machine: SessionStateMachine, runner: StageRunner) -> EventLoopFuture<StageChain.PhaseResult?>? {
        guard !failed else { return nil }
        draft.append(chunk)
        guard draft.shouldFlush else { return run(feed, chunk, machine, runner: runner) }
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        return draft.flush().flatMapError { error in
            bound.value.failed = true
            return bound.value.eventLoop.makeFailedFuture(error)
        }.flatMap {
            bound.value.run(feed, chunk, machine, runner: runner) ?? bound.value.eventLoop.makeSucceededFuture(nil)
        }
    }

    /// Data-phase stages on `feed` (`chunk` as body); nil when there is nothing to run.
    func run(_ feed: DataFeed?, _ chunk: ByteBuffer, _ machine: SessionStateMachine, runner: StageRunner) -> EventLoopFuture<StageChain.PhaseResult?>? {
        guard let feed, !failed, let tx = machine.transactionInfo else { return nil }
        let (chain, session) = (server.chain, machine.session)
        return runner.run(on: eventLoop) {
            Optional(await chain.run(feed, chunk: Array(chunk.readableBytesView), session: session, transaction: tx))
        }
    }

    /// Drops the message and whatever of it was stored.
    func discard() {
        draft.discard()
    }

    /// End of message: stages at `eom` (which may edit), the intake's decision, then (for an
    /// accepted message) the durable commit. The future never fails: a write error is
    /// `.spoolFailed`.
    /// - Parameter machine: the session as it stands at the last octet.
    func finish(_ machine: SessionStateMachine, runner: StageRunner) -> EventLoopFuture<Finished> {
        guard !failed, let tx = machine.transaction, let info = machine.transactionInfo else {
            return eventLoop.makeSucceededFuture(Finished(result: .spoolFailed, trace: []))
        }
        let section = HeaderSection.parse(draft.headerPrefix, atEnd: draft.size <= SessionStateMachine.headerSectionLimit)
        let run = EndOfMessageRun(chain: server.chain, hostname: server.session.hostname, runner: runner, threadPool: server.threadPool)
        let (bound, logger) = (NIOLoopBound(self, eventLoop: eventLoop), logger)
        return run.start(draft: draft, section: section, session: machine.session, transaction: tx, info: info, on: eventLoop)
            .flatMap { eom in bound.value.decide(eom, section: section, machine: machine) }
            .recover { error in
                // The commit answers for itself: what fails here is storing the body stages read.
                logger.error("spool write failed", metadata: ["error": "\(error)"])
                return Finished(result: .spoolFailed, trace: [])
            }
    }

    private func decide(
        _ eom: StageChain.EndOfMessageResult, section: HeaderSection, machine: SessionStateMachine
    ) -> EventLoopFuture<Finished> {
        guard let tx = machine.transaction else { return eventLoop.makeSucceededFuture(Finished(result: .spoolFailed, trace: eom.trace)) }
        let routes = server.session.routes
        let decision = Intake(hostname: server.session.hostname).decide(
            eom, results: machine.transactionInfo?.results, held: machine.heldVerdict
        ) { CommitPlan.destination(of: $0, in: tx, routes: routes) }
        let refused: SessionStateMachine.MessageResult
        switch decision {
        case .reject(let reply), .tempfail(let reply): refused = .refused(reply)
        case .disconnect(let reply): refused = .disconnect(reply)
        case .discard(let dropped): return eventLoop.makeSucceededFuture(Finished(result: .discarded, trace: eom.trace + dropped))
        case .spool(let accepted): return commit(accepted, quarantine: nil, eom: eom, section: section, machine: machine)
        case .quarantine(let accepted, let reason): return commit(accepted, quarantine: reason, eom: eom, section: section, machine: machine)
        }
        return eventLoop.makeSucceededFuture(Finished(result: refused, trace: eom.trace))
    }

    private func commit(
        _ accepted: Intake.Accepted<Destination>, quarantine: String?, eom: StageChain.EndOfMessageResult,
        section: HeaderSection, machine: SessionStateMachine
    ) -> EventLoopFuture<Finished> {
        guard let tx = machine.transaction else { return eventLoop.makeSucceededFuture(Finished(result: .spoolFailed, trace: eom.trace)) }
        let added = eom.trace + accepted.trace
        let origin = CommitPlan.Origin(
            clientAddress: machine.session.clientAddress, clientPort: machine.session.clientPort, heloName: machine.session.heloName,
            protocolName: machine.protocolName, receivedAt: Self.wallClock()
        )
        let commit = CommitPlan.make(
            accepted, quarantine: quarantine, section: section, transaction: tx, origin: origin,
            trace: machine.sessionTrace + tx.trace + added
        )
        let (id, queue, logger, held) = (tx.queueID, server.queue, logger, quarantine != nil)
        let (chain, session, info) = (server.chain, machine.session, machine.transactionInfo)
        return draft.commit(commit).map {
            if held { return Finished(result: .quarantined(id: id), trace: added) }
            queue.announce(id)
            if chain.hooks(.queued), let info {
                // `queued` stages hear of it; they never delay the 250.
                Task { await chain.queued(queueID: id, session: session, transaction: info) }
            }
            return Finished(result: .queued(id: id), trace: added)
        }.recover { error in
            logger.error("spool commit failed", metadata: ["queue_id": "\(id)", "error": "\(error)"])
            return Finished(result: .spoolFailed, trace: added)
        }
    }

    /// Seconds since 1970.
    static func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
