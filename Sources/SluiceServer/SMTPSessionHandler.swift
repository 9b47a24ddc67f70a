import Logging
import NIOCore
import NIOSSL
import NIOTLS
import SMTPCore
import SluicePipeline
import SluiceSpool
import SluiceStageAPI

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
    /// Stage calls, AUTH checks and the message being received.
    private var work: SessionWork!

    /// Waiting on stages or the disk: input stays buffered until the work completes.
    private var busy = false
    private var closing = false
    private var greeted = false
    private var registered = false

    private var timer = SessionTimer()

    init(server: ServerContext, listener: Listener, sniffer: ServerHelloSniffer? = nil) {
        self.server = server
        self.listener = listener
        self.sniffer = sniffer
        self.framer = SMTPFramer(commandLineLimit: server.commandLineLimit, textLineLimit: server.textLineLimit)
        self.logger = server.logger
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        work = SessionWork(server: server, eventLoop: context.eventLoop)
        inbound = context.channel.allocator.buffer(capacity: 1024)
        outbound = context.channel.allocator.buffer(capacity: 1024)
    }

    func channelActive(context: ChannelHandlerContext) {
        let (machine, sessionLogger) = server.makeSession(
            remote: context.channel.remoteAddress, local: context.channel.localAddress, proxied: proxied, listener: listener
        )
        self.machine = machine
        logger = sessionLogger

        if let refusal = server.admit(context.channel, client: machine.session.clientAddress, logger: logger) {
            return send([refusal], close: true)
        }
        registered = true
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
        timer.cancel()
        work.discardMessage()
        if registered {
            server.release(context.channel, client: machine.session.clientAddress, session: machine.session)
            registered = false
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        timer.inputArrived()
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
            guard machine != nil, !closing else { return }
            return perform(machine.shutdownRequested(idle: !busy && inbound.readableBytes == 0))
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.channelError(error)
        closeNow()
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
            let action = machine.commandLine(line, pipelinedInput: inbound.readableBytes > 0)
            logger.refused(action, line: line, queueID: machine.transaction?.queueID)
            perform(action)
        case .commandTooLong:
            perform(machine.commandLine(nil, pipelinedInput: false))
        case .dataChunk(let chunk), .bdatChunk(let chunk):
            if let stored = work.receive(chunk, machine.dataChunk(chunk.readableBytesView), machine) { carry(stored) }
        case .dataEnd:
            let flags = framer.flags
            endOfData { $0.dataFinished(flags: flags) }
        case .bdatEnd:
            guard machine.readingLastStoredChunk else {
                perform(machine.bdatChunkRead(flags: framer.flags))
                break
            }
            framer.finishBDATMessage()
            let flags = framer.flags
            endOfData { $0.bdatChunkRead(flags: flags) }
        }
        work.settle(machine)
    }

    /// The last octet of the message has arrived: data-phase stages first, then `finished`.
    private func endOfData(_ finished: @escaping @Sendable (inout SessionStateMachine) -> SessionStateMachine.Action) {
        guard let fed = work.endOfData(&machine, then: finished) else { return perform(finished(&machine)) }
        carry(fed)
    }

    // MARK: Actions

    private func perform(_ action: SessionStateMachine.Action) {
        switch action {
        case .none:
            break
        case .reply(let replies, let close):
            send(replies, close: close)
        case .runStages, .runRecipientStages, .authenticate, .requestQueueRun:
            if let started = work.start(action, machine, logger: logger) { carry(started) }
        case .startData(let reply):
            work.startMessage(machine, logger: logger)
            framer.beginData()
            armTimer()
            send([reply], close: false)
        case .readChunk(let size, let store, _):
            if store && !work.hasMessage {
                work.startMessage(machine, logger: logger)
                framer.startMessage()
            }
            framer.beginBDAT(size: size)
            armTimer()
        case .finishMessage:
            carry(work.finishMessage(machine))
        case .startTLS(let reply):
            startTLS(reply)
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
        do { sniffer = try TLSUpgrade.begin(context, tls: tls) } catch {
            logger.error("cannot start TLS", metadata: ["error": "\(error)"])
            closeNow()
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

    // MARK: Plumbing

    /// Waits for work off the loop (input stays buffered meanwhile), then hands the machine what
    /// it gave and carries out the action.
    private func carry(_ work: EventLoopFuture<SessionEvent>) {
        busy = true
        flush()
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        work.whenComplete { result in
            let handler = bound.value
            handler.busy = false
            guard !handler.closing else { return }
            switch result {
            case .success(let event): handler.perform(event(&handler.machine, &handler.logger))
            case .failure(let error):
                handler.logger.error("session work failed", metadata: ["error": "\(error)"])
                return handler.perform(.reply([SMTPReply(421, "4.3.0", "\(handler.server.session.hostname) Error: internal error")], close: true))
            }
            handler.work.settle(handler.machine)
            handler.process()
        }
    }

    private func send(_ replies: [SMTPReply], close: Bool) {
        var bytes: [UInt8] = []
        for r in replies { r.encode(into: &bytes) }
        outbound.writeBytes(bytes)
        if close {
            flush()
            closeNow()
        }
    }

    private func closeNow() {
        closing = true
        context.close(promise: nil)
    }

    private func flush() {
        guard outbound.readableBytes > 0, context.channel.isActive else { return }
        context.writeAndFlush(wrapOutboundOut(outbound), promise: nil)
        outbound = context.channel.allocator.buffer(capacity: 512)
    }

    private var timeout: TimeAmount { framer.isReadingData ? server.dataTimeout : server.commandTimeout }

    /// (Re)arms the session's timer: entering data, the (usually shorter) data timeout applies from now.
    private func armTimer() {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer.arm(after: timeout, on: context.eventLoop) { bound.value.timerFired() }
    }

    private func timerFired() {
        guard !closing else { return }
        guard !busy, timer.expired(after: timeout) else { return armTimer() }
        logger.notice("timeout")
        perform(machine.timedOut())
    }
}
