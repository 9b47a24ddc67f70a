import Logging
import NIOCore
import NIOSSL
import NIOTLS
import SMTPCore
import SluicePipeline
import SluiceSpool
import SluiceStageAPI
#if canImport(Glibc)
import Glibc
#endif

/// Carries out a `SessionStateMachine`'s actions on a channel: frames input, runs stage phases
/// off the event loop, streams message data into the spool, batches replies per read, and keeps
/// the timers. Reading is paused (`autoRead` off) while the session waits on stages or the disk,
/// so a pipelining client cannot make the session buffer without bound.
final class SMTPSessionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let server: ServerContext
    private let listener: Listener
    private var machine: SessionStateMachine!
    /// Watches the ServerHello for the cipher while a handshake runs.
    private var sniffer: ServerHelloSniffer?
    /// The client and server addresses a PROXY header gave.
    private var proxied: ProxyProtocolDecoder.ProxiedAddress?
    private var framer: SMTPFramer
    private var inbound = ByteBuffer()
    private var outbound = ByteBuffer()
    private var context: ChannelHandlerContext!
    private var logger: Logger
    /// Stage calls run on this connection's event loop.
    private var stageRunner = StageRunner.global

    /// Waiting on stages or the disk: input stays buffered until the work completes.
    private var busy = false
    private var closing = false
    private var greeted = false
    private var registered = false
    private var clientAddress = "?"
    private var shutdownRequested = false

    /// The message being received (what the session knows of it is in `machine`).
    private var draft: (any QueueDraft)?

    // Timers.
    private var lastActivity = NIODeadline.now()
    private var timer: Scheduled<Void>?

    init(server: ServerContext, listener: Listener = Listener(address: try! SocketAddress(ipAddress: "127.0.0.1", port: 0)), sniffer: ServerHelloSniffer? = nil) {
        self.server = server
        self.listener = listener
        self.sniffer = sniffer
        self.framer = SMTPFramer(commandLineLimit: server.commandLineLimit, textLineLimit: server.textLineLimit)
        self.logger = server.logger
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        stageRunner = .on(context.eventLoop)
        inbound = context.channel.allocator.buffer(capacity: 1024)
        outbound = context.channel.allocator.buffer(capacity: 1024)
    }

    func channelActive(context: ChannelHandlerContext) {
        let (machine, sessionLogger) = server.makeSession(
            remote: context.channel.remoteAddress, local: context.channel.localAddress, proxied: proxied, listener: listener
        )
        self.machine = machine
        clientAddress = machine.session.clientAddress
        logger = sessionLogger

        guard server.tracker.open(clientAddress) else {
            logger.notice("connection refused: too many connections")
            send([SMTPReply(421, "4.7.0", "\(server.session.hostname) Error: too many connections")], close: true)
            return
        }
        registered = true
        server.register(context.channel)
        if server.isShuttingDown {
            send([SMTPReply(421, "4.3.2", "\(server.session.hostname) Service shutting down")], close: true)
            return
        }
        armTimer()
        if server.greetPause.nanoseconds > 0 {
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: server.greetPause) { bound.value.greet() }
            context.read()
        } else {
            greet()
        }
    }

    private func greet() {
        guard !closing else { return }
        greeted = true
        perform(machine.connected())
        process()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        draft?.discard()
        draft = nil
        if registered {
            server.tracker.close(clientAddress)
            server.unregister(context.channel)
            registered = false
            if server.chain.hooks(.disconnect), let session = machine?.session {
                let chain = server.chain
                Task { await chain.disconnect(session: session) }
            }
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        lastActivity = .now()
        guard !closing else { return }
        if !greeted {
            perform(machine.clientTalkedFirst())
            flush()
            return
        }
        inbound.writeBuffer(&bytes)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        process()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let address = event as? ProxyProtocolDecoder.ProxiedAddress {
            proxied = address
            return
        }
        if let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent {
            tlsHandshakeCompleted()
            return
        }
        if event is ShutdownRequested {
            shutdownRequested = true
            // Idle between commands: answer now. Otherwise the next command gets the 421.
            if !busy && framer.isReadingCommands && inbound.readableBytes == 0 && !closing && greeted {
                send([SMTPReply(421, "4.3.2", "\(server.session.hostname) Service shutting down, closing connection")], close: true)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let tlsError = error as? NIOSSLError, case .uncleanShutdown = tlsError {
            logger.debug("TLS closed without close_notify")
        } else if error is NIOSSLError || error is BoringSSLError {
            logger.info("TLS failed", metadata: ["error": "\(error)"])
        } else {
            logger.debug("channel error", metadata: ["error": "\(error)"])
        }
        closing = true
        context.close(promise: nil)
    }

    // MARK: Input processing

    /// Handles buffered frames until one needs async work or more input, then flushes replies
    /// (one write per batch, RFC 2920) and asks for more input if idle.
    private func process() {
        while !busy && !closing {
            guard let frame = framer.next(&inbound) else { break }
            handle(frame)
        }
        if inbound.readerIndex > 4096 { inbound.discardReadBytes() }
        flush()
        if !busy && !closing { context.read() }
    }

    private func handle(_ frame: SMTPFrame) {
        switch frame {
        case .command(let line):
            let action = machine.commandLine(line, pipelinedInput: inbound.readableBytes > 0, shuttingDown: shutdownRequested)
            logRefusal(action, command: String(decoding: line.prefix(200).map { $0 < 0x20 || $0 == 0x7F ? UInt8(ascii: "?") : $0 }, as: UTF8.self))
            perform(action)
        case .commandTooLong:
            perform(machine.commandLine(nil, pipelinedInput: false, shuttingDown: shutdownRequested))
        case .dataChunk(let chunk), .bdatChunk(let chunk):
            receive(chunk)
        case .dataEnd:
            endOfData { $0.perform($0.machine.dataFinished(flags: $0.framer.flags)) }
        case .bdatEnd:
            guard machine.readingLastStoredChunk else {
                perform(machine.bdatChunkRead(flags: framer.flags))
                break
            }
            framer.finishBDATMessage()
            endOfData { $0.perform($0.machine.bdatChunkRead(flags: $0.framer.flags)) }
        }
        // A transaction that ended (RSET, refusal, new HELO) leaves no temp file behind.
        if draft != nil && machine.transaction == nil {
            draft?.discard()
            draft = nil
        }
    }

    /// Stores a chunk of message data and gives data-phase stages what the session says they get.
    private func receive(_ chunk: ByteBuffer) {
        let plan = machine.dataChunk(chunk.readableBytesView)
        guard plan.store, let draft else { return }
        draft.append(chunk)
        guard draft.shouldFlush else { return feed(plan.feed, chunk) }
        // What is pending goes to disk before more is read, then (if they run) to data-phase
        // stages: memory stays bounded whether or not stages read the data.
        wait(draft.flush()) { handler, result in
            if case .failure(let error) = result {
                handler.logger.error("spool write failed", metadata: ["error": "\(error)"])
                handler.machine.draftFailed()
                handler.draft = nil
            } else {
                handler.feed(plan.feed, chunk)
            }
        }
    }

    /// Runs data-phase stages on a feed; `then` runs on the loop once they have answered.
    private func feed(_ feed: DataFeed?, _ chunk: ByteBuffer, then: @escaping (SMTPSessionHandler) -> Void = { _ in }) {
        guard let feed, let tx = machine.transactionInfo else { return then(self) }
        let (chain, session) = (server.chain, machine.session)
        runAsync({ await chain.run(feed, chunk: Array(chunk.readableBytesView), session: session, transaction: tx)         }) { handler, result in
            handler.machine.dataStagesAnswered(result.verdict, trace: result.trace)
            then(handler)
        }
    }

    /// The last byte of the message has arrived: a header section data-phase stages have not
    /// had yet goes to them first.
    private func endOfData(_ then: @escaping (SMTPSessionHandler) -> Void) {
        guard draft != nil, let final = machine.dataEnded() else { return then(self) }
        feed(final, ByteBuffer(), then: then)
    }

    // MARK: Actions

    private func perform(_ action: SessionStateMachine.Action) {
        switch action {
        case .none:
            break
        case .reply(let replies, let close):
            send(replies, close: close)
        case .runStages(let phase):
            runStages(phase)
        case .runRecipientStages(let recipient, _):
            guard let tx = machine.transactionInfo else { return }
            let (chain, session) = (server.chain, machine.session)
            runAsync({ await chain.rcptTo(recipient, session: session, transaction: tx) }) { handler, result in
                let action = handler.machine.stagesFinished(result.verdict, trace: result.trace)
                handler.logRefusal(action, command: "RCPT TO:\(recipient) (\(result.trace.map(\.description).joined(separator: "; ")))")
                handler.perform(action)
            }
        case .startData(let reply):
            startMessage()
            framer.beginData()
            rearmTimer()
            send([reply], close: false)
        case .readChunk(let size, let store, _):
            if store && draft == nil {
                startMessage()
                framer.startMessage()
            }
            framer.beginBDAT(size: size)
            rearmTimer()
        case .finishMessage:
            finishMessage()
        case .startTLS(let reply):
            startTLS(reply)
        case .authenticate(let user, let password, let mechanism):
            authenticate(user: user, password: password, mechanism: mechanism)
        case .requestQueueRun(let domain):
            perform(machine.queueRunStarted(domain, messages: server.queue.flush(domain: domain)))
        }
    }

    private func authenticate(user: String, password: String, mechanism: SASL.Mechanism) {
        guard let auth = server.auth else { return perform(machine.authFinished(.failure)) }
        let (address, pool, log) = (clientAddress, server.threadPool, logger)
        runAsync({ await auth.check(user: user, password: password, mechanism: mechanism, client: address, threadPool: pool, logger: log) }) { handler, result in
            if result == .success { handler.logger[metadataKey: "user"] = "\(user)" }
            handler.perform(handler.machine.authFinished(result))
        }
    }

    /// STARTTLS: the 220 goes out in plaintext, input already buffered behind the command is
    /// dropped (never answered inside TLS: CVE-2011-0411), and the TLS handler goes in front.
    private func startTLS(_ reply: SMTPReply) {
        guard let tls = server.tls else { return }
        inbound.clear()
        framer = SMTPFramer(commandLineLimit: server.commandLineLimit, textLineLimit: server.textLineLimit)
        send([reply], close: false)
        flush()
        do {
            sniffer = try TLSUpgrade.begin(context, tls: tls)
        } catch {
            logger.error("cannot start TLS", metadata: ["error": "\(error)"])
            closing = true
            context.close(promise: nil)
        }
    }

    private func tlsHandshakeCompleted() {
        let info = TLSUpgrade.finished(context, sniffer: sniffer)
        sniffer = nil
        logger[metadataKey: "tls"] = "\(info.version) \(info.cipher)"
        logger.debug("TLS established", metadata: ["version": "\(info.version)", "cipher": "\(info.cipher)"])
        perform(machine.tlsEstablished(info))
        process()
    }

    private func runStages(_ phase: StagePhase) {
        let (chain, session, tx) = (server.chain, machine.session, machine.transactionInfo)
        runAsync({ await chain.run(phase, session: session, transaction: tx)         }) { handler, result in
            let action = handler.machine.stagesFinished(result.verdict, trace: result.trace)
            handler.logRefusal(action, command: "\(phase.rawValue) (\(result.trace.map(\.description).joined(separator: "; ")))")
            handler.perform(action)
        }
    }

    /// A new message: a spool draft that starts with our Received header (RFC 5321 4.4).
    private func startMessage() {
        guard let tx = machine.transaction else { return }
        let draft = server.queue.makeDraft(id: tx.queueID, eventLoop: context.eventLoop)
        draft.append(ReceivedHeader.make(
            heloName: machine.session.heloName, clientAddress: clientAddress, serverHostname: server.session.hostname,
            tls: machine.session.tls, authenticatedUser: machine.session.authenticatedUser,
            protocolName: machine.protocolName, queueID: tx.queueID,
            singleRecipient: tx.recipients.count == 1 ? tx.recipients[0].mailbox.description : nil
        ))
        self.draft = draft
    }

    /// End of message: stages at `eom` (which may edit), then the durable commit, then the reply.
    private func finishMessage() {
        guard let draft, let tx = machine.transaction, let txInfo = machine.transactionInfo else {
            perform(machine.messageFinished(.spoolFailed))
            return
        }
        let section = HeaderSection.parse(draft.headerPrefix, atEnd: draft.size <= SessionStateMachine.headerSectionLimit)
        let eventLoop = context.eventLoop
        let stagesDone = EndOfMessageRun(chain: server.chain, hostname: server.session.hostname, runner: stageRunner, threadPool: server.threadPool)
            .start(draft: draft, section: section, session: machine.session, transaction: tx, info: txInfo, on: eventLoop)
        busy = true
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        stagesDone.whenComplete { result in
            let handler = bound.value
            switch result {
            case .success(let eom): handler.commit(eom, section: section, transaction: tx)
            case .failure(let error):
                handler.logger.error("spool write failed", metadata: ["error": "\(error)"])
                handler.finish(.spoolFailed)
            }
        }
    }

    private func commit(_ eom: StageChain.EndOfMessageResult, section: HeaderSection, transaction tx: SessionStateMachine.Transaction) {
        machine.recordTrace(eom.trace)
        let routes = server.session.routes
        let decision = Intake(hostname: server.session.hostname).decide(
            eom, results: machine.transactionInfo?.results, held: machine.heldVerdict
        ) { CommitPlan.destination(of: $0, in: tx, routes: routes) }
        let accepted: Intake.Accepted<Destination>
        switch decision {
        case .reject(let reply), .tempfail(let reply): return finish(.refused(reply))
        case .disconnect(let reply): return finish(.disconnect(reply))
        case .discard(let dropped):
            machine.recordTrace(dropped)
            return finish(.discarded)
        case .accept(let a): accepted = a
        }
        machine.recordTrace(accepted.trace)
        guard let draft, let tx = machine.transaction else { return finish(.spoolFailed) }
        let origin = CommitPlan.Origin(
            clientAddress: clientAddress, clientPort: machine.session.clientPort, heloName: machine.session.heloName,
            protocolName: machine.protocolName, receivedAt: Self.wallClock()
        )
        let commit = CommitPlan.make(accepted, section: section, transaction: tx, origin: origin, trace: machine.sessionTrace + tx.trace)
        // A constant: the commit's completion (a Sendable closure, run later on the event loop)
        // captures its value, not a variable shared with this frame.
        let quarantined = accepted.quarantine != nil
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        draft.commit(commit).whenComplete { result in
            let handler = bound.value
            handler.draft = nil
            switch result {
            case .success:
                if quarantined {
                    handler.finish(.quarantined(id: tx.queueID))
                } else {
                    handler.server.queue.announce(tx.queueID)
                    handler.finish(.queued(id: tx.queueID))
                }
            case .failure(let error):
                handler.logger.error("spool commit failed", metadata: ["queue_id": "\(tx.queueID)", "error": "\(error)"])
                handler.finish(.spoolFailed)
            }
        }
    }

    private func finish(_ result: SessionStateMachine.MessageResult) {
        let tx = machine.transaction
        let txInfo = machine.transactionInfo
        draft?.discard()
        draft = nil
        let action = machine.messageFinished(result)
        if case .reply(let replies, _) = action, let tx {
            logTransaction(tx, reply: replies.first)
            if case .queued(let id) = result, server.chain.hooks(.queued), let txInfo {
                let (chain, session) = (server.chain, machine.session)
                Task { await chain.queued(queueID: id, session: session, transaction: txInfo) }
            }
        }
        busy = false
        perform(action)
        process()
    }

    /// A refused command gets a line of its own (like Postfix's NOQUEUE lines): what was asked, what was answered.
    private func logRefusal(_ action: SessionStateMachine.Action, command: String) {
        guard case .reply(let replies, _) = action, let reply = replies.first, reply.code >= 400 else { return }
        logger.info("refused", metadata: [
            "command": "\(command)",
            "queue_id": "\(machine.transaction?.queueID ?? "")",
            "reply": "\(reply)",
        ])
    }

    /// One structured line per transaction.
    private func logTransaction(_ tx: SessionStateMachine.Transaction, reply: SMTPReply?) {
        var metadata = TransactionLog.metadata(
            queueID: tx.queueID, helo: machine.session.heloName, sender: tx.sender, recipients: tx.recipients,
            size: tx.data?.size ?? 0, trace: machine.sessionTrace + tx.trace
        )
        metadata["reply"] = "\(reply?.description ?? "")"
        logger.info("transaction", metadata: metadata)
    }

    // MARK: Plumbing

    /// Runs async work off the event loop; input waits until `then` has run on the loop.
    private func runAsync<T: Sendable>(
        _ work: @escaping @Sendable () async -> T, then: @escaping (SMTPSessionHandler, T) -> Void
    ) {
        wait(stageRunner.run(on: context.eventLoop, work)) { handler, result in
            if case .success(let value) = result { then(handler, value) }
        }
    }

    private func wait<T: Sendable>(_ future: EventLoopFuture<T>, then: @escaping (SMTPSessionHandler, Result<T, any Error>) -> Void) {
        busy = true
        flush()
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let thenBound = NIOLoopBound(then, eventLoop: context.eventLoop)
        future.whenComplete { result in
            let handler = bound.value
            handler.busy = false
            guard !handler.closing else { return }
            thenBound.value(handler, result)
            handler.process()
        }
    }

    private func send(_ replies: [SMTPReply], close: Bool) {
        var bytes: [UInt8] = []
        for r in replies { r.encode(into: &bytes) }
        outbound.writeBytes(bytes)
        if close {
            closing = true
            flush()
            let ctx = context!
            ctx.close(promise: nil)
        }
    }

    private func flush() {
        guard outbound.readableBytes > 0, context.channel.isActive else { return }
        context.writeAndFlush(wrapOutboundOut(outbound), promise: nil)
        outbound = context.channel.allocator.buffer(capacity: 512)
    }

    /// Entering data: the (usually shorter) data timeout applies from now.
    private func rearmTimer() {
        timer?.cancel()
        armTimer()
    }

    /// One timer per session: command or data timeout, re-armed lazily from `lastActivity`.
    private func armTimer() {
        let limit = framer.isReadingData ? server.dataTimeout : server.commandTimeout
        let deadline = lastActivity + limit
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) {
            let handler = bound.value
            guard !handler.closing else { return }
            let limit = handler.framer.isReadingData ? handler.server.dataTimeout : handler.server.commandTimeout
            if handler.busy || NIODeadline.now() < handler.lastActivity + limit {
                handler.armTimer()
            } else {
                handler.logger.notice("timeout")
                handler.perform(handler.machine.timedOut())
            }
        }
    }
}

extension SMTPSessionHandler {
    /// Seconds since 1970.
    static func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
