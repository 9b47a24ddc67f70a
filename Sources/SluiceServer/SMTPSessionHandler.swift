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

    // The message being received.
    private var draft: (any QueueDraft)?
    private var dataSize = 0
    private var storeChunk = true
    private var bdatChunkSize: UInt64 = 0
    private var dataVerdict: StageVerdict = .continue
    private var dataHeaderBuffer: [UInt8] = []
    private var dataHeadersSent = false
    private var trace: [TraceEntry] = []
    private var sessionTrace: [TraceEntry] = []

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
        let remote = context.channel.remoteAddress
        let local = context.channel.localAddress
        clientAddress = remote?.ipAddress ?? "?"
        var clientPort = remote?.port ?? 0
        var serverAddress = local?.ipAddress ?? "?"
        var serverPort = local?.port ?? 0
        if let client = proxied?.client {
            clientAddress = IPAddress(client.address).map { "\($0)" } ?? client.address
            clientPort = client.port
        }
        if let server = proxied?.server {
            serverAddress = IPAddress(server.address).map { "\($0)" } ?? server.address
            serverPort = server.port
        }
        let sessionID = server.session.makeQueueID()
        logger[metadataKey: "session"] = "\(sessionID)"
        logger[metadataKey: "client"] = "\(clientAddress)"
        let trusted = server.relayFrom.contains { $0.contains(clientAddress) }
        let info = SessionInfo(
            id: sessionID, clientAddress: clientAddress, clientPort: clientPort,
            serverAddress: serverAddress, serverPort: serverPort,
            serverHostname: server.session.hostname, trustedClient: trusted
        )
        let etrnAllowed = server.etrnFrom.contains { $0.contains(clientAddress) }
        let policy = SessionStateMachine.ListenerPolicy(
            startTLS: server.tls != nil && listener.kind != .smtps, implicitTLS: listener.kind == .smtps,
            auth: server.auth != nil && (listener.kind != .smtp || server.auth!.offerOnSMTP),
            requireAuth: listener.requiresAuth
        )
        machine = SessionStateMachine(configuration: server.session, session: info, etrnAllowed: etrnAllowed, policy: policy)

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
        case .dataChunk(let chunk):
            receive(chunk)
        case .dataEnd:
            finishDataPhase { $0.perform($0.machine.dataFinished($0.outcome)) }
        case .bdatChunk(let chunk):
            if storeChunk { receive(chunk) }
        case .bdatEnd:
            guard storeChunk && isLastChunk else {
                perform(machine.bdatChunkRead(chunkSize: bdatChunkSize, outcome: outcome))
                break
            }
            framer.finishBDATMessage()
            finishDataPhase { $0.perform($0.machine.bdatChunkRead(chunkSize: $0.bdatChunkSize, outcome: $0.outcome)) }
        }
        // A transaction that ended (RSET, refusal, new HELO) leaves no temp file behind.
        if draft != nil && machine.transaction == nil {
            draft?.discard()
            draft = nil
        }
    }

    private var isLastChunk = false

    private var outcome: SessionStateMachine.DataOutcome {
        SessionStateMachine.DataOutcome(size: dataSize, flags: framer.flags, stageVerdict: dataVerdict)
    }

    /// Stores a chunk of message data (unless the message is already too big) and feeds data-phase stages.
    private func receive(_ chunk: ByteBuffer) {
        dataSize += chunk.readableBytes
        guard dataSize <= server.session.maxMessageBytes, let draft else { return }
        draft.append(chunk)
        let feeding: Bool
        if server.chain.hooks(.data), case .continue = dataVerdict { feeding = true } else { feeding = false }
        guard draft.shouldFlush else {
            if feeding { feedDataStages(chunk) }
            return
        }
        // What is pending goes to disk before more is read, then (if they run) to data-phase
        // stages: memory stays bounded whether or not stages read the data.
        wait(draft.flush()) { handler, result in
            if case .failure(let error) = result {
                handler.logger.error("spool write failed", metadata: ["error": "\(error)"])
                handler.dataVerdict = .tempfail(451, "4.3.0", "Error: queue file write error")
                handler.draft = nil
            } else if feeding, case .continue = handler.dataVerdict {
                handler.feedDataStages(chunk)
            }
        }
    }

    /// The data phase: the header section once complete, then each body chunk.
    private func feedDataStages(_ chunk: ByteBuffer) {
        guard let session = machine?.session, let tx = machine.transactionInfo else { return }
        if !dataHeadersSent {
            dataHeaderBuffer += chunk.readableBytesView
            let section = HeaderSection.parse(dataHeaderBuffer)
            guard section.complete || dataHeaderBuffer.count > SpoolDraft.headerPrefixLimit else { return }
            sendHeaderSection(section, session: session, transaction: tx) { _ in }
            return
        }
        let (chain, bodyChunk) = (server.chain, Array(chunk.readableBytesView))
        runAsync({ await chain.bodyChunk(bodyChunk, session: session, transaction: tx) }) { handler, result in
            handler.trace.appendFoldingData(result.trace)
            handler.dataVerdict = result.verdict
        }
    }

    /// The last byte of the message has arrived. A header section that never met its empty line
    /// (a message with no body, which RFC 5322 allows) reaches the data phase now, so
    /// data-phase stages judge it like any other message.
    private func finishDataPhase(_ then: @escaping (SMTPSessionHandler) -> Void) {
        guard !dataHeadersSent, draft != nil, dataSize <= server.session.maxMessageBytes, server.chain.hooks(.data),
              case .continue = dataVerdict, let session = machine?.session, let tx = machine.transactionInfo
        else { return then(self) }
        sendHeaderSection(HeaderSection.parse(dataHeaderBuffer, atEnd: true), session: session, transaction: tx, then: then)
    }

    /// The header section to data-phase stages, then what followed it in the buffer as the first
    /// body chunk; `then` runs on the loop once they have answered.
    private func sendHeaderSection(
        _ section: HeaderSection, session: SessionInfo, transaction tx: TransactionInfo,
        then: @escaping (SMTPSessionHandler) -> Void
    ) {
        dataHeadersSent = true
        let rest = Array(dataHeaderBuffer[min(section.bodyOffset, dataHeaderBuffer.count)...])
        dataHeaderBuffer = []
        let (chain, fields) = (server.chain, section.fields)
        runAsync({ () async -> StageChain.PhaseResult in
            let h = await chain.headers(fields, session: session, transaction: tx)
            guard case .continue = h.verdict, !rest.isEmpty else { return h }
            let b = await chain.bodyChunk(rest, session: session, transaction: tx)
            return StageChain.PhaseResult(verdict: b.verdict, trace: h.trace + b.trace)
        }) { handler, result in
            handler.trace.appendFoldingData(result.trace)
            handler.dataVerdict = result.verdict
            then(handler)
        }
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
                handler.trace += result.trace
                let action = handler.machine.stagesFinished(result.verdict)
                handler.logRefusal(action, command: "RCPT TO:\(recipient) (\(result.trace.map(\.description).joined(separator: "; ")))")
                handler.perform(action)
            }
        case .startData(let reply):
            startMessage()
            framer.beginData()
            rearmTimer()
            send([reply], close: false)
        case .readChunk(let size, let store, let last):
            storeChunk = store
            bdatChunkSize = size
            isLastChunk = last
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
        }
    }

    /// Checks credentials on the thread pool (crypt(3) is slow on purpose). Failures are counted
    /// per client address and answered late; past `[auth] max_failures` the client is dropped.
    private func authenticate(user: String, password: String, mechanism: SASL.Mechanism) {
        guard let auth = server.auth else { return perform(machine.authFinished(.failure)) }
        let address = clientAddress
        let pool = server.threadPool
        let log = logger
        runAsync({ () async -> SessionStateMachine.AuthResult in
            if auth.failures.count(address) >= auth.failures.maxFailures { return .tooManyFailures }
            let ok = (try? await pool.runIfActive { auth.authenticator.verify(user: user, password: password) }) ?? false
            if ok {
                log.info("authenticated", metadata: ["user": "\(user)", "mechanism": "\(mechanism.rawValue)"])
                return .success
            }
            let count = auth.failures.fail(address)
            log.notice("authentication failed", metadata: ["user": "\(user)", "mechanism": "\(mechanism.rawValue)", "failures": "\(count)"])
            if count >= auth.failures.maxFailures { return .tooManyFailures }
            try? await Task.sleep(for: auth.failures.delay(after: count))
            return .failure
        }) { handler, result in
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
            let sniffer = ServerHelloSniffer()
            try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context), position: .first)
            try context.pipeline.syncOperations.addHandler(sniffer, position: .first)
            self.sniffer = sniffer
        } catch {
            logger.error("cannot start TLS", metadata: ["error": "\(error)"])
            closing = true
            context.close(promise: nil)
        }
    }

    private func tlsHandshakeCompleted() {
        let handler = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self)
        let version: String
        switch handler?.tlsVersion {
        case .tlsv13: version = "TLSv1.3"
        case .tlsv12: version = "TLSv1.2"
        case .tlsv11: version = "TLSv1.1"
        case .tlsv1: version = "TLSv1"
        default: version = "TLS"
        }
        let (cipher, bits) = ServerHelloSniffer.describe(sniffer?.cipherSuite ?? 0)
        if let sniffer {
            context.pipeline.syncOperations.removeHandler(sniffer, promise: nil)
            self.sniffer = nil
        }
        let info = TLSInfo(version: version, cipher: cipher, bits: bits)
        logger[metadataKey: "tls"] = "\(version) \(cipher)"
        logger.debug("TLS established", metadata: ["version": "\(version)", "cipher": "\(cipher)"])
        perform(machine.tlsEstablished(info))
        process()
    }

    private func runStages(_ phase: StagePhase) {
        let chain = server.chain
        let session = machine.session
        let tx = machine.transactionInfo
        runAsync({ () async -> StageChain.PhaseResult in
            switch phase {
            case .connect: return await chain.connect(session: session)
            case .helo: return await chain.helo(session: session)
            case .mailFrom: return await chain.mailFrom(session: session, transaction: tx!)
            default: return StageChain.PhaseResult(verdict: .continue, trace: [])
            }
        }) { handler, result in
            if phase == .connect || phase == .helo { handler.sessionTrace += result.trace } else { handler.trace += result.trace }
            let action = handler.machine.stagesFinished(result.verdict)
            handler.logRefusal(action, command: "\(phase.rawValue) (\(result.trace.map(\.description).joined(separator: "; ")))")
            handler.perform(action)
        }
    }

    /// A new message: a spool draft that starts with our Received header (RFC 5321 4.4).
    private func startMessage() {
        guard let tx = machine.transaction else { return }
        dataSize = 0
        dataVerdict = .continue
        dataHeaderBuffer = []
        dataHeadersSent = false
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
        let session = machine.session
        let chain = server.chain
        let pool = server.threadPool
        let section = HeaderSection.parse(draft.headerPrefix, atEnd: draft.size <= SpoolDraft.headerPrefixLimit)
        let initial = Intake(hostname: server.session.hostname).initialDraft(
            headers: section.fields, sender: tx.sender, recipients: tx.recipients)
        let receivedSize = draft.size
        let eventLoop = context.eventLoop

        let stagesDone: EventLoopFuture<StageChain.EndOfMessageResult>
        if chain.hooks(.endOfMessage) {
            // Written to disk only if a stage reads the body.
            let (draftBody, settled) = draft.lazyBody(from: section.bodyOffset)
            let body: @Sendable (MessageDraft) -> MessageBody = { d in
                d.replacementBodyPath.map { SpoolReader.body(path: $0, from: 0, length: nil, threadPool: pool) } ?? draftBody
            }
            let (runner, initial) = (stageRunner, initial)
            // The draft starts with our Received: field (startMessage).
            let ownReceived = section.fields.first
            stagesDone = runner.run(on: eventLoop) {
                await chain.endOfMessage(
                    draft: initial, receivedSize: receivedSize, body: body, hiding: ownReceived, session: session, transaction: txInfo)
            }.flatMap { eom in settled().map { eom } }
        } else {
            stagesDone = eventLoop.makeSucceededFuture(StageChain.EndOfMessageResult(verdict: .continue, draft: initial, trace: []))
        }
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
        trace += eom.trace
        let routes = server.session.routes
        // Recipients after edits, each with its destination: the one RCPT gave, or a route.
        let decision = Intake(hostname: server.session.hostname).decide(
            eom, results: machine.transactionInfo?.results, held: machine.heldVerdict
        ) { r -> Destination? in
            if let i = tx.recipients.firstIndex(of: r) { return tx.destinations[i] }
            return try? routes.destination(for: r.mailbox, trusted: true).get()
        }
        let accepted: Intake.Accepted<Destination>
        switch decision {
        case .reject(let reply), .tempfail(let reply): return finish(.refused(reply))
        case .disconnect(let reply): return finish(.disconnect(reply))
        case .discard(let dropped):
            trace += dropped
            return finish(.discarded)
        case .accept(let a): accepted = a
        }
        trace += accepted.trace
        let edited = accepted.draft
        let recipients = accepted.recipients.map {
            SpoolEnvelope.SpooledRecipient(address: $0.recipient.mailbox, parameters: $0.recipient.parameters, destination: $0.destination)
        }
        // A constant: the commit's completion (a Sendable closure, run later on the event loop)
        // captures its value, not a variable shared with this frame.
        let quarantine = accepted.quarantine
        // A stage that changed the sender with arguments replaced MAIL's: RET and ENVID come from those.
        let dsn = edited.senderParameters.isEmpty ? tx.parameters : (try? MailParameters(edited.senderParameters)) ?? tx.parameters
        let envelope = SpoolEnvelope(
            id: tx.queueID, sender: edited.sender, senderParameters: edited.senderParameters, recipients: recipients,
            client: .init(address: clientAddress, port: machine.session.clientPort, helo: machine.session.heloName),
            protocolName: machine.protocolName, receivedAt: Self.wallClock(),
            size: dataSize, body: tx.parameters.body, smtputf8: tx.parameters.smtputf8, quarantine: quarantine,
            trace: sessionTrace + trace, dsnReturn: dsn.ret, envelopeID: dsn.envelopeID
        )
        var commit = DraftCommit(
            envelope: envelope, headers: edited.headersChanged ? edited.headers : nil,
            bodyOffset: section.bodyOffset, replacementBody: edited.replacementBodyPath, quarantine: quarantine != nil
        )
        // Fields only put on top (Received-SPF, Authentication-Results, ...) need no rewrite
        // of the spooled content: they travel in the envelope.
        let fields = edited.headers
        if edited.headersChanged, edited.replacementBodyPath == nil,
           fields.count > section.fields.count, Array(fields.suffix(section.fields.count)) == section.fields {
            commit.prepend = Array(fields.prefix(fields.count - section.fields.count))
            commit.headers = nil
        }
        guard let draft else { return finish(.spoolFailed) }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        draft.commit(commit).whenComplete { result in
            let handler = bound.value
            handler.draft = nil
            switch result {
            case .success:
                if quarantine != nil {
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
        trace = []
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
        logger.info("transaction", metadata: [
            "queue_id": "\(tx.queueID)",
            "helo": "\(machine.session.heloName ?? "")",
            "from": "\(tx.sender)",
            "to": "\(tx.recipients.map(\.description).joined(separator: ","))",
            "size": "\(dataSize)",
            "stages": "\((sessionTrace + trace).map(\.description).joined(separator: "; "))",
            "reply": "\(reply?.description ?? "")",
        ])
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
