import Logging
import NIOCore
import SluicePipeline
import SluiceStageAPI

/// What the state machine takes when work off the event loop is done, as a function of it (and
/// of the session's logger, which logs refusals and learns the user).
typealias SessionEvent = @Sendable (inout SessionStateMachine, inout Logger) -> SessionStateMachine.Action

/// What a session's actions ask of the gateway beyond the channel, run off the event loop:
/// stage phases, AUTH checks, ETRN's queue run, and the message being received (its draft, data-phase stages,
/// end of message and commit). Each answers with a `SessionEvent`, and never fails. Lives on
/// the connection's event loop.
final class SessionWork {
    typealias Event = SessionEvent

    let server: ServerContext
    /// Stage calls run on the connection's event loop.
    let runner: StageRunner
    let eventLoop: any EventLoop
    /// The message being received (what the session knows of it is in the machine).
    private var message: IncomingMessage?

    init(server: ServerContext, eventLoop: any EventLoop) {
        self.server = server
        self.eventLoop = eventLoop
        runner = .on(eventLoop)
    }

    /// The work `action` asks for; nil for an action the channel handler carries out itself.
    func start(_ action: SessionStateMachine.Action, _ machine: SessionStateMachine, logger: Logger) -> EventLoopFuture<Event>? {
        switch action {
        case .runStages(let phase):
            return stages(phase.rawValue, machine) { chain, session, tx in await chain.run(phase, session: session, transaction: tx) }
        case .runRecipientStages(let recipient, _):
            return stages("RCPT TO:\(recipient)", machine) { chain, session, tx in
                await chain.run(recipient: recipient, session: session, transaction: tx)
            }
        case .authenticate(let user, let password, let mechanism):
            guard let auth = server.auth else { return eventLoop.makeSucceededFuture { machine, _ in machine.authFinished(.failure) } }
            let (address, pool) = (machine.session.clientAddress, server.threadPool)
            return runner.run(on: eventLoop) {
                await auth.check(user: user, password: password, mechanism: mechanism, client: address, threadPool: pool, logger: logger)
            }.map { result in
                { machine, logger in
                    if result == .success { logger[metadataKey: "user"] = "\(user)" }
                    return machine.authFinished(result)
                }
            }
        case .requestQueueRun(let domain):
            let (queue, promise) = (server.queue, eventLoop.makePromise(of: Event.self))
            promise.completeWithTask {
                do {
                    let messages = try await queue.flush(domain: domain)
                    return { machine, _ in machine.queueRunStarted(domain, messages: messages) }
                } catch {
                    return { machine, logger in
                        logger.error("ETRN: the queue could not be asked", metadata: ["domain": "\(domain)", "error": "\(error)"])
                        return machine.queueRunFailed(domain)
                    }
                }
            }
            return promise.futureResult
        default:
            return nil
        }
    }

    /// Runs stages, then hands the machine their verdict; a refusal gets a log line naming
    /// `label` and the stages' trace.
    private func stages(
        _ label: String, _ machine: SessionStateMachine,
        _ work: @escaping @Sendable (StageChain, SessionInfo, TransactionInfo?) async -> StageChain.PhaseResult
    ) -> EventLoopFuture<Event> {
        let (chain, session, tx) = (server.chain, machine.session, machine.transactionInfo)
        return runner.run(on: eventLoop) { await work(chain, session, tx) }.map { result in
            { machine, logger in
                let action = machine.stagesFinished(result.verdict, trace: result.trace)
                let trace = result.trace.map(\.description).joined(separator: "; ")
                logger.refused(action, command: "\(label) (\(trace))", queueID: machine.transaction?.queueID)
                return action
            }
        }
    }

    // MARK: The message

    /// A message is being received.
    var hasMessage: Bool { message != nil }

    /// Starts the message of the machine's transaction.
    func startMessage(_ machine: SessionStateMachine, logger: Logger) {
        message = IncomingMessage(machine, server: server, eventLoop: eventLoop, logger: logger)
    }

    /// Stores a chunk as `plan` says and feeds data-phase stages; nil when there is nothing to wait for.
    func receive(_ chunk: ByteBuffer, _ plan: ChunkPlan, _ machine: SessionStateMachine) -> EventLoopFuture<Event>? {
        guard plan.store, let stored = message?.receive(chunk, feed: plan.feed, machine, runner: runner) else { return nil }
        return answered(stored)
    }

    /// The last octet has arrived: a header section data-phase stages have not had yet goes to
    /// them, then `finished`. Nil when there is nothing to wait for (call `finished` now).
    func endOfData(
        _ machine: inout SessionStateMachine, then finished: @escaping @Sendable (inout SessionStateMachine) -> SessionStateMachine.Action
    ) -> EventLoopFuture<Event>? {
        guard let message, !message.failed, let fed = message.run(machine.dataEnded(), ByteBuffer(), machine, runner: runner) else { return nil }
        return answered(fed, then: finished)
    }

    /// End of message: stages at `eom`, the intake, the durable commit, then the reply.
    func finishMessage(_ machine: SessionStateMachine) -> EventLoopFuture<Event> {
        finished(message?.finish(machine, runner: runner) ?? eventLoop.makeSucceededFuture(.init(result: .spoolFailed, trace: [])))
    }

    /// A transaction that ended (RSET, refusal, new HELO, end of message) leaves no temp file behind.
    func settle(_ machine: SessionStateMachine) {
        if message != nil, machine.transaction == nil { discardMessage() }
    }

    func discardMessage() {
        message?.discard()
        message = nil
    }

    /// Data-phase stages' answer (if they ran) for the machine, then `next`; a failed write
    /// leaves the message to be refused.
    private func answered(_ work: EventLoopFuture<StageChain.PhaseResult?>, then next: (@Sendable (inout SessionStateMachine) -> SessionStateMachine.Action)? = nil) -> EventLoopFuture<Event> {
        work.map { answer -> Event in
            { machine, _ in
                if let answer { machine.dataStagesAnswered(answer.verdict, trace: answer.trace) }
                return next?(&machine) ?? .none
            }
        }.recover { error in
            { machine, logger in
                logger.error("spool write failed", metadata: ["error": "\(error)"])
                machine.draftFailed()
                return next?(&machine) ?? .none
            }
        }
    }

    /// What became of the message, for the machine, with the transaction's log line.
    private func finished(_ work: EventLoopFuture<IncomingMessage.Finished>) -> EventLoopFuture<Event> {
        work.map { finished in
            { machine, logger in
                machine.recordTrace(finished.trace)
                let tx = machine.transaction
                let action = machine.messageFinished(finished.result)
                if case .reply(let replies, _) = action, let tx { logger.transaction(tx, of: machine, reply: replies.first) }
                return action
            }
        }
    }
}
