import Logging
import NIOPosix
import SluicePipeline
import SluiceSpool
import SluiceStageAPI

/// What every MTA connection shares.
struct MilterServerContext: Sendable {
    let chain: StageChain
    let settings: MilterServer.Settings
    let logger: Logger
    /// Reads message bodies for end-of-message stages off the cooperative threads.
    let threadPool: NIOThreadPool

    /// `[server] max_message_bytes`, lowered by a `size-limit` stage.
    var sizeLimit: Int { min(settings.maxMessageBytes, chain.messageSizeLimit ?? Int.max) }
}

/// One MTA connection as the stages see it: the session, the transaction in progress, and what
/// each libmilter callback answers. It knows nothing of libmilter: the callbacks hand it plain
/// values (`macros` looks one up) and carry out what it returns. libmilter calls it from the
/// connection's thread, one callback at a time; each stage phase runs as a task the thread waits for.
final class MilterServerSession {
    typealias Macros = (String) -> String?

    let context: MilterServerContext
    /// SMFIP_HDR_LEADSPC was negotiated: header values come and go with their leading space.
    var leadingSpace = false
    /// The actions (SMFIF_*) the MTA granted in negotiation.
    var granted: MilterActions = .all
    private(set) var session: SessionInfo
    private var clientName = ""
    private var sessionTrace: [TraceEntry] = []
    /// A discard or quarantine from connect or HELO: it applies to every message of the session.
    private var sessionHeld: StageVerdict?
    private var transaction: Transaction?
    private var logger: Logger

    private struct Transaction {
        var info: TransactionInfo
        /// The recipients the stages accepted, with the text the MTA gave for each.
        var recipients: [MilterEditPlan.EnvelopeRecipient] = []
        /// A discard or quarantine from MAIL, RCPT or the data phase.
        var held: StageVerdict?
        var trace: [TraceEntry] = []
        /// The header section as the MTA has it.
        var headers: [HeaderField] = []
        var headerBytes = 0
        var body: MessageBodyFile?
        var bodyBytes = 0
        /// The data phase refused the message or discarded it: no more stage calls.
        var dataDone = false

        /// Octets as received: the header section, its empty line, the body (CRLF line ends).
        var size: Int { headerBytes + 2 + bodyBytes }
    }

    init(context: MilterServerContext) {
        self.context = context
        session = SessionInfo(
            id: QueueID.make(), clientAddress: "unknown", clientPort: 0, serverAddress: "unknown", serverPort: 0,
            serverHostname: context.settings.hostname
        )
        logger = context.logger
        logger[metadataKey: "session"] = "\(session.id)"
    }

    // MARK: Session

    /// `xxfi_connect`. `address` is nil for a client that is not on IPv4 or IPv6 (a Unix socket,
    /// or unknown to the MTA); `{client_addr}` is used then, else the address stays "unknown".
    func connect(clientName: String?, address: (String, Int)?, macros: Macros) -> MilterResponse {
        self.clientName = clientName ?? ""
        if let (ip, port) = address {
            session.clientAddress = ip
            session.clientPort = port
        } else if let ip = macros("{client_addr}").flatMap(IPAddress.init) {
            session.clientAddress = ip.description
            session.clientPort = macros("{client_port}").flatMap { Int($0) } ?? 0
        }
        if let daemon = macros("{daemon_addr}").flatMap(IPAddress.init) { session.serverAddress = daemon.description }
        if let port = macros("{daemon_port}").flatMap({ Int($0) }) { session.serverPort = port }
        session.trustedClient = context.settings.relayFrom.contains { $0.contains(session.clientAddress) }
        logger[metadataKey: "client"] = "\(session.clientAddress)"
        logger.debug("connect", metadata: ["name": "\(self.clientName)", "mta": "\(macros("j") ?? "")"])
        guard context.chain.hooks(.connect) else { return .continue }
        let (chain, info) = (context.chain, session)
        let result = waitOnThread { await chain.connect(session: info) }
        sessionTrace += result.trace
        return sessionAnswer(result, command: "connect")
    }

    /// `xxfi_helo`. TLS is known by now (Postfix sends `{tls_version}` and `{cipher}` with HELO).
    func helo(_ name: String, macros: Macros) -> MilterResponse {
        session.heloName = name
        if let version = macros("{tls_version}"), let cipher = macros("{cipher}") {
            session.tls = TLSInfo(version: version, cipher: cipher, bits: macros("{cipher_bits}").flatMap { Int($0) } ?? 0)
        }
        guard context.chain.hooks(.helo) else { return .continue }
        let (chain, info) = (context.chain, session)
        let result = waitOnThread { await chain.helo(session: info) }
        sessionTrace += result.trace
        let answer = sessionAnswer(result, command: "HELO \(name)")
        if case .refuse = answer { session.heloName = nil }
        return answer
    }

    private func sessionAnswer(_ result: StageChain.PhaseResult, command: String) -> MilterResponse {
        let (answer, held) = MilterResponse.answer(to: result.verdict)
        if let held { sessionHeld = held }
        logRefusal(answer, command: command, trace: result.trace)
        return answer
    }

    // MARK: Envelope

    /// `xxfi_envfrom`: `argv[0]` is the sender, the rest its ESMTP parameters.
    func mailFrom(_ argv: [String], macros: Macros) -> MilterResponse {
        endTransaction()
        if let user = macros("{auth_authen}") {
            session.authenticatedUser = user
            session.authMechanism = macros("{auth_type}")
            session.trustedClient = true
        }
        let sender: MilterEnvelope.Sender
        switch MilterEnvelope.sender(argv) {
        case .success(let s): sender = s
        case .failure(let reply):
            let answer = MilterResponse.refuse(reply)
            logRefusal(answer, command: "MAIL FROM:\(argv.joined(separator: " "))", trace: [])
            return answer
        }
        if sender.droppedParameters {
            logger.notice("MAIL parameters that do not parse were ignored", metadata: ["argv": "\(argv.joined(separator: " "))"])
        }
        if let size = sender.parameters.size, size > UInt64(context.sizeLimit) {
            let answer = MilterResponse.refuse(SMTPReply(552, "5.3.4", "Message size exceeds fixed limit"))
            logRefusal(answer, command: "MAIL FROM:\(sender.path) SIZE=\(size)", trace: [])
            return answer
        }
        var tx = Transaction(info: TransactionInfo(
            queueID: macros("i") ?? QueueID.make(), sender: sender.path, mailParameters: sender.parameters
        ))
        guard context.chain.hooks(.mailFrom) else {
            transaction = tx
            return .continue
        }
        let (chain, info, txInfo) = (context.chain, session, tx.info)
        let result = waitOnThread { await chain.mailFrom(session: info, transaction: txInfo) }
        tx.trace += result.trace
        let (answer, held) = MilterResponse.answer(to: result.verdict)
        logRefusal(answer, command: "MAIL FROM:\(sender.path)", trace: result.trace, queueID: tx.info.queueID)
        if case .refuse = answer { return answer }
        tx.held = held
        transaction = tx
        return answer
    }

    /// `xxfi_envrcpt`: a refusal refuses this recipient only.
    func rcptTo(_ argv: [String], macros: Macros) -> MilterResponse {
        guard var tx = transaction else {
            return .refuse(SMTPReply(503, "5.5.1", "Error: need MAIL command"))
        }
        let parsed: MilterEnvelope.RecipientResult
        let postmasterDomain = macros("j") ?? context.settings.hostname
        switch MilterEnvelope.recipient(argv, utf8: tx.info.mailParameters.smtputf8, postmasterDomain: postmasterDomain) {
        case .success(let r): parsed = r
        case .failure(let reply):
            let answer = MilterResponse.refuse(reply)
            logRefusal(answer, command: "RCPT TO:\(argv.joined(separator: " "))", trace: [], queueID: tx.info.queueID)
            return answer
        }
        let recipient = parsed.recipient
        if context.chain.hooks(.rcptTo) {
            let (chain, info, txInfo) = (context.chain, session, tx.info)
            let result = waitOnThread { await chain.rcptTo(recipient, session: info, transaction: txInfo) }
            tx.trace += result.trace
            let (answer, held) = MilterResponse.answer(to: result.verdict)
            if case .refuse = answer {
                transaction = tx
                logRefusal(answer, command: "RCPT TO:\(recipient)", trace: result.trace, queueID: tx.info.queueID)
                return answer
            }
            if let held { tx.held = held }
        }
        tx.info.recipients.append(recipient)
        tx.recipients.append(.init(recipient: recipient, argument: argv[0]))
        transaction = tx
        return .continue
    }

    // MARK: Data

    /// `xxfi_header`: collected for the data phase at end of header.
    func header(name: String, value: String) -> MilterResponse {
        guard var tx = transaction else { return .continue }
        let field = MilterHeaderText.field(name: name, value: value, leadingSpace: leadingSpace)
        tx.headerBytes += field.wireBytes.count
        tx.headers.append(field)
        transaction = tx
        return tx.size > context.sizeLimit ? refuseData(tooBig) : .continue
    }

    /// `xxfi_eoh`: the data phase gets the header section.
    func endOfHeaders() -> MilterResponse {
        guard let tx = transaction, !tx.dataDone, context.chain.hooks(.data) else { return .continue }
        let (chain, info, txInfo, headers) = (context.chain, session, tx.info, tx.headers)
        let result = waitOnThread { await chain.headers(headers, session: info, transaction: txInfo) }
        return dataAnswer(result)
    }

    /// `xxfi_body`: the chunk goes to the body file, then to the data phase.
    func body(_ chunk: UnsafeRawBufferPointer) -> MilterResponse {
        guard var tx = transaction, !tx.dataDone else { return .continue }
        tx.bodyBytes += chunk.count
        transaction = tx
        if tx.size > context.sizeLimit { return refuseData(tooBig) }
        do {
            if tx.body == nil { tx.body = try MessageBodyFile(directory: context.settings.temporaryDirectory) }
            try tx.body!.append(chunk)
            transaction = tx
        } catch {
            logger.error("cannot keep the message body", metadata: ["error": "\(error)"])
            transaction = tx
            return refuseData(SMTPReply(451, "4.3.0", "Error: temporary file write error"))
        }
        guard context.chain.hooks(.data) else { return .continue }
        let (chain, info, txInfo, bytes) = (context.chain, session, tx.info, Array(chunk))
        let result = waitOnThread { await chain.bodyChunk(bytes, session: info, transaction: txInfo) }
        return dataAnswer(result)
    }

    private var tooBig: SMTPReply { SMTPReply(552, "5.3.4", "Error: message size exceeds fixed limit") }

    private func dataAnswer(_ result: StageChain.PhaseResult) -> MilterResponse {
        transaction?.trace += result.trace
        switch result.verdict {
        case .discard:
            transaction?.dataDone = true
            logTransaction(result: "discard")
            return .discard
        case .quarantine:
            transaction?.held = result.verdict
            return .continue
        default:
            let (answer, _) = MilterResponse.answer(to: result.verdict)
            if case .refuse = answer { return refuseData(nil, answer: answer) }
            return answer
        }
    }

    private func refuseData(_ reply: SMTPReply?, answer: MilterResponse? = nil) -> MilterResponse {
        let answer = answer ?? .refuse(reply!)
        transaction?.dataDone = true
        logTransaction(result: answer.description)
        return answer
    }

    // MARK: End of message

    /// What end of message decided.
    struct EndOfMessage {
        var response: MilterResponse
        var operations: [MilterOperation]
        var quarantine: String?
    }

    /// `xxfi_eom`: end-of-message stages (which may edit), the recorded trace fields and
    /// Authentication-Results on top, then the edits as milter modifications.
    /// - Parameter perform: carries out the modifications and the quarantine; an error makes the
    ///   message a tempfail (edits the MTA would not take must not be lost silently).
    func endOfMessage(macros: Macros, perform: (EndOfMessage) -> MilterEditError?) -> MilterResponse {
        guard var tx = transaction else { return .continue }
        defer { endTransaction() }
        if tx.dataDone { return .continue }
        if let id = macros("i") { tx.info.queueID = id }
        tx.body?.finish()
        let hostname = context.settings.hostname
        let intake = Intake(hostname: hostname)
        let initial = intake.initialDraft(headers: tx.headers, sender: tx.info.sender, recipients: tx.info.recipients)
        var result: StageChain.EndOfMessageResult
        if context.chain.hooks(.endOfMessage) {
            let pool = context.threadPool
            let original = tx.body.map { SpoolReader.body(path: $0.path, from: 0, length: nil, threadPool: pool) } ?? MessageBody(bytes: [])
            let body: @Sendable (MessageDraft) -> MessageBody = { draft in
                draft.replacementBodyPath.map { SpoolReader.body(path: $0, from: 0, length: nil, threadPool: pool) } ?? original
            }
            let (chain, info, txInfo, size, start) = (context.chain, session, tx.info, tx.size, initial)
            result = waitOnThread {
                await chain.endOfMessage(draft: start, receivedSize: size, body: body, session: info, transaction: txInfo)
            }
        } else {
            result = StageChain.EndOfMessageResult(verdict: .continue, draft: initial, trace: [])
        }
        tx.trace += result.trace
        transaction = tx
        defer { if let path = result.draft.replacementBodyPath { unlink(path) } }
        var outcome = EndOfMessage(response: .continue, operations: [], quarantine: nil)
        // The MTA routes the recipients: each one the stages left stays.
        switch intake.decide(result, results: tx.info.results, held: tx.held ?? sessionHeld, route: { _ in () }) {
        case .discard:
            outcome.response = .discard
        case .reject(let reply):
            outcome.response = MilterResponse.answer(to: .reject(reply)).0
        case .tempfail(let reply):
            outcome.response = MilterResponse.answer(to: .tempfail(reply)).0
        case .disconnect(let reply):
            outcome.response = MilterResponse.answer(to: .disconnect(reply)).0
        case .quarantine(let accepted, let reason):
            outcome.quarantine = reason
            outcome.operations = MilterEditPlan.operations(headers: tx.headers, sender: tx.info.sender, recipients: tx.recipients, draft: accepted.draft)
        case .spool(let accepted):
            outcome.operations = MilterEditPlan.operations(headers: tx.headers, sender: tx.info.sender, recipients: tx.recipients, draft: accepted.draft)
        }
        if case .continue = outcome.response, let error = perform(outcome) {
            logger.error("the MTA would not take an edit", metadata: ["queue_id": "\(tx.info.queueID)", "error": "\(error)"])
            outcome.response = .refuse(SMTPReply(451, "4.3.0", "Error: message could not be edited"))
        }
        var summary = outcome.response.description
        if let reason = outcome.quarantine, case .continue = outcome.response { summary = "quarantine (\(reason))" }
        logTransaction(result: summary, recipients: result.draft.recipients, operations: outcome.operations)
        if case .continue = outcome.response, outcome.quarantine == nil, context.chain.hooks(.queued) {
            // The MTA queues the message after our answer (unless a later milter refuses it);
            // `queued` never delays it.
            let (chain, info, txInfo) = (context.chain, session, tx.info)
            Task { await chain.queued(queueID: txInfo.queueID, session: info, transaction: txInfo) }
        }
        return outcome.response
    }

    // MARK: End of transaction and session

    /// `xxfi_abort`: the MTA ended the transaction (RSET, a refusal elsewhere, a lost client).
    func abort() {
        if let tx = transaction, !tx.dataDone {
            logger.debug("transaction aborted", metadata: ["queue_id": "\(tx.info.queueID)"])
        }
        endTransaction()
    }

    /// `xxfi_close`.
    func close() {
        endTransaction()
        guard context.chain.hooks(.disconnect) else { return }
        let (chain, info) = (context.chain, session)
        waitOnThread { await chain.disconnect(session: info) }
    }

    private func endTransaction() {
        transaction?.body?.remove()
        transaction = nil
    }

    // MARK: Logging

    /// A refused command gets a line of its own, as in the gateway.
    private func logRefusal(_ answer: MilterResponse, command: String, trace: [TraceEntry], queueID: String? = nil) {
        guard case .refuse(let reply) = answer else { return }
        logger.info("refused", metadata: [
            "command": "\(command.prefix(200))",
            "queue_id": "\(queueID ?? "")",
            "reply": "\(reply)",
            "stages": "\(trace.map(\.description).joined(separator: "; "))",
        ])
    }

    /// One line per message.
    private func logTransaction(result: String, recipients: [Recipient]? = nil, operations: [MilterOperation] = []) {
        guard let tx = transaction else { return }
        var metadata = TransactionLog.metadata(
            queueID: tx.info.queueID, helo: session.heloName, sender: tx.info.sender, recipients: recipients ?? tx.info.recipients,
            size: tx.size, trace: sessionTrace + tx.trace
        )
        metadata["edits"] = "\(operations.map(\.description).joined(separator: "; "))"
        metadata["result"] = "\(result)"
        logger.info("transaction", metadata: metadata)
    }
}
